"""One test per layer rule: its axis maths, checked by removing and merging channels through it.

Each case puts one layer family between two producers. A C-SGD plan (even
clusters, equalised) is stripped, then a dead channel of the producer before
it: both must keep the function (relative error <= 1e-5) and change the widths
the rule says. A rule with a wrong axis gives a shape error or a changed
function here.
"""

import keras
import numpy as np
import pytest

import keras_sparse_momentum as ksm
from keras_sparse_momentum.surgery import rules
from keras_sparse_momentum.surgery.graph import ChannelGraph
from keras_sparse_momentum.surgery.strip import max_relative_error

L = keras.layers


def _randomise(model, seed=0):
    """Random weights everywhere (biases, statistics and scales included), positive variances."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        if "variance" in variable.path:
            value = rng.uniform(0.5, 2.0, variable.shape)
        else:
            value = rng.normal(0.0, 0.4, variable.shape)
        variable.assign(value.astype("float32"))


def _model(shape, *layers):
    inputs = keras.Input(shape)
    x = L.Dense(6, name="first")(inputs) if len(shape) == 1 else inputs
    for layer in layers:
        x = layer(x)
    x = L.Flatten()(x) if len(x.shape) > 2 else x
    return keras.Model(inputs, L.Dense(3, name="last")(x))


CASES = {
    "dense_3d": lambda: _model((5, 4), L.Dense(6, name="a"), L.ReLU(), L.Dense(7, name="b")),
    "einsum_dense": lambda: _model(
        (5, 4), L.Dense(6, name="a"),
        L.EinsumDense("abc,cd->abd", output_shape=(5, 8), bias_axes="d", name="b"),
        L.Dense(7, name="c")),
    "conv1d_causal": lambda: _model(
        (9, 3), L.Conv1D(6, 3, name="a"), L.Conv1D(8, 3, padding="causal", name="b"),
        L.Conv1D(5, 2, name="c")),
    "conv3d": lambda: _model((4, 4, 4, 2), L.Conv3D(6, 2, name="a"), L.Conv3D(5, 2, name="b")),
    "conv2d_transpose": lambda: _model(
        (4, 4, 3), L.Conv2D(6, 2, name="a"), L.Conv2DTranspose(8, 3, strides=2, name="b"),
        L.Conv2D(5, 3, name="c")),
    "conv1d_transpose": lambda: _model(
        (6, 3), L.Conv1D(6, 2, name="a"), L.Conv1DTranspose(8, 3, name="b"), L.Conv1D(5, 2, name="c")),
    "separable1d": lambda: _model(
        (9, 3), L.Conv1D(6, 2, name="a"), L.SeparableConv1D(8, 3, padding="same", name="b"), L.Conv1D(5, 2, name="c")),
    "depthwise1d": lambda: _model(
        (9, 3), L.Conv1D(6, 2, name="a"), L.DepthwiseConv1D(3, name="dw"), L.Conv1D(5, 2, name="c")),
    "batch_norm_3d": lambda: _model(
        (5, 4), L.Dense(6, name="a"), L.BatchNormalization(), L.Dense(7, name="c")),
    "group_norm_instance": lambda: _model(
        (5, 5, 3), L.Conv2D(6, 2, name="a"), L.GroupNormalization(groups=-1), L.Conv2D(5, 2, name="c")),
    "prelu": lambda: _model((5, 4), L.Dense(6, name="a"), L.PReLU(), L.Dense(7, name="c")),
    "rescaling": lambda: _model((5, 4), L.Dense(6, name="a"), L.Rescaling(0.5, 1.0), L.Dense(7, name="c")),
    "layer_norm_over_time": lambda: _model(
        (5, 4), L.Dense(6, name="a"), L.LayerNormalization(axis=1), L.Dense(7, name="c")),
}


# Dead channels carry a constant. It folds into the next bias unless the next
# layer meets it with zero padding (causal, transposed, 'same') or makes it vary
# over positions (PReLU and LayerNormalization(axis=1) have per-position weights).
KEPT_WHEN_DEAD = {"conv1d_causal": 6, "conv2d_transpose": 6, "conv1d_transpose": 6,
                  "separable1d": 6, "prelu": 6, "layer_norm_over_time": 6}


def _width(model, name):
    layer = model.get_layer(name)
    return getattr(layer, "filters", None) or getattr(layer, "units", None) or layer.kernel.shape[-1]


def _inputs(model, seed=1):
    return np.random.default_rng(seed).standard_normal((4, *model.input_shape[1:])).astype("float32")


@pytest.mark.parametrize("case", sorted(CASES))
def test_rule_axes_by_clustering_and_dead_channels(case):
    model = CASES[case]()
    _randomise(model)
    x = _inputs(model)
    plan = ksm.ClusterPlan.from_model(model, keep_ratio=0.5, method="even")
    clustered = {name for g in plan.groups for name in g.producers}
    assert "a" in clustered, plan
    plan.equalize(model)
    merged = ksm.strip(model, plan)
    assert max_relative_error(model, merged, x) <= 1e-5
    kept = {name: g.kept for g in plan.groups for name in g.producers}
    for name in clustered - {"first", "last"}:
        assert _width(merged, name) == kept[name]

    model = CASES[case]()
    _randomise(model, seed=2)
    producer = model.get_layer("a")
    kernel = keras.ops.convert_to_numpy(producer.kernel).copy()
    kernel[..., [0, 3]] = 0.0  # two dead channels: constants relu-free, folded or kept
    producer.kernel.assign(kernel)
    stripped = ksm.strip(model)
    assert max_relative_error(model, stripped, x) <= 1e-5
    assert _width(stripped, "a") == KEPT_WHEN_DEAD.get(case, 4)


def test_padded_readers_keep_nonzero_dead_channels_and_drop_zero_ones():
    # A constant channel cannot be folded through zero padding; a zero one needs no fold.
    for case in ("conv1d_causal", "conv2d_transpose", "separable1d"):
        model = CASES[case]()
        _randomise(model, seed=3)
        producer = model.get_layer("a")
        kernel = keras.ops.convert_to_numpy(producer.kernel).copy()
        kernel[..., [0, 3]] = 0.0
        producer.kernel.assign(kernel)
        bias = keras.ops.convert_to_numpy(producer.bias).copy()
        bias[3] = 0.0  # channel 3 carries exactly zero
        producer.bias.assign(bias)
        stripped = ksm.strip(model)
        assert _width(stripped, "a") == 5, case
        assert max_relative_error(model, stripped, _inputs(model)) <= 1e-5


def test_a_channel_whose_separable_pointwise_rows_are_zero_is_unread():
    model = CASES["separable1d"]()
    _randomise(model)
    pointwise = model.get_layer("b").pointwise_kernel
    value = keras.ops.convert_to_numpy(pointwise).copy()
    value[:, 2, :] = 0.0  # the depthwise half still holds channel 2's filter
    pointwise.assign(value)
    stripped = ksm.strip(model)
    assert _width(stripped, "a") == 5
    assert max_relative_error(model, stripped, _inputs(model)) <= 1e-5


def test_transposed_convolution_slices_output_axis_minus_two():
    model = CASES["conv2d_transpose"]()
    _randomise(model)
    plan = ksm.ClusterPlan.from_model(model, 0.5, method="even", layers=["b"])
    by_path = {m.path: m.axis for m in plan.merges}
    assert by_path == {"b/kernel": -2, "b/bias": 0}
    plan.equalize(model)
    old = keras.ops.convert_to_numpy(model.get_layer("c").kernel)  # (3, 3, 8, 5)
    stripped = ksm.strip(model, plan)
    assert stripped.get_layer("b").kernel.shape == (3, 3, 4, 6)
    np.testing.assert_allclose(  # the reader sums the rows of each cluster (0,1), (2,3), ...
        keras.ops.convert_to_numpy(stripped.get_layer("c").kernel),
        old.reshape(3, 3, 4, 2, 5).sum(axis=3), rtol=1e-6)


def test_einsum_dense_reads_and_writes_through_its_equation():
    rule = rules.rule_for(L.EinsumDense("abc,cd->abd", output_shape=(None, 8)))
    layer = L.EinsumDense("abc,cde->abde", output_shape=(None, 2, 8), bias_axes="de")
    layer.build((None, 5, 4))
    assert rule.out_slots(layer) == [rules.Slot("kernel", 2), rules.Slot("bias", -1)]
    assert rule.in_slots(layer) == [(0, "inputs", [rules.Slot("kernel", 0, rules.SUM)])]
    assert rule.kernel_positions(layer, {0: (None, 5, 4)}, [(None, 5, 2, 8)]) == {"kernel": 5}
    mixing = L.EinsumDense("abc,bd->adc", output_shape=(None, 7, 4))
    assert "does not map" in rule.refusal(mixing)


@pytest.mark.parametrize("layer, reason", [
    (L.LayerNormalization(), "normalises over the channel axis"),
    (L.GroupNormalization(groups=2), "normalises over groups of 3 channels"),
    (L.Activation("softmax"), "mixes channels"),
    (L.Rescaling([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), "per-channel scale"),
    (L.Conv1D(6, 1, data_format="channels_first"), "channels_first"),
])
def test_channel_mixing_layers_are_left_whole_and_named(layer, reason):
    inputs = keras.Input((5, 4))
    x = L.Dense(6, name="a")(inputs)
    x = layer(x)
    x = L.Dense(7, name="c")(L.Flatten()(x))
    model = keras.Model(inputs, L.Dense(3)(x))
    _randomise(model)
    producer = model.get_layer("a")
    kernel = keras.ops.convert_to_numpy(producer.kernel).copy()
    kernel[:, 1] = 0.0
    producer.kernel.assign(kernel)
    stripped = ksm.strip(model)
    assert stripped.get_layer("a").units == 6
    assert max_relative_error(model, stripped, _inputs(model)) <= 1e-6
    graph = ChannelGraph(model)
    assert any(reason in r for r in graph.unsupported), graph.unsupported
    with pytest.raises(ValueError, match=reason):
        ksm.ClusterPlan.from_model(model, 0.5, layers=["a"])


def test_subclass_with_its_own_call_is_not_followed():
    class Doubled(L.Dense):
        def call(self, x):
            return super().call(x) * 2.0

    assert "overrides `call`" in rules.classify(Doubled(4))[1]
    assert rules.classify(L.Dense(4)) == (rules.PRODUCER, None)


def test_kernel_positions_per_family():
    conv = L.Conv2D(4, 3, padding="same")
    transpose = L.Conv2DTranspose(4, 3, strides=2)
    lstm = L.LSTM(5)
    lstm.build((None, 7, 3))
    assert rules.rule_for(conv).kernel_positions(conv, {0: (None, 8, 8, 3)}, [(None, 8, 8, 4)]) == {
        "kernel": 64}
    assert rules.rule_for(transpose).kernel_positions(
        transpose, {0: (None, 5, 5, 3)}, [(None, 11, 11, 4)]) == {"kernel": 25}  # input positions
    assert rules.rule_for(lstm).kernel_positions(lstm, {0: (None, 7, 3)}, [(None, 5)]) == {
        "lstm_cell/kernel": 7, "lstm_cell/recurrent_kernel": 7}
