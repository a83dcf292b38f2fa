"""strip: dead units leave, the function stays (relative error <= 1e-4)."""

import keras
import numpy as np
import pytest

import keras_sparse_momentum as ksm
from keras_sparse_momentum.surgery.strip import max_relative_error
import support


def _probe(shape, n=16, seed=1):
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype("float32")


def _randomize(model, seed=0):
    """Nonzero biases and BatchNorm statistics, so folding constants matters."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights(
                [rng.uniform(0.5, 1.5, n), rng.normal(0, 0.5, n), rng.normal(0, 0.5, n),
                 rng.uniform(0.5, 2.0, n)]
            )
        elif getattr(layer, "bias", None) is not None:
            layer.bias.assign(rng.normal(0, 0.5, layer.bias.shape).astype("float32"))


def _zero(variable, index, axis=-1):
    value = keras.ops.convert_to_numpy(variable).copy()
    np.moveaxis(value, axis, 0)[index] = 0.0
    variable.assign(value)


def _units(model):
    return {
        layer.name: (getattr(layer, "units", None) or getattr(layer, "filters", None))
        for layer in model.layers
        if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D))
    }


def test_mlp_dead_and_unread_units_removed_bias_folded():
    model = support.mlp(inputs=6, hidden=(8, 5), outputs=3)
    _randomize(model)
    first, second, last = model.layers
    _zero(first.kernel, [1, 4])  # incoming weights zero: units 1, 4 output relu(bias)
    _zero(second.kernel, [2], axis=0)  # hidden unit 2 of layer 1 is never read
    _zero(last.kernel, [0], axis=0)  # unit 0 of layer 2 is never read
    before = [keras.ops.convert_to_numpy(w).copy() for w in model.weights]

    slim = ksm.strip(model)

    assert [l.units for l in slim.layers if isinstance(l, keras.layers.Dense)] == [5, 4, 3]
    x = _probe((6,))
    assert max_relative_error(model, slim, x) <= 1e-5
    # The source is untouched.
    for old, new in zip(before, model.weights):
        np.testing.assert_array_equal(old, keras.ops.convert_to_numpy(new))
    assert slim is not model and slim.name == f"{model.name}_stripped"


def test_cnn_batchnorm_flatten_dense():
    inputs = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(6, 3, padding="valid")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(4)(x)
    model = keras.Model(inputs, outputs)
    _randomize(model)
    conv = model.layers[1]
    _zero(conv.kernel, [0, 3, 5])

    slim = ksm.strip(model)

    slim_conv = [l for l in slim.layers if isinstance(l, keras.layers.Conv2D)][0]
    slim_dense = [l for l in slim.layers if isinstance(l, keras.layers.Dense)][0]
    assert slim_conv.filters == 3
    assert slim_dense.kernel.shape == (3 * 3 * 3, 4)  # Flatten rows sliced per position
    assert max_relative_error(model, slim, _probe((8, 8, 2))) <= 1e-5
    assert slim.count_params() < model.count_params()


def _residual(filters=4):
    inputs = keras.Input((6, 6, 3))
    stem = keras.layers.Conv2D(filters, 1, name="stem")(inputs)
    a = keras.layers.Conv2D(filters, 1, name="a")(stem)
    a = keras.layers.ReLU()(a)
    b = keras.layers.Conv2D(filters, 1, name="b")(a)
    added = keras.layers.Add()([stem, b])
    pooled = keras.layers.GlobalAveragePooling2D()(added)
    outputs = keras.layers.Dense(2, name="head")(pooled)
    return keras.Model(inputs, outputs)


def test_residual_channel_goes_only_when_dead_on_every_branch():
    model = _residual()
    _randomize(model)
    _zero(model.get_layer("stem").kernel, [1, 2])
    _zero(model.get_layer("b").kernel, [1])  # channel 1 is constant on both sides of the Add

    slim = ksm.strip(model)

    # Channel 1 is gone from the tied pair (stem, b); channel 2 still flows through b.
    assert slim.get_layer("stem").filters == 3 and slim.get_layer("b").filters == 3
    assert max_relative_error(model, slim, _probe((6, 6, 3))) <= 1e-5


def test_a_channel_zero_in_one_residual_branch_only_stays():
    model = _residual()
    _randomize(model)
    _zero(model.get_layer("stem").kernel, [1])
    _zero(model.get_layer("b").kernel, [1, 3])  # channel 3 still flows from the stem
    slim = ksm.strip(model)
    assert slim.get_layer("stem").filters == 3 and slim.get_layer("b").filters == 3
    assert max_relative_error(model, slim, _probe((6, 6, 3))) <= 1e-5


def test_concatenate_offsets():
    inputs = keras.Input((5,))
    left = keras.layers.Dense(4, activation="relu", name="left")(inputs)
    right = keras.layers.Dense(3, activation="tanh", name="right")(inputs)
    joined = keras.layers.Concatenate()([left, right])
    outputs = keras.layers.Dense(2, name="head")(joined)
    model = keras.Model(inputs, outputs)
    _randomize(model)
    _zero(model.get_layer("right").kernel, [0, 2])
    _zero(model.get_layer("head").kernel, [1], axis=0)  # left unit 1 never read

    slim = ksm.strip(model)

    assert slim.get_layer("left").units == 3 and slim.get_layer("right").units == 1
    assert slim.get_layer("head").kernel.shape == (4, 2)
    assert max_relative_error(model, slim, _probe((5,))) <= 1e-5


class _Scale(keras.layers.Layer):
    """A layer strip does not know: channels behind it must stay."""

    def call(self, x):
        return x * 2.0


def test_unknown_layer_is_left_alone():
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(6, activation="relu", name="hidden")(inputs)
    scaled = _Scale()(hidden)
    outputs = keras.layers.Dense(3, name="head")(scaled)
    model = keras.Model(inputs, outputs)
    _randomize(model)
    _zero(model.get_layer("hidden").kernel, [0, 1])

    slim = ksm.strip(model)

    assert slim.get_layer("hidden").units == 6
    assert max_relative_error(model, slim, _probe((4,))) <= 1e-6


def test_pruned_model_strips_to_fewer_parameters_same_outputs():
    model = support.mlp(inputs=16, hidden=(64, 32), outputs=4)
    x, y = support.classification_data(n=256)
    support.compile_for_test(model, keras.optimizers.SGD(0.05, momentum=0.9))
    model.fit(x, y, epochs=2, batch_size=32, verbose=0,
              callbacks=[ksm.PruneToRatio(compression=40, scope="global")])
    report = ksm.sparsity_report(model)
    assert report.nonzeros == int(np.ceil(report.prunable / 40))

    slim = ksm.strip(model)

    assert slim.count_params() < model.count_params()
    assert max_relative_error(model, slim, x[:64]) <= 1e-4
    # Weights into unread units and out of constant units go too.
    assert ksm.sparsity_report(slim).nonzeros <= report.nonzeros


def test_subclassed_model_rejected_with_reason():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3)

        def call(self, x):
            return self.dense(x)

    model = Net()
    model(np.zeros((1, 4), "float32"))
    with pytest.raises(ValueError, match="subclassed|functional"):
        ksm.strip(model)


def test_derived_spaces_map_changed_and_unchanged_parts():
    inputs = keras.Input((5,))
    parts = [keras.layers.Dense(width, activation="relu", name=name)(inputs)
             for name, width in (("first", 2), ("middle", 3), ("last", 4))]
    x = keras.layers.Concatenate()(parts)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
    _randomize(model)
    _zero(model.get_layer("middle").kernel, [1])  # only the middle part changes
    slim = ksm.strip(model)
    assert [slim.get_layer(n).units for n in ("first", "middle", "last")] == [2, 2, 4]
    assert slim.get_layer("head").kernel.shape == (8, 2)
    assert max_relative_error(model, slim, _probe((5,))) <= 1e-5


def test_a_pinned_flatten_pins_its_source():
    inputs = keras.Input((4, 4, 2))
    x = keras.layers.Conv2D(3, 2, name="conv")(inputs)
    x = _Scale()(keras.layers.Flatten()(x))  # an unknown layer reads the flattened rows
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
    _randomize(model)
    _zero(model.get_layer("conv").kernel, [0])
    slim = ksm.strip(model)
    assert slim.get_layer("conv").filters == 3
    assert max_relative_error(model, slim, _probe((4, 4, 2))) <= 1e-6


def test_a_shared_reader_seeing_two_constants_keeps_the_channel():
    inputs = keras.Input((5,))
    a = keras.layers.Dense(4, activation="relu", name="a")(inputs)
    b = keras.layers.Dense(4, activation="relu", name="b")(inputs)
    shared = keras.layers.Dense(3, name="shared")
    x = keras.layers.Concatenate()([shared(a), shared(b)])
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
    _randomize(model)
    _zero(model.get_layer("a").kernel, [2])
    _zero(model.get_layer("b").kernel, [2])  # channel 2: relu(bias) of a, another one of b
    model.get_layer("a").bias.assign(np.full(4, 0.7, "float32"))
    model.get_layer("b").bias.assign(np.full(4, 0.2, "float32"))
    slim = ksm.strip(model)
    assert slim.get_layer("a").units == 4
    assert max_relative_error(model, slim, _probe((5,))) <= 1e-5
    model.get_layer("b").bias.assign(np.full(4, 0.7, "float32"))  # the same constant: folds
    assert ksm.strip(model).get_layer("a").units == 3


def test_a_bias_created_for_a_fold_follows_the_readers_own_output_channels():
    inputs = keras.Input((5,))
    x = keras.layers.Dense(6, activation="relu", name="a")(inputs)
    x = keras.layers.Dense(5, activation="relu", use_bias=False, name="b")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
    _randomize(model)
    _zero(model.get_layer("a").kernel, [0, 1])  # relu(bias): folded into b, which gets a bias
    _zero(model.get_layer("head").kernel, [3], axis=0)  # b's unit 3 is never read
    slim = ksm.strip(model)
    assert slim.get_layer("b").use_bias and slim.get_layer("b").bias.shape == (4,)
    assert max_relative_error(model, slim, _probe((5,))) <= 1e-5


def test_an_input_no_kernel_reads_pins_its_producer():
    inputs = keras.Input((4, 6))
    x = keras.layers.Dense(6, name="x")(inputs)
    mask = keras.layers.Dense(4, activation="sigmoid", name="mask_maker")(inputs)
    y = keras.layers.MultiHeadAttention(2, 3, name="mha")(x, x, attention_mask=mask)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(keras.layers.Flatten()(y)))
    _randomize(model)
    _zero(model.get_layer("mask_maker").kernel, [1])
    slim = ksm.strip(model)
    assert slim.get_layer("mask_maker").units == 4
    assert max_relative_error(model, slim, _probe((4, 6))) <= 1e-5


@pytest.mark.parametrize("size, folds", [(3, False), (1, True)])
def test_a_tiny_constant_meeting_zero_padding_is_kept_and_folds_where_no_padding(size, folds):
    """A dead filter's channel after BatchNorm carries relu(beta), which two
    training steps leave near 1e-7: a 'same' 3x3 convolution makes a border
    effect of it (kept), a 1x1 one reads it as a constant (folded); either way
    the function is unchanged in float64, where an exact strip leaves no error
    (DenseNet121 after AOFP lost 1.9e-6 when an absolute tolerance took that
    border effect for rounding noise)."""
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 1, use_bias=False, name="a", dtype="float64")(inputs)
    x = keras.layers.BatchNormalization(name="bn", dtype="float64")(x)
    x = keras.layers.ReLU(dtype="float64")(x)
    x = keras.layers.Conv2D(5, size, padding="same", name="b", dtype="float64")(x)
    model = keras.Model(inputs, x)
    _randomize(model)
    model.get_layer("bn").set_weights([np.ones(4), np.full(4, 3e-7), np.zeros(4), np.ones(4)])
    _zero(model.get_layer("a").kernel, [1])
    slim = ksm.strip(model)
    assert slim.get_layer("a").filters == (3 if folds else 4)
    probe = np.random.default_rng(0).standard_normal((4, 6, 6, 3))
    expected = keras.ops.convert_to_numpy(model(probe))
    assert np.max(np.abs(keras.ops.convert_to_numpy(slim(probe)) - expected)) <= 1e-15 * np.max(
        np.abs(expected))


def _exact_in_float64(model, slim, shape):
    probe = np.random.default_rng(0).standard_normal((4, *shape))
    expected = keras.ops.convert_to_numpy(model(probe))
    error = np.max(np.abs(keras.ops.convert_to_numpy(slim(probe)) - expected))
    assert error <= 1e-15 * np.max(np.abs(expected))


@pytest.mark.parametrize("size, folds", [(3, False), (1, True)])
def test_a_reader_output_that_ignores_the_dead_channel_does_not_decide_the_fold(size, folds):
    """The reader's output 0 takes nothing from the dead channel (its kernel slice
    is zero, as pruning leaves it): an exactly zero response is constant, and
    constant by itself it does not excuse the border effect on the other outputs."""
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 1, activation="relu", name="a", dtype="float64")(inputs)
    x = keras.layers.Conv2D(5, size, padding="same", name="b", dtype="float64")(x)
    model = keras.Model(inputs, x)
    _randomize(model)
    _zero(model.get_layer("a").kernel, [1])
    model.get_layer("a").bias.assign([0.1, 0.5, -0.2, 0.3])  # channel 1 carries relu(0.5)
    kernel = keras.ops.convert_to_numpy(model.get_layer("b").kernel).copy()
    kernel[:, :, 1, 0] = 0.0
    model.get_layer("b").kernel.assign(kernel)
    slim = ksm.strip(model)
    assert slim.get_layer("a").filters == (3 if folds else 4)
    _exact_in_float64(model, slim, (6, 6, 3))


def test_zero_padding_of_a_sequence_is_a_border_effect_too():
    """(1, steps, channels) responses are judged over their steps, as images are."""
    inputs = keras.Input((8, 3))
    x = keras.layers.Conv1D(4, 1, activation="relu", name="a", dtype="float64")(inputs)
    x = keras.layers.Conv1D(5, 3, padding="same", name="b", dtype="float64")(x)
    model = keras.Model(inputs, x)
    _randomize(model)
    _zero(model.get_layer("a").kernel, [1])
    model.get_layer("a").bias.assign([0.1, 0.5, -0.2, 0.3])
    slim = ksm.strip(model)
    assert slim.get_layer("a").filters == 4
    _exact_in_float64(model, slim, (8, 3))


def test_a_reader_without_bias_folds_keeps_a_dead_channel_unless_zero_or_unread():
    inputs = keras.Input((8, 3))
    x = keras.layers.Conv1D(4, 1, activation="relu", name="a", dtype="float64")(inputs)
    x = keras.layers.Conv1D(2, 3, padding="causal", name="b", dtype="float64")(x)
    model = keras.Model(inputs, x)
    _randomize(model)
    _zero(model.get_layer("a").kernel, [1, 2, 3])
    model.get_layer("a").bias.assign([0.1, 0.5, 0.4, -0.3])  # channel 3 carries relu(-0.3) = 0
    _zero(model.get_layer("b").kernel, [2], axis=1)  # channel 2 is never read: no fold needed
    slim = ksm.strip(model)
    assert slim.get_layer("a").filters == 2  # 1 stays: a causal Conv1D takes no bias fold
    _exact_in_float64(model, slim, (8, 3))


def test_a_layer_with_every_channel_dead_keeps_one():
    model = support.mlp(inputs=4, hidden=(3,), outputs=2)
    _randomize(model)
    first = model.layers[0]
    _zero(first.kernel, [0, 1, 2])  # every unit outputs relu(bias)
    slim = ksm.strip(model)
    assert [l.units for l in slim.layers] == [1, 2]
    assert max_relative_error(model, slim, _probe((4,))) <= 1e-6


def test_a_float64_model_folds_in_float64():
    """The constants are computed in the model's float64: a Dense fold is exact
    (it was off by float32 rounding, 3.7e-9), and a convolution reading a dead
    convolution directly no longer fails on mixed float32 and float64."""
    inputs = keras.Input((5,))
    x = keras.layers.Dense(4, activation="relu", name="a", dtype="float64")(inputs)
    x = keras.layers.Dense(3, name="b", dtype="float64")(x)
    model = keras.Model(inputs, x)
    _randomize(model)
    _zero(model.get_layer("a").kernel, [1])
    model.get_layer("a").bias.assign([0.1, 0.1234567891234, 0.2, 0.3])
    slim = ksm.strip(model)
    assert slim.get_layer("a").units == 3
    _exact_in_float64(model, slim, (5,))


def test_constancy_is_judged_per_output_channel_not_against_the_largest():
    """Output 0 reads the dead channel through its centre tap only (a constant
    10^7 times larger than the rest); the others see the zero padding's border
    effect, which is small next to output 0 but not next to themselves: kept."""
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 1, activation="relu", name="a", dtype="float64")(inputs)
    x = keras.layers.Conv2D(5, 3, padding="same", name="b", dtype="float64")(x)
    model = keras.Model(inputs, x)
    _randomize(model)
    _zero(model.get_layer("a").kernel, [1])
    model.get_layer("a").bias.assign([0.1, 0.5, -0.2, 0.3])
    kernel = keras.ops.convert_to_numpy(model.get_layer("b").kernel).copy()
    kernel[:, :, 1, 0] = 0.0
    kernel[1, 1, 1, 0] = 1e7
    model.get_layer("b").kernel.assign(kernel)
    slim = ksm.strip(model)
    assert slim.get_layer("a").filters == 4
    _exact_in_float64(model, slim, (6, 6, 3))


def _shared_reader(bias_a, bias_b):
    """A shared reader seeing dead channel 2 of `a` and of `b`, in float64."""
    inputs = keras.Input((5,))
    a = keras.layers.Dense(4, activation="relu", name="a", dtype="float64")(inputs)
    b = keras.layers.Dense(4, activation="relu", name="b", dtype="float64")(inputs)
    shared = keras.layers.Dense(3, name="shared", dtype="float64")
    x = keras.layers.Concatenate(dtype="float64")([shared(a), shared(b)])
    model = keras.Model(inputs, keras.layers.Dense(2, name="head", dtype="float64")(x))
    _randomize(model)
    _zero(model.get_layer("a").kernel, [2])
    _zero(model.get_layer("b").kernel, [2])
    model.get_layer("a").bias.assign(np.full(4, bias_a))
    model.get_layer("b").bias.assign(np.full(4, bias_b))
    return model


@pytest.mark.parametrize("bias_a, bias_b", [(0.7, 0.7 * (1 + 5e-6)), (1e-9, 2e-9)])
def test_a_shared_reader_folds_only_constants_equal_to_a_millionth_relative(bias_a, bias_b):
    """Two constants 5e-6 apart (relative), or two tiny ones twice apart, are
    different constants: no absolute floor, no looser relative tolerance."""
    model = _shared_reader(bias_a, bias_b)
    slim = ksm.strip(model)
    assert slim.get_layer("a").units == 4
    _exact_in_float64(model, slim, (5,))
    assert ksm.strip(_shared_reader(bias_a, bias_a * (1 + 1e-8))).get_layer("a").units == 3


def test_a_dead_channel_carrying_zero_gives_a_bias_free_reader_no_bias():
    inputs = keras.Input((5,))
    x = keras.layers.Dense(4, activation="relu", name="a")(inputs)
    x = keras.layers.Dense(3, use_bias=False, name="b")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
    _randomize(model)
    _zero(model.get_layer("a").kernel, [1])
    model.get_layer("a").bias.assign([0.1, -0.5, 0.2, 0.3])  # unit 1 carries relu(-0.5) = 0
    slim = ksm.strip(model)
    assert slim.get_layer("a").units == 3
    assert not slim.get_layer("b").use_bias and len(slim.get_layer("b").weights) == 1
    assert max_relative_error(model, slim, _probe((5,))) <= 1e-6


def test_a_frozen_layer_without_zero_columns_strips_unchanged():
    model = keras.Sequential([keras.Input((4,)),
                              keras.layers.Dense(3, activation="relu", trainable=False),
                              keras.layers.Dense(2)])
    _randomize(model)
    slim = ksm.strip(model)
    assert [layer.units for layer in slim.layers] == [3, 2]
    assert max_relative_error(model, slim, _probe((4,))) <= 1e-6


def test_a_frozen_layers_dead_units_go_like_a_trained_layers():
    """Transfer learning freezes layers: their kernels still decide which units are dead."""
    model = keras.Sequential([keras.Input((4,)),
                              keras.layers.Dense(3, activation="relu", trainable=False),
                              keras.layers.Dense(2)])
    _randomize(model)
    _zero(model.layers[0].kernel, [1])
    model.layers[0].bias.assign([0.1, 0.0, 0.2])
    slim = ksm.strip(model)
    assert [layer.units for layer in slim.layers] == [2, 2]
    assert not slim.layers[0].trainable and slim.layers[1].trainable
    assert max_relative_error(model, slim, _probe((4,))) <= 1e-6


def test_a_frozen_residual_producer_keeps_the_channels_it_feeds():
    """Channel 1 is zero in b only: the frozen stem still carries it through the Add."""
    model = _residual()
    _randomize(model)
    model.get_layer("stem").trainable = False
    _zero(model.get_layer("b").kernel, [1])
    slim = ksm.strip(model)
    assert slim.get_layer("stem").filters == 4 and slim.get_layer("b").filters == 4
    assert max_relative_error(model, slim, _probe((6, 6, 3))) <= 1e-5
    _zero(model.get_layer("stem").kernel, [1])  # now dead on both sides of the Add
    slim = ksm.strip(model)
    assert slim.get_layer("stem").filters == 3 and slim.get_layer("b").filters == 3
    assert not slim.get_layer("stem").trainable
    assert max_relative_error(model, slim, _probe((6, 6, 3))) <= 1e-5


def test_inputs_that_pass_through_layers_before_the_first_kernel():
    """Flatten and BatchNormalization run on the inputs' own (zero) pattern first."""
    model = keras.Sequential([keras.Input((2, 2, 3)), keras.layers.BatchNormalization(),
                              keras.layers.Flatten(), keras.layers.Dense(6, activation="relu"),
                              keras.layers.Dense(3)])
    _randomize(model)
    _zero(model.layers[2].kernel, [0, 4])
    slim = ksm.strip(model)
    assert [layer.units for layer in slim.layers if isinstance(layer, keras.layers.Dense)] == [4, 3]
    assert max_relative_error(model, slim, _probe((2, 2, 3))) <= 1e-6


def test_a_reader_of_two_spaces_sums_the_folds_of_both():
    inputs = keras.Input((5,))
    left = keras.layers.Dense(4, activation="relu", name="left")(inputs)
    right = keras.layers.Dense(3, activation="tanh", name="right")(inputs)
    joined = keras.layers.Concatenate()([left, right])
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(joined))
    _randomize(model)
    _zero(model.get_layer("left").kernel, [1])
    _zero(model.get_layer("right").kernel, [0])
    model.get_layer("left").bias.assign([0.1, 0.6, 0.2, 0.3])  # relu(0.6) and tanh(bias) fold
    slim = ksm.strip(model)
    assert slim.get_layer("left").units == 3 and slim.get_layer("right").units == 2
    assert max_relative_error(model, slim, _probe((5,))) <= 1e-5


def test_batchnorm_called_with_training_true_is_left_whole_and_named():
    """`BatchNormalization()(x, training=True)` normalises with the batch's own statistics
    in inference too, so a dead channel's constant depends on the batch: not followed."""
    inputs = keras.Input((5,))
    x = keras.layers.Dense(4, activation="relu", name="hidden")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x, training=True)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
    _randomize(model)
    _zero(model.get_layer("hidden").kernel, [1])
    model.get_layer("hidden").bias.assign([0.1, 0.4, 0.2, 0.3])
    slim = ksm.strip(model)
    assert slim.get_layer("hidden").units == 4
    assert max_relative_error(model, slim, _probe((5,))) <= 1e-6
    whole = dict(slim.strip_report.left_whole)
    assert "training=True" in whole["bn"]
