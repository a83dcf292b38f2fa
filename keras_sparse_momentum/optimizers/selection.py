"""Exact global top-Q selection in O(N), for use inside a compiled train step.

GSM keeps the `Q` largest importance scores of all prunable weights active at
every step. Sorting (or `top_k` of size `Q`) costs O(N log N) and is slow under
XLA on CPU; instead the Q-th largest score is found by a two-pass radix select
on the IEEE-754 bits of the (non-negative) float32 scores: for non-negative
floats the int32 bit pattern is monotone in the value, so

1. a 65,536-bin histogram of the top 16 bits finds the bin holding the Q-th
   largest key, and
2. a 32,768-bin histogram of the low 15 bits of the keys inside that bin finds
   the key itself.

Both passes are one segment-sum each (keys outside the pass's bin, and exact
zeros, are dropped rather than piled into one hot bin, which would serialise
the scatter), so the cost is O(N) with no data-dependent loop, identical on every
replica given identical inputs, and XLA-compatible.

The returned threshold `t` is the exact Q-th largest score: `count(s >= t)` is
`Q` plus the number of further scores equal to `t` (ties).
"""

from keras import ops

_HIGH_BITS = 16
_LOW_BITS = 15
_HIGH_BINS = 1 << _HIGH_BITS
_LOW_BINS = 1 << _LOW_BITS


def _bin_of_rank(histogram, rank, already_above=0):
    """Largest bin `b` with `already_above + count(bins >= b) >= rank`.

    Returns the bin and the count of keys strictly above it.
    """
    at_or_above = ops.flip(ops.cumsum(ops.flip(histogram, 0)), 0) + already_above
    b = ops.sum(ops.cast(at_or_above >= rank, "int32")) - 1
    b = ops.maximum(b, 0)
    strictly_above = ops.take(at_or_above, b) - ops.take(histogram, b)
    return b, strictly_above


def _histogram(keys_list, bin_of, num_bins):
    """Sum over tensors of per-bin counts; `bin_of` maps keys to a bin or -1."""
    total = None
    for keys in keys_list:
        bins = ops.reshape(bin_of(keys), (-1,))
        counts = ops.segment_sum(ops.ones_like(bins), bins, num_segments=num_bins)
        total = counts if total is None else total + counts
    return total


def kth_largest(scores, k):
    """The exact `k`-th largest value among float32 scores >= 0.

    Args:
        scores: a tensor, or a list of tensors of any shapes, of scores >= 0
            (NaN ranks above +inf). The tensors are never concatenated: each
            contributes its own histogram, which avoids a copy of all scores.
        k: int scalar (Python or tensor), `1 <= k <= total size`.

    Returns:
        A float32 scalar `t` such that at least `k` scores are `>= t` and fewer
        than `k` are `> t`.
    """
    if not isinstance(scores, (list, tuple)):
        scores = [scores]
    keys_list = [ops.view(ops.cast(s, "float32"), "int32") for s in scores]
    k = ops.cast(k, "int32")
    # Exact zeros are common (dead units, constant-zero inputs) and would make
    # every scatter-add hit one bin; they are counted apart and their bin id
    # is -1, which segment_sum drops.
    zeros = sum(ops.sum(ops.cast(ops.equal(keys, 0), "int32")) for keys in keys_list)
    first_bin = ops.cast(ops.equal(ops.arange(_HIGH_BINS), 0), "int32")
    hist_high = _histogram(
        keys_list,
        lambda keys: ops.where(ops.equal(keys, 0), -1, ops.right_shift(keys, _LOW_BITS)),
        _HIGH_BINS,
    ) + first_bin * zeros
    b, above = _bin_of_rank(hist_high, k)
    hist_low = _histogram(
        keys_list,
        lambda keys: ops.where(
            ops.logical_and(
                ops.equal(ops.right_shift(keys, _LOW_BITS), b), ops.not_equal(keys, 0)
            ),
            ops.bitwise_and(keys, _LOW_BINS - 1),
            -1,
        ),
        _LOW_BINS,
    ) + first_bin[:_LOW_BINS] * zeros * ops.cast(ops.equal(b, 0), "int32")
    l, _ = _bin_of_rank(hist_low, k, already_above=above)
    key = ops.left_shift(b, _LOW_BITS) + l
    return ops.view(key, "float32")
