"""Every tutorial runs in --quick mode (a fresh process each) and writes its plots."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "tutorials").glob("*.py"))
HEADER = ("Title: ", "Author: ", "Date created: ", "Description: ")
# The TFLite files each tutorial writes to --out.
TFLITE_FILES = {
    "gsm_mnist.py": ["gsm_dense.tflite", "gsm_int8.tflite", "gsm_sparse.tflite"],
    "migrate_from_tfmot.py": ["migrated_sparse.tflite"],
}


def test_there_are_tutorials():
    assert {"gsm_mnist.py", "migrate_from_tfmot.py"} <= {p.name for p in TUTORIALS}


@pytest.mark.parametrize("script", TUTORIALS, ids=lambda p: p.name)
def test_keras_io_header(script):
    header = script.read_text().split('"""')[1]
    for field in HEADER:
        assert f"\n{field}" in header, f"{script.name} lacks '{field.strip()}'"


@pytest.mark.parametrize("script", TUTORIALS, ids=lambda p: p.name)
def test_quick_mode_runs_and_writes_png_and_tflite_files_that_run(script, tmp_path):
    """With the shipped sample (no KSM_DATA); every TFLite file written loads with a
    plain `Interpreter(model_path=...)` (XNNPACK on, as apps load it) and invokes."""
    from ai_edge_litert.interpreter import Interpreter

    env = dict(os.environ, MPLBACKEND="Agg", TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("KSM_DATA", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    out = tmp_path / "out"
    completed = subprocess.run(
        [sys.executable, str(script), "--quick", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert list(out.glob("*.png")), f"{script.name} wrote no PNG to --out"
    files = sorted(out.glob("*.tflite"))
    assert [p.name for p in files] == TFLITE_FILES.get(script.name, [])
    for path in files:
        interpreter = Interpreter(model_path=str(path))
        interpreter.allocate_tensors()
        for detail in interpreter.get_input_details():
            interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
        interpreter.invoke()
