"""Embedding and recurrent layers: left whole by strip, named by ClusterPlan and AOFP, MACs counted."""

import keras
import numpy as np
import pytest

import keras_sparse_momentum as ksm
from keras_sparse_momentum.surgery.strip import max_relative_error

L = keras.layers
STEPS, VOCAB = 7, 20


def _text_model(recurrent):
    inputs = keras.Input((STEPS,), dtype="int32")
    x = L.Embedding(VOCAB, 8, name="embedding")(inputs)
    x = recurrent(x)
    x = L.Dense(12, activation="relu", name="hidden")(x)
    return keras.Model(inputs, L.Dense(3, name="head")(x))


RECURRENT = {
    "lstm": lambda: L.LSTM(6, name="rnn"),
    "gru": lambda: L.GRU(6, name="rnn"),
    "simple_rnn": lambda: L.SimpleRNN(6, name="rnn"),
    "bidirectional": lambda: L.Bidirectional(L.LSTM(3), name="rnn"),
}


@pytest.mark.parametrize("kind", sorted(RECURRENT))
def test_recurrent_layers_are_left_whole_named_and_counted(kind):
    model = _text_model(RECURRENT[kind]())
    hidden = model.get_layer("hidden")
    kernel = keras.ops.convert_to_numpy(hidden.kernel).copy()
    kernel[:, :4] = 0.0  # four dead hidden units after the recurrent layer still go
    hidden.kernel.assign(kernel)
    x = np.random.default_rng(0).integers(0, VOCAB, (4, STEPS)).astype("int32")

    stripped = ksm.strip(model)

    assert stripped.get_layer("hidden").units == 8
    assert max_relative_error(model, stripped, x) <= 1e-6
    whole = dict(stripped.strip_report.left_whole)
    assert "is left whole: its hidden units are not removed" in whole["rnn"]
    assert "output dimensions are not removed" in whole["embedding"]
    with pytest.raises(ValueError, match="cannot prune \\['rnn'\\]: recurrent layer 'rnn'"):
        ksm.ClusterPlan.from_model(model, 0.5, layers=["rnn"])
    plan = ksm.ClusterPlan.from_model(model, 0.5)
    assert [g.producers for g in plan.groups] == [["hidden"]]
    assert (["rnn"], whole["rnn"]) in plan.skipped
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="'rnn', which is left whole: recurrent layer"):
        model.fit(x, np.zeros(4), epochs=1, verbose=0,
                  callbacks=[ksm.AOFP(target_flops=0.5, probe_data=x, layers=["rnn"])])
    report = ksm.sparsity_report(model)
    rows = {r.variable: r for r in report.rows}
    kernels = [v for v in model.get_layer("rnn").weights if v.name == "kernel"]
    for variable in kernels:  # the input kernel runs once per step
        assert rows[variable.path].dense_macs == STEPS * int(np.prod(variable.shape))
    assert "?" not in str(report)
    embeddings = ksm.sparsity_report(model, prunable=lambda v: v.name == "embeddings")
    assert embeddings.dense_macs == 0  # a lookup, not a product


def test_nothing_to_cluster_names_the_recurrent_layer():
    inputs = keras.Input((STEPS,), dtype="int32")
    x = L.LSTM(5, name="rnn")(L.Embedding(VOCAB, 4, name="embedding")(inputs))
    model = keras.Model(inputs, L.Dense(2, name="head")(x))
    with pytest.raises(ValueError, match="nothing .* can be clustered.*rnn: recurrent layer"):
        ksm.ClusterPlan.from_model(model, 0.5)
    x = np.zeros((8, STEPS), "int32")
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="no layer whose filters can be pruned.*recurrent layer"):
        model.fit(x, np.zeros((8, 2)), epochs=1, verbose=0,
                  callbacks=[ksm.AOFP(target_flops=0.5, probe_data=x)])
