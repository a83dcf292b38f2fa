"""export_tflite on recurrent models: builtin ops only, any batch size, verified."""

import keras
import numpy as np
import pytest
from keras import layers

import keras_sparse_momentum as ksm
from keras_sparse_momentum.export import tflite_predict


def _recurrent_model(steps=6):
    """Embedding -> Bidirectional(LSTM) -> GRU -> SimpleRNN -> Dense: every standard cell."""
    tokens = keras.Input((steps,), dtype="int32")
    x = layers.Embedding(30, 8)(tokens)
    x = layers.Bidirectional(layers.LSTM(6, return_sequences=True), name="bi_lstm")(x)
    x = layers.GRU(5, return_sequences=True, name="gru")(x)
    x = layers.SimpleRNN(4, name="simple_rnn")(x)
    return keras.Model(tokens, layers.Dense(3)(x), name="recurrent")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = _recurrent_model()
    tokens = np.random.default_rng(0).integers(0, 30, (16, 6)).astype("int32")
    path = tmp_path_factory.mktemp("rnn") / "recurrent.tflite"
    return model, ksm.export_tflite(model, path, sample_inputs=tokens)


def test_lstm_gru_simple_rnn_and_bidirectional_convert_to_builtin_ops(exported):
    model, result = exported
    assert result.max_abs_error < 1e-5
    from ai_edge_litert import interpreter as litert

    interpreter = litert.Interpreter(model_path=result.path)
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert "FULLY_CONNECTED" in ops
    assert not [op for op in ops if op.startswith("Flex") or op == "CUSTOM"], ops
    # the layers were unrolled for the trace only
    assert not any(layer.unroll for layer in model._flatten_layers() if hasattr(layer, "unroll"))


@pytest.mark.parametrize("batch", [1, 5])
def test_the_file_runs_any_batch_size(exported, batch):
    model, result = exported
    tokens = np.random.default_rng(batch).integers(0, 30, (batch, 6)).astype("int32")
    expected = keras.ops.convert_to_numpy(model(tokens))
    np.testing.assert_allclose(tflite_predict(result.path, tokens), expected, atol=1e-5)


def test_undefined_number_of_timesteps_is_a_value_error_naming_the_layer(tmp_path):
    inputs = keras.Input((None, 4))
    model = keras.Model(inputs, layers.Dense(2)(layers.LSTM(3, name="free_lstm")(inputs)))
    with pytest.raises(ValueError, match=r"'free_lstm' \(LSTM\).*fixed sequence length"):
        ksm.export_tflite(model, tmp_path / "free.tflite")
