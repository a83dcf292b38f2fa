"""Every tutorial runs in --quick mode (a fresh process each) and writes its plots."""

import os
import pathlib
import subprocess
import sys

import pytest

from keras_sparse_momentum.data import DataNotFoundError, find_mnist10k

ROOT = pathlib.Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "tutorials").glob("*.py"))
HEADER = ("Title: ", "Author: ", "Date created: ", "Description: ")


def test_there_are_tutorials():
    assert {"gsm_mnist.py", "migrate_from_tfmot.py"} <= {p.name for p in TUTORIALS}


@pytest.mark.parametrize("script", TUTORIALS, ids=lambda p: p.name)
def test_keras_io_header(script):
    header = script.read_text().split('"""')[1]
    for field in HEADER:
        assert f"\n{field}" in header, f"{script.name} lacks '{field.strip()}'"


@pytest.mark.parametrize("script", TUTORIALS, ids=lambda p: p.name)
def test_quick_mode_runs_and_writes_png(script, tmp_path):
    try:
        find_mnist10k()
    except DataNotFoundError as error:
        pytest.skip(f"tutorials need the MNIST sample: {error}")
    env = dict(os.environ, MPLBACKEND="Agg", TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    out = tmp_path / "out"
    completed = subprocess.run(
        [sys.executable, str(script), "--quick", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert list(out.glob("*.png")), f"{script.name} wrote no PNG to --out"
