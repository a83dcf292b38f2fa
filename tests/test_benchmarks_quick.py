"""The benchmark entry point, on tiny budgets: every section and method runs, and what it
produces holds (exact sparsity, smaller stripped and sparse files, exact strips, the
README block generated from the same numbers), not only that numbers appear."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from test_benchmarks_render import numbers

REPO = Path(__file__).resolve().parents[1]
NUMBER = r"-?\d+\.\d+"
METHODS = ("dense", "gsm_short", "gsm_paper", "gmp", "tfmot", "l1", "proxnag")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick",
         "--grid", "lenet300:60", "--methods", ",".join(METHODS),
         "--cost-models", "lenet300", "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def results_md(quick):
    return (quick / "RESULTS.md").read_text()


def _json(quick, name):
    return json.loads((quick / f"{name}.json").read_text())


def test_every_section_ran_and_stored_its_provenance(quick, results_md):
    from benchmarks import run

    assert "Not measured" not in results_md
    for name in run.SECTIONS:
        results = _json(quick, name)
        meta = results["meta"]
        assert meta["quick"] and meta["machine"]["cores"] >= 1 and meta["versions"]["keras"]
        assert re.fullmatch(r"[0-9a-f]{40}", meta["commit"])
        rows = run.provenance.rows(results)
        assert rows and all(r["commit"] == meta["commit"] for _, r in rows), name
    assert sorted(p.name for p in quick.glob("*.png")) == [
        "accuracy_lenet300.png", "layers_lenet300.png", "selection_scaling.png"]


def test_rendering_again_gives_the_same_files_and_readme_numbers_come_from_them(quick, results_md):
    from benchmarks import run

    again, block = run.render_all(quick)
    assert again == results_md
    assert numbers(block) <= numbers(results_md)
    assert "not measured" not in block


@pytest.mark.parametrize("method", METHODS)
def test_accuracy_rows_reach_the_exact_compression(results_md, method):
    from benchmarks.accuracy import LABELS

    compression = "1x" if method == "dense" else "60x"
    row = re.search(rf"^\| LeNet-300-100 \| {compression} \| {re.escape(LABELS[method])} \| "
                    rf"2 \(1024 imgs\) \| 1 \| 0 \| ({NUMBER}) ± {NUMBER} \| \[{NUMBER}, {NUMBER}\] "
                    rf"\| ({NUMBER}) \|", results_md, re.M)
    assert row, method
    assert 10 <= float(row.group(1)) <= 100
    # 60x: exactly ceil(N/60) of the N prunable weights survive (tfmot: per layer, rounded).
    expected = 0.0 if method == "dense" else 100 * (1 - 4437 / 266200)
    assert float(row.group(2)) == pytest.approx(expected, abs=0.005 if method != "tfmot" else 0.05)


def test_layers_split_the_kept_weights_and_add_up(quick):
    records = {r["method"]: r for r in _json(quick, "layers")["records"]}
    assert set(records) == {"gsm_short", "gsm_paper", "gmp", "tfmot"}
    for method in ("gsm_short", "gsm_paper", "gmp"):
        layers = records[method]["layers"]
        assert sum(kept for _, _, kept in layers) == 4437  # global: exactly ceil(N / 60)
        densities = [kept / size for _, size, kept in layers]
        assert max(densities) > 2 * min(densities)  # found per layer, not uniform
    tfmot = [kept / size for _, size, kept in records["tfmot"]["layers"]]
    assert max(tfmot) - min(tfmot) < 0.002  # uniform


def test_sweep_best_against_best_is_computed_from_the_rows(quick, results_md):
    from benchmarks import sweep

    rows = sweep.summarize(_json(quick, "sweep")["records"])
    best = sweep._best(rows, "lenet300")
    assert set(best) == {"dense", "gsm_budget", "gmp"}
    line = re.search(rf"LeNet-300-100 at 60x: GSM ({NUMBER}) % \(lr 0.2\) vs dense ({NUMBER}) % "
                     rf"\(lr 0.2\): ([+-]\d+\.\d+) points", results_md)
    assert float(line.group(1)) == pytest.approx(best["gsm_budget"]["mean"], abs=0.005)
    assert float(line.group(3)) == pytest.approx(
        best["gsm_budget"]["mean"] - best["dense"]["mean"], abs=0.011)


def test_cost_rows(quick):
    cost = _json(quick, "cost")
    steps = {(r["optimizer"], r["xla"]): r for r in cost["steps"]}
    assert set(steps) == {(o, x) for o in ("sgd", "gsm_short", "gsm_paper", "proxnag")
                          for x in (True, False)}
    for (optimizer, _), row in steps.items():
        assert row["step_ms"] > 0
        if optimizer != "sgd":
            assert 0.2 < row["ratio"] < 20 and row["ratio_q1"] <= row["ratio"] <= row["ratio_q3"]
    memory = {r["optimizer"]: r["ratio"] for r in cost["memory"]}
    # GSM keeps one slot per variable, as SGD does; ProxNAG's `w~` slot is SGD's, plus a
    # boolean support per kernel weight (a quarter of a float32 one); masks add one per weight.
    assert memory["gsm_short"] == memory["gsm_paper"] == 1.0
    assert 1.24 < memory["proxnag"] < 1.25
    assert 1.9 < memory["sgd + PruneToRatio masks"] < 2.0
    sizes = [r["params"] for r in cost["selection"]]
    assert sizes == sorted(sizes) and all(r["ms"] > 0 for r in cost["selection"])


def test_structured_rows_strip_exactly_and_ship_smaller_files(quick):
    tables = _json(quick, "structured")["tables"]
    assert set(tables) == {"csgd_resnet", "aofp_cnn", "csgd_vit"}
    vit = {r["model"]: r for r in tables["csgd_vit"]}
    assert set(vit) == {"dense", "csgd_stripped", "l1_finetuned"}
    # Heads and FFN units at keep 0.5, C-SGD and L1 to the same widths; C-SGD's strip is exact.
    assert vit["csgd_stripped"]["strip_max_rel_error"] < 1e-4
    assert vit["csgd_stripped"]["macs"] < vit["dense"]["macs"]
    assert vit["l1_finetuned"]["macs"] == vit["csgd_stripped"]["macs"]
    assert vit["l1_finetuned"]["heads_ffn_units"] == vit["csgd_stripped"]["heads_ffn_units"]
    resnet = {r["model"]: r for r in tables["csgd_resnet"]}
    assert set(resnet) == {"dense", "csgd_stripped", "l1_finetuned", "aofp_stripped"}
    for name in ("csgd_stripped", "aofp_stripped"):
        assert resnet[name]["strip_max_rel_error"] < 1e-4
        assert resnet[name]["macs"] <= resnet["dense"]["macs"]
    # C-SGD halves every layer: a quarter of the MACs, a much smaller file (quick AOFP may
    # prune nothing in one epoch).
    assert resnet["csgd_stripped"]["macs"] < 0.3 * resnet["dense"]["macs"]
    assert resnet["csgd_stripped"]["tflite_kb"] < 0.6 * resnet["dense"]["tflite_kb"]
    assert resnet["l1_finetuned"]["macs"] == resnet["csgd_stripped"]["macs"]  # same widths
    vgg = tables["aofp_cnn"]
    for row in vgg:
        assert 0 <= row["accuracy"] <= 1 and row["tflite_ms"] > 0
    aofp = next(r for r in vgg if r["model"] == "aofp")
    assert aofp["flops_kept"] < 1 and aofp["strip_error"] < 1e-4
    scratch = next(r for r in vgg if r["model"] == "scratch")
    assert scratch["widths"] == aofp["widths"]


@pytest.mark.parametrize("variant", ["plain", "bn"])
def test_sparsity_targets_are_reached(quick, variant):
    records = [r for r in _json(quick, "prox_nag_lenet5")["records"] if r["variant"] == variant]
    assert {r["method"] for r in records} == {"dense", "gmp", "prox", "tfmot"}
    for r in records:
        if r["method"] != "dense":
            assert r["sparsity"] == pytest.approx(0.9, abs=5e-4), r["method"]
    prox = next(r for r in records if r["method"] == "prox")
    assert isinstance(prox["rounds_reached"], bool) and prox["rounds"]


def test_deployment_files_are_verified_and_sparse_is_smaller(quick, results_md):
    deployment = _json(quick, "deployment")
    files = {r["mode"]: r for r in deployment["files"]}
    assert {"dense float32", "sparse float32"} <= set(files)
    dense, sparse = files["dense float32"], files["sparse float32"]
    assert sparse["size_bytes"] < 0.5 * dense["size_bytes"]  # 10x compression
    keras_accuracy = deployment["model"]["keras_accuracy"]
    for row in (dense, sparse):
        assert row["max_abs_error"] < 1e-4
        assert row["tflite_accuracy"] == pytest.approx(keras_accuracy, abs=0.01)
    assert deployment["model"]["compression"] == pytest.approx(10, abs=0.01)
    demo = deployment["demo"][0]
    assert demo["exit_code"] == 0 and demo["seconds"] > 0
    assert "## Deployment" in results_md
