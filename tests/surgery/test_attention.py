"""Transformer blocks: strip, report, ClusterPlan + C-SGD and AOFP on MultiHeadAttention and FFNs."""

import keras
import numpy as np
import pytest

import keras_sparse_momentum as ksm
from keras_sparse_momentum.surgery.graph import ChannelGraph
from keras_sparse_momentum.surgery.strip import max_relative_error
from support import compile_for_test

L = keras.layers
TOKENS, DIM, HEADS, KEY_DIM, HIDDEN = 6, 16, 4, 4, 32


def vit_block(classes=3):
    """Pre-norm transformer block: LN -> MHA -> Add, LN -> Dense/gelu -> Dense -> Add."""
    inputs = keras.Input((TOKENS, DIM))
    x = L.Dense(DIM, name="embed")(inputs)
    y = L.LayerNormalization(name="ln1")(x)
    y = L.MultiHeadAttention(HEADS, KEY_DIM, name="mha")(y, y)
    x = L.Add()([x, y])
    y = L.LayerNormalization(name="ln2")(x)
    y = L.Dense(HIDDEN, activation="gelu", name="ffn_up")(y)
    y = L.Dense(DIM, name="ffn_down")(y)
    x = L.Add()([x, y])
    x = L.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, L.Dense(classes, name="head")(x), name="vit")


def _inputs(n=4, seed=1):
    return np.random.default_rng(seed).standard_normal((n, TOKENS, DIM)).astype("float32")


def _randomise_biases(model, seed=0):
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        if variable.path.endswith("bias") or variable.path.endswith("beta"):
            variable.assign(rng.normal(0, 0.5, variable.shape).astype("float32"))


def _set(variable, index, value=0.0):
    array = keras.ops.convert_to_numpy(variable).copy()
    array[index] = value
    variable.assign(array)


def test_untrained_attention_model_strips_unchanged_and_reports_macs():
    model = vit_block()
    stripped = ksm.strip(model)  # was: weight shape (64, 4, 16) is not compatible
    assert max_relative_error(model, stripped, _inputs()) <= 1e-6
    assert stripped.get_layer("mha").num_heads == HEADS
    assert [name for name, _ in stripped.strip_report.left_whole] == ["ln1", "ln2"]
    report = ksm.sparsity_report(model)
    macs = {row.variable: row.dense_macs for row in report.rows}
    per_projection = TOKENS * DIM * HEADS * KEY_DIM
    assert macs["mha/query/kernel"] == macs["mha/key/kernel"] == per_projection
    assert macs["mha/value/kernel"] == macs["mha/attention_output/kernel"] == per_projection
    assert macs["ffn_up/kernel"] == TOKENS * DIM * HIDDEN
    assert "?" not in str(report)


def test_dead_heads_and_ffn_units_are_removed_exactly():
    model = vit_block()
    _randomise_biases(model)
    mha = model.get_layer("mha")
    _set(mha.value_dense.kernel, (slice(None), 1))  # head 1: outputs its value bias, folded
    _set(mha.output_dense.kernel, 3)  # head 3: never read
    _set(mha.query_dense.kernel, (slice(None), 2))  # head 2: uniform attention, not zero: stays
    _set(mha.query_dense.bias, 2)
    _set(mha.key_dense.kernel, (slice(None), 2))
    _set(mha.key_dense.bias, 2)
    _set(model.get_layer("ffn_up").kernel, (slice(None), slice(0, 5)))  # gelu(bias): folded
    _set(model.get_layer("ffn_down").kernel, slice(5, 8))  # never read

    stripped = ksm.strip(model)

    assert stripped.get_layer("mha").num_heads == 2
    assert stripped.get_layer("ffn_up").units == HIDDEN - 8
    assert stripped.strip_report.widths == {"ffn_up": (32, 24), "mha/heads": (4, 2)}
    assert max_relative_error(model, stripped, _inputs()) <= 1e-5
    # The value bias of head 1, through the output kernel, went into the output bias.
    new_bias = keras.ops.convert_to_numpy(stripped.get_layer("mha").output_dense.bias)
    value_bias = keras.ops.convert_to_numpy(mha.value_dense.bias)[1]
    folded = value_bias @ keras.ops.convert_to_numpy(mha.output_dense.kernel)[1]
    np.testing.assert_allclose(
        new_bias, keras.ops.convert_to_numpy(mha.output_dense.bias) + folded, rtol=1e-5)


def test_uniform_attention_heads_are_kept():
    model = vit_block()
    _randomise_biases(model)
    mha = model.get_layer("mha")
    for dense in (mha.query_dense, mha.key_dense):
        _set(dense.kernel, (slice(None), slice(None)))
        _set(dense.bias, slice(None))
    stripped = ksm.strip(model)
    assert stripped.get_layer("mha").num_heads == HEADS
    assert max_relative_error(model, stripped, _inputs()) <= 1e-6


def test_cluster_plan_clusters_heads_and_ffn_units_and_strips_exactly():
    model = vit_block()
    _randomise_biases(model)
    plan = ksm.ClusterPlan.from_model(model, keep_ratio=0.5, method="even")
    assert {(g.name, g.unit, g.kept) for g in plan.groups} == {
        ("ffn_up", "channels", 16), ("mha/heads", "heads", 2)}
    assert "unpruned ln1:" in str(plan) and "mha/heads" in str(plan)
    axes = {m.path: (m.axis, m.kind) for m in plan.merges if m.path.startswith("mha/")}
    assert axes == {
        "mha/value/kernel": (1, "kernel"), "mha/value/bias": (0, "vector"),
        "mha/query/kernel": (1, "kernel"), "mha/query/bias": (0, "vector"),
        "mha/key/kernel": (1, "kernel"), "mha/key/bias": (0, "vector"),
    }
    plan.equalize(model)
    old_output = keras.ops.convert_to_numpy(model.get_layer("mha").output_dense.kernel)
    stripped = ksm.strip(model, plan)
    assert stripped.get_layer("mha").num_heads == 2
    np.testing.assert_allclose(  # heads (0, 1) and (2, 3): output slices summed
        keras.ops.convert_to_numpy(stripped.get_layer("mha").output_dense.kernel),
        old_output.reshape(2, 2, KEY_DIM, DIM).sum(axis=1), rtol=1e-6)
    assert max_relative_error(model, stripped, _inputs()) <= 1e-5


@pytest.mark.filterwarnings("ignore:CentripetalSGD")
def test_centripetal_sgd_then_strip_on_a_transformer_block():
    model = vit_block()
    plan = ksm.ClusterPlan.from_model(model, keep_ratio=0.5)
    x = _inputs(n=64, seed=2)
    y = np.random.default_rng(3).integers(0, 3, 64)
    compile_for_test(model, ksm.CentripetalSGD(plan, learning_rate=0.05, centripetal_strength=0.5))
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    stripped = ksm.strip(model, plan)
    assert stripped.get_layer("mha").num_heads == 2
    assert stripped.get_layer("ffn_up").units == HIDDEN // 2
    assert max_relative_error(model, stripped, x[:8]) <= 1e-4


def test_aofp_prunes_heads_and_ffn_units_then_strip_is_exact():
    model = vit_block()
    x = _inputs(n=96, seed=4)
    y = np.random.default_rng(5).integers(0, 3, 96)
    aofp = ksm.AOFP(target_flops=0.6, probe_data=x[:64], iters_per_half=2, measure_every=1,
                    thresh=1.0, thresh_growth=2.0, seed=0)
    compile_for_test(model, keras.optimizers.SGD(0.05))
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[aofp])
    assert set(aofp.original_widths) == {"ffn_up", "mha/heads"}
    assert aofp.target_reached and aofp.widths["mha/heads"] < HEADS
    stripped = ksm.strip(model)
    assert stripped.get_layer("mha").num_heads == aofp.widths["mha/heads"]
    assert stripped.get_layer("ffn_up").units == aofp.widths["ffn_up"]
    assert max_relative_error(model, stripped, x[:8]) <= 1e-5
    assert ksm.sparsity_report(stripped).dense_macs / ksm.sparsity_report(model).dense_macs == (
        pytest.approx(aofp.flops_ratio))


def test_attention_input_and_output_channels_follow_when_no_norm_pins_them():
    inputs = keras.Input((TOKENS, 5))
    query = L.Dense(8, name="q_in")(inputs)
    memory = L.Dense(10, activation="relu", name="kv_in")(inputs)
    y = L.MultiHeadAttention(2, 3, value_dim=4, name="mha")(query, memory)  # key = value
    y = L.Dense(6, name="after")(L.ReLU()(y))
    model = keras.Model(inputs, L.Dense(2, name="head")(L.Flatten()(y)))
    _randomise_biases(model)
    graph = ChannelGraph(model)
    assert graph.output_space(model.get_layer("mha")).producers == [model.get_layer("mha")]
    plan = ksm.ClusterPlan.from_model(model, keep_ratio=0.5, method="even")
    assert {g.name for g in plan.groups} == {"q_in", "kv_in", "mha", "mha/heads", "after"}
    plan.equalize(model)
    stripped = ksm.strip(model, plan)
    mha = stripped.get_layer("mha")
    assert (mha.num_heads, mha.query_dense.kernel.shape, mha.key_dense.kernel.shape) == (
        1, (4, 1, 3), (5, 1, 3))
    assert mha.output_dense.kernel.shape == (1, 4, 4)
    assert max_relative_error(model, stripped, _inputs(seed=6)[..., :5]) <= 1e-5


def test_returned_attention_scores_pin_the_heads():
    inputs = keras.Input((TOKENS, DIM))
    y, scores = L.MultiHeadAttention(2, 4, name="mha")(inputs, inputs, return_attention_scores=True)
    x = L.Flatten()(L.Dense(4, name="after")(y))
    model = keras.Model(inputs, [L.Dense(2)(x), scores])
    heads = ChannelGraph(model).inner_space(model.get_layer("mha"))
    assert heads.pinned and "attention scores" in heads.pins[0]
    with pytest.raises(ValueError, match="attention scores"):
        ksm.ClusterPlan.from_model(model, 0.5, layers=["mha/heads"])
    assert max_relative_error(model, ksm.strip(model), _inputs()) <= 1e-6


def test_aofp_measures_a_heads_damage_at_the_output_kernel():
    model = vit_block()
    _set(model.get_layer("mha").output_dense.kernel, 3)  # head 3 is never read
    x = _inputs(n=8, seed=7)
    aofp = ksm.AOFP(target_flops=0.5, probe_data=x, layers=["mha/heads"])
    model.compile(optimizer="sgd", loss="mse")  # AOFP keeps its state with the optimizer
    aofp.set_model(model)
    aofp.on_train_begin()
    outputs = aofp._forward(x)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]

    def damage(masked):
        keep = np.ones(HEADS, "float32")
        keep[masked] = 0.0
        value, power = aofp._damage(0, outputs, [keep])
        return float(value) / float(power)

    assert damage([3]) == 0.0 and damage([1]) > 1e-3 and damage([1, 3]) == pytest.approx(damage([1]))
    aofp.on_train_end()


def test_cross_attention_macs_and_a_pinned_output_keep_their_lengths():
    query_in, memory_in = keras.Input((3, 5)), keras.Input((7, 5))
    query = L.Dense(8, name="q_in")(query_in)
    memory = L.Dense(10, activation="relu", name="kv_in")(memory_in)
    y = L.MultiHeadAttention(2, 3, value_dim=4, name="mha")(query, memory)
    y = L.LayerNormalization(name="ln")(y)  # pins the attention's output channels
    model = keras.Model([query_in, memory_in], L.Dense(2, name="head")(L.Flatten()(y)))
    macs = {r.variable: r.dense_macs for r in ksm.sparsity_report(model).rows}
    assert macs["mha/query/kernel"] == 3 * 8 * 2 * 3 and macs["mha/key/kernel"] == 7 * 10 * 2 * 3
    assert macs["mha/value/kernel"] == 7 * 10 * 2 * 4
    assert macs["mha/attention_output/kernel"] == 3 * 2 * 4 * 8
    _randomise_biases(model)
    plan = ksm.ClusterPlan.from_model(model, keep_ratio=0.5, method="even")
    assert {g.name for g in plan.groups} == {"q_in", "kv_in", "mha/heads"}
    plan.equalize(model)
    stripped = ksm.strip(model, plan)
    mha = stripped.get_layer("mha")
    assert mha.query_dense.kernel.shape == (4, 1, 3) and mha.output_dense.kernel.shape == (1, 4, 8)
    rng = np.random.default_rng(8)
    x = [rng.standard_normal((2, 3, 5)).astype("float32"),
         rng.standard_normal((2, 7, 5)).astype("float32")]
    assert max_relative_error(model, stripped, x) <= 1e-5
