"""export_tflite: sparse encoding, quantisation, verification and model kinds."""

import os

import keras
import numpy as np
import pytest

import keras_sparse_momentum as ksm
from keras_sparse_momentum.export import tflite_predict
import support


def lenet_300_100():
    return keras.Sequential(
        [
            keras.Input((784,)),
            keras.layers.Dense(300, activation="relu"),
            keras.layers.Dense(100, activation="relu"),
            keras.layers.Dense(10),
        ],
        name="lenet",
    )


def cut_to_sparsity(model, sparsity):
    """Zero the smallest |w| of every kernel so each is exactly `sparsity` sparse."""
    for kernel in support.kernels(model):
        value = keras.ops.convert_to_numpy(kernel).copy()
        drop = int(round(sparsity * value.size))
        order = np.argsort(np.abs(value), axis=None)[:drop]
        value.flat[order] = 0.0
        kernel.assign(value)
    return model


@pytest.fixture(scope="module")
def sparse_lenet():
    keras.utils.set_random_seed(0)
    return cut_to_sparsity(lenet_300_100(), 0.9)


@pytest.fixture(scope="module")
def inputs():
    return np.random.default_rng(1).random((64, 784)).astype("float32")


@pytest.fixture(scope="module")
def dense_and_sparse(sparse_lenet, inputs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("lenet")
    dense = ksm.export_tflite(
        sparse_lenet, folder / "dense.tflite", sparse=False, sample_inputs=inputs
    )
    sparse = ksm.export_tflite(sparse_lenet, folder / "sparse.tflite", sample_inputs=inputs)
    return dense, sparse


def test_sparse_file_is_at_most_0_3x_the_dense_one(dense_and_sparse):
    dense, sparse = dense_and_sparse
    assert dense.size_bytes == os.path.getsize(dense.path)
    assert sparse.size_bytes == os.path.getsize(sparse.path)
    assert sparse.size_bytes <= 0.3 * dense.size_bytes
    assert 0 < sparse.gzip_bytes < sparse.size_bytes
    assert dense.sparse_tensors == []


def test_sparse_tensors_read_back_from_the_file(sparse_lenet, dense_and_sparse):
    _, sparse = dense_and_sparse
    # The converter stores Dense kernels transposed: (units, inputs).
    expected = {
        tuple(reversed(k.shape)): int(np.count_nonzero(keras.ops.convert_to_numpy(k)))
        for k in support.kernels(sparse_lenet)
    }
    found = {t.shape: t.stored for t in sparse.sparse_tensors}
    assert found == expected
    for tensor in sparse.sparse_tensors:
        assert tensor.density == pytest.approx(0.1, abs=1e-3)


def test_outputs_match_keras_within_1e_4(sparse_lenet, dense_and_sparse, inputs):
    reference = keras.ops.convert_to_numpy(sparse_lenet(inputs))
    for result in dense_and_sparse:
        assert result.max_abs_error <= 1e-4
        assert np.max(np.abs(tflite_predict(result.path, inputs) - reference)) <= 1e-4


def test_int8_without_representative_data_is_a_value_error(sparse_lenet, tmp_path):
    with pytest.raises(ValueError, match="representative_data"):
        ksm.export_tflite(sparse_lenet, tmp_path / "m.tflite", sparse=False, quantize="int8")
    assert not (tmp_path / "m.tflite").exists()


def test_unknown_quantize_mode_is_a_value_error(sparse_lenet, tmp_path):
    with pytest.raises(ValueError, match="quantize"):
        ksm.export_tflite(sparse_lenet, tmp_path / "m.tflite", quantize="int4")


def test_dense_int8_is_smaller_and_keeps_predictions(
    sparse_lenet, dense_and_sparse, inputs, tmp_path
):
    dense, _ = dense_and_sparse
    int8 = ksm.export_tflite(
        sparse_lenet, tmp_path / "int8.tflite", sparse=False, quantize="int8",
        representative_data=inputs,
    )
    assert int8.size_bytes < 0.3 * dense.size_bytes and int8.sparse_tensors == []
    assert int8.dense_size_bytes == dense.size_bytes and int8.latency_ms > 0
    assert int8.runtime == "ai_edge_litert (XNNPACK)"
    invoke_plainly(int8.path, inputs[:1])
    reference = keras.ops.convert_to_numpy(sparse_lenet(inputs))
    predicted = tflite_predict(int8.path, inputs)
    assert np.mean(np.argmax(predicted, 1) == np.argmax(reference, 1)) >= 0.9
    # Verified on the first 32 representative samples by default.
    worst = float(np.max(np.abs(predicted - reference)[:32]))
    assert int8.max_abs_error == pytest.approx(worst, rel=1e-6)


@pytest.mark.parametrize("quantize", ["dynamic", "int8"])
def test_sparse_quantised_is_refused_up_front_naming_what_runs(
    sparse_lenet, inputs, tmp_path, quantize
):
    match = rf'quantize=None.*sparse=False with quantize="{quantize}"'
    with pytest.raises(ValueError, match=match):
        ksm.export_tflite(sparse_lenet, tmp_path / "q.tflite", quantize=quantize,
                          representative_data=inputs)
    assert not (tmp_path / "q.tflite").exists()


def invoke_plainly(path, x):
    """What apps do: Interpreter(model_path=...) (XNNPACK on by default), then invoke()."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


@pytest.mark.parametrize("sparse, quantize", [
    (False, None), (True, None), (False, "dynamic"), (False, "float16"), (True, "float16"),
])
def test_every_file_written_runs_with_a_plain_interpreter(
    sparse_lenet, dense_and_sparse, inputs, tmp_path, sparse, quantize
):
    if quantize is None:  # the fixture's files
        result = dense_and_sparse[sparse]
    else:
        result = ksm.export_tflite(
            sparse_lenet, tmp_path / "m.tflite", sparse=sparse, quantize=quantize,
            representative_data=inputs if quantize == "int8" else None, measure=False,
        )
    assert result.runtime == "ai_edge_litert (XNNPACK)"
    assert (len(result.sparse_tensors) == 3) == sparse
    output = invoke_plainly(result.path, inputs[:1])
    reference = keras.ops.convert_to_numpy(sparse_lenet(inputs[:1]))
    assert np.max(np.abs(output - reference)) <= 0.05 * np.max(np.abs(reference))


def test_latency_and_the_dense_file_are_reported(dense_and_sparse):
    dense, sparse = dense_and_sparse
    assert sparse.dense_size_bytes == dense.size_bytes  # converted in memory, same bytes
    assert dense.dense_size_bytes == dense.size_bytes
    assert dense.dense_latency_ms == dense.latency_ms  # the dense file is timed once
    for result in dense_and_sparse:
        assert 0 < result.latency_ms < 100 and 0 < result.dense_latency_ms < 100
        assert "us per sample (1 thread)" in str(result)


def test_tflite_predict_does_not_fall_back_silently(sparse_lenet, inputs, tmp_path):
    """A sparse int8 file from another tool: XNNPACK rejects it; the error says so and
    how to run it anyway (xnnpack=False, the builtin kernels)."""
    from keras_sparse_momentum import export

    flatbuffer, _ = export._convert(sparse_lenet, True, "int8", inputs)
    path = tmp_path / "foreign.tflite"
    path.write_bytes(flatbuffer)
    with pytest.raises(RuntimeError, match=r"does not run on ai_edge_litert \(XNNPACK\).*xnnpack=False"):
        tflite_predict(path, inputs)
    predicted = tflite_predict(path, inputs, xnnpack=False)
    reference = keras.ops.convert_to_numpy(sparse_lenet(inputs))
    assert np.mean(np.argmax(predicted, 1) == np.argmax(reference, 1)) >= 0.9


class TwoHeads(keras.Model):
    """Subclassed, dict outputs (flattened by key, like the TFLite signature)."""

    def __init__(self):
        super().__init__()
        self.hidden = keras.layers.Dense(16, activation="relu")
        self.head = keras.layers.Dense(3)

    def call(self, x):
        h = self.hidden(x)
        return {"scores": self.head(h), "doubled": 2.0 * x}


def test_subclassed_model_exports_and_matches(tmp_path):
    model = TwoHeads()
    with pytest.raises(ValueError, match="not built"):
        ksm.export_tflite(model, tmp_path / "m.tflite")
    model(np.zeros((1, 6), "float32"))
    result = ksm.export_tflite(model, tmp_path / "m.tflite", measure=False)
    assert result.max_abs_error <= 1e-5
    x = np.random.default_rng(0).standard_normal((5, 6)).astype("float32")
    doubled, scores = tflite_predict(result.path, x)
    np.testing.assert_allclose(doubled, 2 * x, rtol=1e-6)
    np.testing.assert_allclose(scores, model(x)["scores"], atol=1e-5)


def test_multi_input_functional_model_maps_inputs_and_outputs_by_name(tmp_path):
    a, b = keras.Input((4,), name="alpha"), keras.Input((3,), name="beta")
    joined = keras.layers.Concatenate()([a, b])
    model = keras.Model([a, b], [keras.layers.Dense(2)(joined), keras.layers.Dense(5)(joined)])
    x = [np.ones((3, 4), "float32"), np.full((3, 3), -1.0, "float32")]
    result = ksm.export_tflite(model, tmp_path / "m.tflite", sample_inputs=x, measure=False)
    assert result.max_abs_error <= 1e-5
    first, second = tflite_predict(result.path, x)
    assert first.shape == (3, 2) and second.shape == (3, 5)


def test_stripped_model_exports(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16,))
    hidden = keras.layers.Dense(32, activation="relu", name="hidden")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(4, name="out")(hidden))
    kernel = model.get_layer("hidden").kernel
    kernel.assign(keras.ops.convert_to_numpy(kernel) * (np.arange(32) % 4 == 0))  # 24 dead units
    slim = ksm.strip(model)
    assert slim.get_layer("hidden").units == 8
    x = np.random.default_rng(0).standard_normal((8, 16)).astype("float32")
    result = ksm.export_tflite(slim, tmp_path / "slim.tflite", sample_inputs=x, measure=False)
    assert result.max_abs_error <= 1e-5
    np.testing.assert_allclose(tflite_predict(result.path, x), model(x), atol=1e-5)


def test_unsupported_operation_is_named_in_a_value_error(tmp_path):
    import tensorflow as tf

    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Lambda(lambda x: tf.linalg.det(tf.reshape(x, (-1, 2, 2)))),
        ]
    )
    with pytest.raises(ValueError, match="MatrixDeterminant"):
        ksm.export_tflite(model, tmp_path / "m.tflite")


def test_nan_from_sparse_float16_is_caught(tmp_path):
    """TFLite's block-sparse float16 weights yield NaN at ~98 % sparsity (TF 2.21).

    A canary: if TFLite fixes this, the first `raises` fails; then drop the hint.
    """
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32), keras.layers.Dense(8)])
    kernel = keras.ops.convert_to_numpy(model.layers[0].kernel).copy()
    kernel[np.random.default_rng(0).random(kernel.shape) < 0.98] = 0.0
    model.layers[0].kernel.assign(kernel)
    x = np.random.default_rng(1).random((16, 64)).astype("float32")
    with pytest.raises(RuntimeError, match="nothing was written.*sparse=False"):
        ksm.export_tflite(model, tmp_path / "f16.tflite", quantize="float16", sample_inputs=x,
                          measure=False)
    assert not (tmp_path / "f16.tflite").exists()
    dense = ksm.export_tflite(
        model, tmp_path / "f16.tflite", quantize="float16", sparse=False, sample_inputs=x,
        measure=False,
    )
    assert dense.max_abs_error < 1e-2


def _narrow_classifier(inputs, seed=0):
    """Input(inputs) -> Dense(10, softmax) with 70 % zero weights (sparse enough to encode)."""
    rng = np.random.default_rng(seed)
    x = keras.Input((inputs,))
    model = keras.Model(x, keras.layers.Dense(10, activation="softmax", name="head")(x))
    kernel = rng.standard_normal((inputs, 10)).astype("float32")
    kernel[rng.random(kernel.shape) < 0.7] = 0.0
    model.get_layer("head").kernel.assign(kernel)
    model.get_layer("head").bias.assign(rng.normal(0, 0.1, 10).astype("float32"))
    return model, rng.standard_normal((8, inputs)).astype("float32")


@pytest.mark.parametrize("inputs", [1, 2, 3])
def test_a_dense_layer_with_fewer_than_four_inputs_exports_sparse(inputs, tmp_path):
    """EfficientNetB0 after GSM + strip keeps 1 filter in `top_conv`, so its classifier reads
    one input: the converter's 1x4-block sparse FULLY_CONNECTED weight then holds nothing.
    Traced as a product such layers give a verified sparse file, and the layer is left as
    it was."""
    model, x = _narrow_classifier(inputs)
    result = ksm.export_tflite(model, tmp_path / "m.tflite", sample_inputs=x, measure=False)
    assert result.max_abs_error <= 1e-6
    for _ in range(2):
        np.testing.assert_allclose(tflite_predict(result.path, x), model(x), atol=1e-6)
    assert "call" not in vars(model.get_layer("head"))


def test_the_converter_still_loses_narrow_sparse_fully_connected_weights(tmp_path, monkeypatch):
    """A canary for the workaround above: if the converter is fixed this `raises` fails;
    then `_narrow_dense_layers_as_products` can go."""
    import contextlib

    from keras_sparse_momentum import export

    monkeypatch.setattr(export, "_narrow_dense_layers_as_products",
                        lambda model, sparse: contextlib.nullcontext())
    model, x = _narrow_classifier(2)
    with pytest.raises(RuntimeError, match="converter bug"):
        ksm.export_tflite(model, tmp_path / "m.tflite", sample_inputs=x, measure=False)
