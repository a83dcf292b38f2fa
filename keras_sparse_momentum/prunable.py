"""Which variables a pruning method may zero: one rule shared by every tool.

By default a variable is prunable when it is the kernel of a Dense, Conv,
DepthwiseConv, SeparableConv or EinsumDense-like layer: its name is one of
`kernel`, `depthwise_kernel`, `pointwise_kernel` and it has rank >= 2. Biases,
normalisation parameters, embeddings and recurrent kernels are never pruned
unless the user says so with a callable `prunable(variable) -> bool`.
"""

import math
import typing

import keras
import numpy as np

KERNEL_NAMES = ("kernel", "depthwise_kernel", "pointwise_kernel")


def is_default_prunable(variable):
    """The default rule: a layer kernel of rank >= 2."""
    name = variable.name.split("/")[-1].split(":")[0]
    return name in KERNEL_NAMES and len(variable.shape) >= 2


def resolve(prunable):
    """Return the predicate for a `prunable` argument (None or a callable)."""
    if prunable is None:
        return is_default_prunable
    if not callable(prunable):
        raise ValueError(
            "`prunable` must be None (layer kernels of rank >= 2) or a callable "
            f"`prunable(variable) -> bool`. Received: prunable={prunable!r}"
        )
    return prunable


def prunable_variables(model, prunable=None):
    """The model's trainable variables selected by `prunable`, in model order.

    Raises:
        ValueError: if nothing is prunable, naming what the model holds.
    """
    predicate = resolve(prunable)
    variables = [v for v in model.trainable_variables if predicate(v)]
    if not variables:
        names = [v.path for v in model.trainable_variables][:8]
        raise ValueError(
            f"Model '{model.name}' has no prunable variables: none of its "
            f"trainable variables {names} is selected by `prunable` (default: "
            "kernels of Dense/Conv layers). Build the model first, or pass "
            "`prunable=callable`."
        )
    return variables


def kept_count(total, compression=None, sparsity=None):
    """Q = ceil(N / C): how many of `total` weights stay nonzero."""
    if compression is None:
        compression = 1.0 / (1.0 - sparsity)
    # Rounding absorbs float noise such as 100 / (1 / (1 - 0.9)) = 10.000000000000002.
    return max(1, min(total, math.ceil(round(total / compression, 6))))


def validate_ratio(compression, sparsity, owner):
    """Check that exactly one of compression (C >= 1) / sparsity ([0, 1)) is set.

    Returns the compression ratio as a float.
    """
    if (compression is None) == (sparsity is None):
        raise ValueError(
            f"{owner} needs exactly one of `compression` (C >= 1) or `sparsity` "
            f"(in [0, 1)). Received: compression={compression}, "
            f"sparsity={sparsity}"
        )
    if compression is not None:
        if not isinstance(compression, (int, float)) or not (
            1 <= compression < float("inf")
        ):
            raise ValueError(
                f"{owner}: `compression` must be a finite number >= 1. "
                f"Received: compression={compression!r}"
            )
        return float(compression)
    if not isinstance(sparsity, (int, float)) or not (0 <= sparsity < 1):
        raise ValueError(
            f"{owner}: `sparsity` must be a number in [0, 1). "
            f"Received: sparsity={sparsity!r}"
        )
    return 1.0 / (1.0 - float(sparsity))


def global_magnitude_masks(arrays, keep):
    """Boolean masks keeping exactly `keep` entries of largest |value| overall.

    Ties at the threshold are broken deterministically: the earlier variable,
    then the lower flat index, wins. Uses one O(N) partition, not a sort.
    If fewer than `keep` entries are nonzero, zeros are never "kept" beyond
    what they already are (the masks keep every nonzero entry).
    """
    flat = np.concatenate([np.abs(np.asarray(a, np.float32)).ravel() for a in arrays])
    total = flat.size
    keep = int(min(max(keep, 0), total))
    if keep == total:
        keep_flat = np.ones(total, bool)
    elif keep == 0:
        keep_flat = np.zeros(total, bool)
    else:
        threshold = np.partition(flat, total - keep)[total - keep]
        keep_flat = flat > threshold
        ties = np.flatnonzero(flat == threshold)
        keep_flat[ties[: keep - int(keep_flat.sum())]] = True
    keep_flat &= flat != 0
    masks, start = [], 0
    for a in arrays:
        size = int(np.prod(np.shape(a)))
        masks.append(keep_flat[start : start + size].reshape(np.shape(a)))
        start += size
    return masks


class CutStatistics(typing.NamedTuple):
    """What a magnitude cut zeroed, relative to what it kept.

    `norm_share`: the share of the variables' squared L2 norm (sum of w**2,
    float64) that the cut zeroed. `scale`: the median |w| of the zeroed
    entries over the median |w| of the kept ones: 0 when only zeros were
    removed, about 0.1-0.5 for a plain magnitude cut of a trained network.
    Unlike the norm share, `scale` is not swamped by a few huge weights.
    """

    norm_share: float
    scale: float


def apply_global_magnitude_cut(variables, keep):
    """Zero all but the `keep` largest-magnitude entries of `variables`, in place.

    Returns the `CutStatistics` of the cut.
    """
    values = [keras.ops.convert_to_numpy(v) for v in variables]
    masks = global_magnitude_masks(values, keep)
    for variable, value, mask in zip(variables, values, masks):
        variable.assign(np.where(mask, value, 0).astype(value.dtype))
    flat = np.concatenate([np.abs(v.astype(np.float64)).ravel() for v in values])
    kept = np.concatenate([m.ravel() for m in masks])
    squares = np.square(flat)
    total = float(squares.sum())
    share = float(squares[~kept].sum()) / total if total > 0 else 0.0
    typical = float(np.median(flat[kept])) if kept.any() else 0.0
    removed = float(np.median(flat[~kept])) if (~kept).any() else 0.0
    return CutStatistics(norm_share=share, scale=removed / typical if typical > 0 else 0.0)
