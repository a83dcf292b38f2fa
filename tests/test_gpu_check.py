"""benchmarks/gpu_check.py produces every number, on CPU at tiny sizes (`--quick`)."""

import json

import pytest

from benchmarks import gpu_check


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    assert gpu_check.main(["--quick", "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_every_selected_test_is_found_in_the_suite():
    for node in gpu_check.NODE_IDS:
        path, name = node.split("::")
        source = (gpu_check.REPO / path).read_text()
        assert f"def {name.split('[')[0]}(" in source, node


def test_the_tests_ran_under_forced_xla(results):
    tests = results["tests"]
    assert tests["jit_forced"] and tests["returncode"] == 0
    assert tests["passed"] == tests["selected"] == len(tests["results"]) == 1
    assert tests["results"][0]["id"] == gpu_check.QUICK_NODE_IDS[0]


def test_step_time_ratios_of_the_three_optimizers(results):
    steps = results["step_time"]
    assert steps["policy"] == "mixed_float16" and steps["parameters"] > 0
    assert [r["optimizer"] for r in steps["rows"]] == ["sgd", "gsm", "proxnag", "csgd"]
    for row in steps["rows"]:
        assert row["step_ms"] > 0 and row["ratio_q1"] <= row["ratio"] <= row["ratio_q3"]


def test_selection_times_and_the_rendered_section(results):
    assert [r["params"] for r in results["selection"]] == list(gpu_check.QUICK["sizes"])
    assert all(r["ms"] > 0 for r in results["selection"])
    text = gpu_check.render(results)
    assert text.startswith("### GPU check (quick mode")
    assert text.count("| csgd |") == 1 and "| 100,000 |" in text
