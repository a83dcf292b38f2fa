"""The `ksm` command line: help, exit codes, report, export and a quick demo."""

import json

import keras
import numpy as np
import pytest

from keras_sparse_momentum import cli
from keras_sparse_momentum.export import tflite_predict


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
         "--representative", str(samples), "--no-sparse"],
        capsys,
    )
    assert code == 0 and "quantize=int8" in out


@pytest.fixture
def tiny_mnist(tmp_path):
    """A synthetic stand-in for mnist10k.npz: 10 blob classes, 28x28 uint8."""
    rng = np.random.default_rng(0)

    def images(n):
        labels = rng.integers(0, 10, n)
        x = rng.integers(0, 40, (n, 28, 28))
        for i, label in enumerate(labels):
            x[i, 2 * label : 2 * label + 8, 4:24] += 200
        return x.astype("uint8"), labels.astype("uint8")

    (x_train, y_train), (x_test, y_test) = images(256), images(64)
    path = tmp_path / "mnist10k.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def test_demo_quick_runs_end_to_end(tiny_mnist, tmp_path, capsys):
    out_dir = tmp_path / "demo"
    code, out, _ = run(
        ["demo", "--quick", "--epochs", "1", "--compression", "20",
         "--data", str(tiny_mnist), "--out", str(out_dir)],
        capsys,
    )
    assert code == 0
    result = json.loads(out.split("RESULT ", 1)[1])
    assert result["compression"] == 20.0  # exactly ceil(266,200 / 20) = 13,310 nonzeros
    assert result["sparse_tflite_bytes"] < result["dense_tflite_bytes"]
    assert result["sparse_int8_tflite_bytes"] < result["sparse_tflite_bytes"]
    assert abs(result["tflite_accuracy"] - result["keras_accuracy"]) <= 1 / 64
    for name in ("model.keras", "model_sparse.tflite", "model_sparse_int8.tflite"):
        assert (out_dir / name).is_file()


def test_demo_without_data_exits_with_1_and_says_where_to_look(tmp_path, capsys):
    code, out, err = run(["demo", "--quick", "--data", str(tmp_path / "missing.npz")], capsys)
    assert code == 1
    assert "Cannot find the MNIST sample" in err and "KSM_DATA" in err
    assert "Traceback" not in err
