"""The O(N) radix select must return the exact k-th largest score."""

import keras
import numpy as np
import pytest

from keras_sparse_momentum.optimizers.selection import kth_largest
from support import jit

_xla = jit(kth_largest)


def _check(values, k, fn=kth_largest):
    t = float(fn(np.asarray(values, np.float32), np.int32(k)))
    assert np.sum(values > t) < k <= np.sum(values >= t), (k, t)
    return t


@pytest.mark.parametrize("n", [1, 7, 1000, 70_001])
def test_matches_sorting_for_every_kind_of_k(n):
    rng = np.random.default_rng(n)
    values = np.abs(rng.standard_normal(n) * rng.standard_normal(n)).astype("float32")
    for k in sorted({min(n, 2), 1, max(1, n // 125), max(1, n // 2), max(1, n - 1), n}):
        t = _check(values, k)
        assert t == np.sort(values)[::-1][k - 1]


def test_ties_zeros_and_denormals():
    rng = np.random.default_rng(0)
    values = np.abs(rng.standard_normal(5000)).astype("float32")
    values[:1500] = 0.0
    values[1500:2500] = values[3000]  # a block of ties
    values[2500:2600] = np.float32(1e-41)  # denormals
    for k in [1, 10, 2400, 2450, 2600, 3600, 4999, 5000]:
        _check(values, k)
        _check(values, k, _xla)


def test_the_smallest_subnormals_are_not_taken_for_zeros():
    # float32 bit patterns 1 and 2 (1.4e-45, 2.8e-45) sit next to the zeros' pattern 0.
    tiny = np.array([1, 2], np.int32).view(np.float32)
    values = np.array([0.0, tiny[0], 0.0, tiny[1], 0.0, tiny[0]], np.float32)
    for k, expected in [(1, tiny[1]), (2, tiny[0]), (3, tiny[0]), (4, 0.0), (6, 0.0)]:
        for fn in (kth_largest, _xla):
            assert float(fn(keras.ops.convert_to_tensor(values), k)) == expected, (k, fn)


def test_nan_and_inf_rank_above_everything():
    values = np.array([np.nan, 1.0, 2.0, np.inf, 0.0], np.float32)
    assert np.isnan(float(kth_largest(values, 1)))
    assert float(kth_largest(values, 2)) == np.inf
    assert float(kth_largest(values, 3)) == 2.0


def test_list_of_tensors_equals_concatenation_and_xla_equals_graph():
    rng = np.random.default_rng(1)
    parts = [np.abs(rng.standard_normal(s)).astype("float32") for s in [(30, 20), (20,), (3, 3, 4, 5)]]
    flat = np.concatenate([p.ravel() for p in parts])
    for k in [1, 50, 777, flat.size]:
        expected = np.sort(flat)[::-1][k - 1]
        assert float(kth_largest(parts, k)) == expected
        assert float(_xla(parts, np.int32(k))) == expected
