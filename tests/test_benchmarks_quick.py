"""The benchmark entry point produces every number of its fast subset (not their values)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NUMBER = r"-?\d+\.\d+"


@pytest.fixture(scope="module")
def results_md(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--only",
         "accuracy,sweep,cost,structured,prox_nag_lenet5",
         "--grid", "lenet300:60", "--methods", "dense,gsm_short,gsm_paper,gmp,tfmot",
         "--cost-models", "lenet300", "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.glob("*.png")) == [
        "accuracy_lenet300.png", "selection_scaling.png"]
    return (out / "RESULTS.md").read_text()


def test_header_states_machine_versions_and_date(results_md):
    assert re.search(r"- Machine: \d+ cores, ", results_md)
    assert re.search(r"- Versions: python [\d.]+, tensorflow [\d.]+, keras [\d.]+", results_md)
    assert re.search(r"_Measured \d{4}-\d\d-\d\dT\d\d:\d\d \(quick mode", results_md)


@pytest.mark.parametrize("method", [
    "dense \\(SGD\\)", "GSM \\(short-budget options\\)", "GSM \\(paper defaults\\)",
    "GMP: ksm.PruneToRatio polynomial \\+ SGD", "tfmot prune_low_magnitude \\(tf_keras\\)"])
def test_accuracy_rows_have_numbers(results_md, method):
    compression = "1x" if method.startswith("dense") else "60x"
    row = re.search(rf"^\| LeNet-300-100 \| {compression} \| {method} \| 2 \(1024 imgs\) \| 1 \| 0 "
                    rf"\| ({NUMBER}) ± {NUMBER} \| \[{NUMBER}, {NUMBER}\] \| ({NUMBER}) \|",
                    results_md, re.M)
    assert row, method
    accuracy, sparsity = float(row.group(1)), float(row.group(2))
    assert 0 <= accuracy <= 100
    # 60x: exactly ceil(N/60) of the N prunable weights survive (tfmot: per layer, rounded).
    assert sparsity == pytest.approx(0.0 if compression == "1x" else 100 * (1 - 1 / 60), abs=0.05)


def test_sweep_rows_and_best_against_best(results_md):
    for method, compression in (("dense \\(SGD, warmup \\+ cosine\\)", 1),
                                ("GSM \\(for_budget\\)", 60)):
        row = re.search(rf"^\| LeNet-300-100 \| {method} \| {compression}x \| 0.2 \| 1 \| 0 "
                        rf"\| ({NUMBER}) ± {NUMBER} \|", results_md, re.M)
        assert row and 0 <= float(row.group(1)) <= 100, method
    best = re.search(rf"LeNet-300-100 at 60x: GSM ({NUMBER}) % \(lr 0.2\) vs dense ({NUMBER}) % "
                     rf"\(lr 0.2\): ([+-]\d+\.\d+) points", results_md)
    assert best
    assert float(best.group(3)) == pytest.approx(
        float(best.group(1)) - float(best.group(2)), abs=0.011)


@pytest.mark.parametrize("optimizer", ["sgd", "gsm_short", "gsm_paper"])
@pytest.mark.parametrize("xla", ["on", "off"])
def test_step_time_ratios(results_md, optimizer, xla):
    row = re.search(rf"^\| LeNet-300-100 \| {optimizer} \| {xla} \| ({NUMBER}) \| ({NUMBER}) \|",
                    results_md, re.M)
    assert row and float(row.group(1)) > 0
    if optimizer == "sgd":
        assert float(row.group(2)) == 1.0


def test_selection_and_memory_rows(results_md):
    for size in ("100,000", "500,000"):
        assert re.search(rf"^\| {size} \| {NUMBER} \| {NUMBER} \|", results_md, re.M)
    assert re.search(rf"^\| LeNet-300-100 \| gsm_short \| [\d,]+ \| {NUMBER} \|", results_md, re.M)


def _table(results_md, heading):
    """The rows of the markdown table under `### heading`, as dicts."""
    section = results_md.split(f"### {heading}\n", 1)[1]
    block = next(b for b in section.strip("\n").split("\n\n") if b.startswith("|"))
    header, _, *rows = [line.strip("|").split(" | ") for line in block.splitlines()]
    return [dict(zip([h.strip() for h in header], [c.strip() for c in row])) for row in rows]


@pytest.mark.parametrize("module, pruned", [("csgd_resnet", "csgd_stripped"), ("aofp_cnn", "aofp")])
def test_structured_rows_have_accuracy_and_tflite_size_and_latency(results_md, module, pruned):
    assert re.search(rf"### {module}\n\n_Rows finished \d{{4}}-\d\d-\d\dT", results_md)
    rows = _table(results_md, module)
    assert {"dense", pruned} <= {r["model"] for r in rows}
    for row in rows:
        assert float(row["tflite_kb"]) > 0 and float(row["tflite_ms"]) > 0
        accuracy = row.get("accuracy", row.get("test_accuracy"))
        assert 0 <= float(accuracy) <= 1
    dense = next(r for r in rows if r["model"] == "dense")
    assert float(dense["tflite_speedup"]) == 1.0
    # A stripped model is physically smaller than the dense one.
    assert float(next(r for r in rows if r["model"] == pruned)["tflite_kb"]) < float(dense["tflite_kb"])


@pytest.mark.parametrize("variant", ["LeNet-5", "LeNet-5 \\+ BatchNorm"])
@pytest.mark.parametrize("method", ["GMP: PruneToRatio polynomial \\+ SGD",
                                    "ProxNAG \\+ PruneToRatio \\(iterative\\)",
                                    "tfmot prune_low_magnitude"])
def test_sparsity_target_rows_reach_the_target(results_md, variant, method):
    row = re.search(rf"^\| {variant} \| 90 % \| {method} \| 1 \| ({NUMBER}) ± {NUMBER} "
                    rf"\| \[{NUMBER}, {NUMBER}\] \| ({NUMBER}) \| ([01]/1)? \|", results_md, re.M)
    assert row, (variant, method)
    assert 0 <= float(row.group(1)) <= 100
    assert float(row.group(2)) == pytest.approx(90.0, abs=0.05)
    assert (row.group(3) is not None) == method.startswith("ProxNAG")


def test_prox_nag_step_time_ratio(results_md):
    row = re.search(rf"Keras Nesterov SGD ({NUMBER}) ms, ratio ({NUMBER})\.", results_md)
    assert row and float(row.group(1)) > 0 and float(row.group(2)) > 0
