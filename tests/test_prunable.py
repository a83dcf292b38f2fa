"""The shared pruning rule: what is prunable, Q = ceil(N / C), and the exact global cut.

The cut is compared with `support.top_magnitude_masks`, an independent full sort,
on values full of ties, so that it is checked *which* weights survive, not only
how many.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_sparse_momentum import prunable
from support import mlp, top_magnitude_masks


def _tied_arrays(seed=0):
    """Three arrays of small integers: most magnitudes are tied with many others."""
    rng = np.random.default_rng(seed)
    return [rng.integers(-3, 4, shape).astype("float32") for shape in [(6, 5), (7,), (2, 3, 4)]]


@pytest.mark.parametrize("keep", [0, 1, 5, 17, 30, 41, 50, 61, 200])
def test_global_cut_matches_an_independent_ranking_with_ties(keep):
    arrays = _tied_arrays()
    flat = np.concatenate([a.ravel() for a in arrays])
    # Some of these `keep` values fall inside a block of tied magnitudes.
    masks = prunable.global_magnitude_masks(arrays, keep)
    for got, want, a in zip(masks, top_magnitude_masks(arrays, keep), arrays):
        assert got.shape == a.shape and got.dtype == bool
        np.testing.assert_array_equal(got, want)
    assert sum(int(m.sum()) for m in masks) == min(keep, np.count_nonzero(flat))


def test_ties_go_to_the_earlier_variable_then_the_lower_index():
    arrays = [np.array([[1.0, 2.0], [2.0, 1.0]]), np.array([[2.0, 3.0]])]
    masks = prunable.global_magnitude_masks(arrays, 3)
    np.testing.assert_array_equal(masks[0], [[False, True], [True, False]])
    np.testing.assert_array_equal(masks[1], [[False, True]])
    masks = prunable.global_magnitude_masks(arrays, 2)  # 3, then the first 2
    np.testing.assert_array_equal(masks[0], [[False, True], [False, False]])
    np.testing.assert_array_equal(masks[1], [[False, True]])


def test_negative_values_rank_by_magnitude():
    arrays = [np.array([-5.0, 1.0, -0.5, 4.0]), np.array([[-3.0, 2.0]])]
    masks = prunable.global_magnitude_masks(arrays, 3)
    np.testing.assert_array_equal(masks[0], [True, False, False, True])
    np.testing.assert_array_equal(masks[1], [[True, False]])


def test_apply_cut_zeroes_the_rest_in_place_and_keeps_the_values():
    arrays = _tied_arrays(1)
    variables = [keras.Variable(a) for a in arrays]
    prunable.apply_global_magnitude_cut(variables, 20)
    for variable, a, mask in zip(variables, arrays, top_magnitude_masks(arrays, 20)):
        np.testing.assert_array_equal(variable.numpy(), np.where(mask, a, 0))
        assert variable.dtype == "float32"


@pytest.mark.parametrize("total, compression, sparsity, expected", [
    (100, 10, None, 10), (101, 10, None, 11), (100, None, 0.9, 10), (100, None, 0.0, 100),
    (1000, 3, None, 334), (7, 1000, None, 1), (50, None, 0.98, 1), (50, None, 0.99, 1),
    (10, 1.0, None, 10), (266200, 60, None, 4437),
])
def test_kept_count_is_ceil_n_over_c(total, compression, sparsity, expected):
    assert prunable.kept_count(total, compression, sparsity) == expected


def test_validate_ratio_returns_the_compression_and_names_bad_arguments():
    assert prunable.validate_ratio(4, None, "X") == 4.0
    assert prunable.validate_ratio(None, 0.75, "X") == pytest.approx(4.0)
    assert prunable.validate_ratio(1, None, "X") == 1.0
    assert prunable.validate_ratio(None, 0.0, "X") == 1.0
    for compression, sparsity, match in [
        (None, None, "X needs exactly one of `compression`"),
        (2, 0.5, "X needs exactly one of `compression`"),
        (0.99, None, "X: `compression` must be a finite number >= 1"),
        (math.inf, None, "`compression` must be a finite number >= 1"),
        ("2", None, "`compression` must be a finite number >= 1"),
        (None, 1.0, r"X: `sparsity` must be a number in \[0, 1\)"),
        (None, -0.01, r"`sparsity` must be a number in \[0, 1\)"),
        (None, "0.5", r"`sparsity` must be a number in \[0, 1\)"),
    ]:
        with pytest.raises(ValueError, match=match):
            prunable.validate_ratio(compression, sparsity, "X")


def test_default_rule_takes_layer_kernels_of_rank_two_or_more():
    model = keras.Sequential([
        keras.Input((6, 6, 2)),
        keras.layers.Conv2D(3, 3),
        keras.layers.DepthwiseConv2D(3),
        keras.layers.SeparableConv2D(4, 1),
        keras.layers.BatchNormalization(),
        keras.layers.Flatten(),
        keras.layers.Dense(2),
    ])
    chosen = [v.path for v in prunable.prunable_variables(model)]
    assert [p.split("/")[-1] for p in chosen] == [
        "kernel", "kernel", "depthwise_kernel", "pointwise_kernel", "kernel"]
    assert all(prunable.is_default_prunable(v) == (v.path in chosen) for v in model.weights)
    embedding = keras.layers.Embedding(10, 4)
    embedding.build((None,))
    recurrent = keras.layers.SimpleRNN(3)
    recurrent.build((None, 5, 2))
    assert not any(prunable.is_default_prunable(v) for v in embedding.weights)
    assert [v.name for v in recurrent.weights if prunable.is_default_prunable(v)] == ["kernel"]
    assert not prunable.is_default_prunable(keras.Variable(np.ones(3), name="kernel"))
    # A raw TensorFlow variable is named 'dense/kernel:0'.
    assert prunable.is_default_prunable(tf.Variable(np.ones((2, 2)), name="dense/kernel"))
    assert not prunable.is_default_prunable(tf.Variable(np.ones((2, 2)), name="dense/bias"))


def test_a_callable_selects_and_anything_else_is_refused():
    model = mlp()
    biases = prunable.prunable_variables(model, lambda v: v.name == "bias")
    assert [v.name for v in biases] == ["bias"] * 3
    assert prunable.resolve(None) is prunable.is_default_prunable
    with pytest.raises(ValueError, match=r"^`prunable` must be None \(layer kernels of rank >= 2\) "
                       r"or a callable `prunable\(variable\) -> bool`\. Received: prunable='kernel'$"):
        prunable.resolve("kernel")
    with pytest.raises(ValueError, match=r"Model 'nothing' has no prunable variables: .*bias.* "
                       r"kernels of Dense/Conv layers\)\. Build the model first, or pass "
                       r"`prunable=callable`\.$"):
        prunable.prunable_variables(mlp(name="nothing"), lambda v: False)
    norms = keras.Sequential([keras.Input((3,))] + [keras.layers.BatchNormalization()
                                                     for _ in range(5)])
    with pytest.raises(ValueError) as error:  # names the first 8 of its 10 variables
        prunable.prunable_variables(norms)
    assert str(error.value).count("gamma") + str(error.value).count("beta") == 8
