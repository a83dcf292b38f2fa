"""The `ksm` command line: help, exit codes, report, export and a quick demo."""

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_sparse_momentum import cli
from keras_sparse_momentum.export import tflite_predict

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run(argv, capsys):
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def saved_model(tmp_path):
    """A tiny functional model with exactly 100 of 400 kernel weights nonzero."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(40, activation="relu", name="hidden")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(hidden))
    kernel = keras.ops.convert_to_numpy(model.get_layer("hidden").kernel)  # 8x40 = 320
    mask = np.zeros(kernel.size, bool)
    mask[:80] = True
    model.get_layer("hidden").kernel.assign(kernel * mask.reshape(kernel.shape))
    out = keras.ops.convert_to_numpy(model.get_layer("out").kernel)  # 40x2 = 80
    mask = np.zeros(out.size, bool)
    mask[::4] = True
    model.get_layer("out").kernel.assign(out * mask.reshape(out.shape))
    path = tmp_path / "tiny.keras"
    model.save(path)
    return path, model


def test_help_teaches_the_commands_and_exit_codes(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for word in ("ksm demo", "ksm report", "ksm export", "exit codes"):
        assert word in text
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    assert "GSMMomentum" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv", [[], ["prune"], ["demo", "--compression", "0.5"], ["export", "a.keras"]]
)
def test_bad_usage_exits_with_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert "usage: ksm" in capsys.readouterr().err


def test_report_prints_the_exact_counts(saved_model, capsys):
    path, _ = saved_model
    code, out, _ = run(["report", str(path)], capsys)
    assert code == 0
    assert "100/400" in out and "compression 4.0x" in out
    code, out, _ = run(["report", str(path), "--json"], capsys)
    assert code == 0
    report = json.loads(out)
    assert (report["prunable"], report["nonzeros"]) == (400, 100)


def test_report_of_a_missing_file_exits_with_1_and_one_line(tmp_path, capsys):
    code, out, err = run(["report", str(tmp_path / "nope.keras")], capsys)
    assert code == 1 and out == ""
    assert err.startswith("ksm: error: no such model file") and "Traceback" not in err


def test_export_writes_a_verified_file(saved_model, tmp_path, capsys):
    path, model = saved_model
    output = tmp_path / "out" / "tiny.tflite"
    code, out, _ = run(["export", str(path), str(output)], capsys)
    assert code == 0 and output.is_file()
    assert "max |TFLite - Keras|" in out
    x = np.random.default_rng(0).standard_normal((4, 8)).astype("float32")
    np.testing.assert_allclose(tflite_predict(output, x), model(x), atol=1e-5)


def test_export_int8_without_samples_exits_with_1(saved_model, tmp_path, capsys):
    path, _ = saved_model
    code, _, err = run(
        ["export", str(path), str(tmp_path / "m.tflite"), "--quantize", "int8"], capsys
    )
    assert code == 1 and "--representative" in err
    samples = tmp_path / "samples.npy"
    np.save(samples, np.random.default_rng(0).standard_normal((20, 8)).astype("float32"))
    code, out, _ = run(
        ["export", str(path), str(tmp_path / "m.tflite"), "--quantize", "int8",
         "--representative", str(samples)],
        capsys,
    )
    # No --no-sparse needed: quantised weights are stored dense (XNNPACK runs them), said so.
    assert code == 0 and "quantize=int8" in out and "0 sparse tensors" in out
    assert "weights stored dense" in out


def test_demo_quick_runs_from_an_empty_folder_and_every_file_runs_on_the_default_runtime(
    tmp_path,
):
    """`ksm demo --quick` with nothing beside it (no KSM_DATA, no --data): the shipped
    sample is used, and every TFLite file it writes loads with a plain
    `Interpreter(model_path=...)` (XNNPACK on, as apps load it) and `invoke()`s."""
    from ai_edge_litert.interpreter import Interpreter

    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "KSM_DATA"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    completed = subprocess.run(
        [sys.executable, "-m", "keras_sparse_momentum.cli", "demo", "--quick"],
        cwd=empty, env=env, capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.split("RESULT ", 1)[1])
    assert result["compression"] == 50.0  # exactly ceil(266,200 / 50) = 5,324 nonzeros
    assert result["sparse_tflite_bytes"] < result["int8_tflite_bytes"] < result[
        "dense_tflite_bytes"]
    assert abs(result["tflite_accuracy"] - result["keras_accuracy"]) <= 2 / 2000
    assert result["int8_accuracy"] > 0.5 and result["keras_accuracy"] > 0.5
    assert all(result[k] > 0 for k in ("dense_us", "sparse_us", "int8_us"))
    out = empty / "ksm_demo_out"
    assert sorted(p.name for p in empty.iterdir()) == ["ksm_demo_out"]
    files = sorted(out.glob("*.tflite"))
    assert [p.name for p in files] == [
        "model_dense.tflite", "model_int8.tflite", "model_sparse.tflite"]
    for path in files:
        interpreter = Interpreter(model_path=str(path))
        interpreter.allocate_tensors()
        detail = interpreter.get_input_details()[0]
        interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
        interpreter.invoke()


def test_demo_with_a_missing_data_file_exits_with_1_and_says_what_was_tried(tmp_path, capsys):
    code, out, err = run(["demo", "--quick", "--data", str(tmp_path / "missing.npz")], capsys)
    assert code == 1
    assert "Cannot find the MNIST sample" in err and "KSM_DATA" in err
    assert str(tmp_path / "missing.npz") in err
    assert "shared" not in err and "Traceback" not in err
