"""strip: a new, physically smaller model computing the same function."""

import dataclasses

import keras
import numpy as np

from keras_sparse_momentum.surgery.dead_units import dead_unit_maps
from keras_sparse_momentum.surgery.graph import ChannelGraph
from keras_sparse_momentum.surgery.rebuild import rebuild

TOLERANCE = 1e-4


def _probe_inputs(model, seed=0):
    """A small random batch for every model input (None if an input shape is unknown)."""
    rng = np.random.default_rng(seed)
    batch = []
    for tensor in model.inputs:
        if any(d is None for d in tensor.shape[1:]):
            return None
        if "int" in str(tensor.dtype):
            batch.append(rng.integers(0, 2, size=(2, *tensor.shape[1:])).astype(tensor.dtype))
        else:
            batch.append(rng.standard_normal((2, *tensor.shape[1:])).astype("float32"))
    return batch[0] if len(batch) == 1 else batch


def max_relative_error(reference, candidate, inputs):
    """max |candidate - reference| / max |reference| over all outputs, on `inputs`."""
    expected = keras.tree.flatten(reference(inputs, training=False))
    actual = keras.tree.flatten(candidate(inputs, training=False))
    worst = 0.0
    for e, a in zip(expected, actual):
        e, a = keras.ops.convert_to_numpy(e), keras.ops.convert_to_numpy(a)
        worst = max(worst, float(np.max(np.abs(a - e)) / max(np.max(np.abs(e)), 1e-12)))
    return worst


@dataclasses.dataclass
class StripReport:
    """What `strip` did: widths before and after per changed space, layers left whole."""

    widths: dict  # {space name: (old width, new width)}
    left_whole: list  # [(layer name, reason)]

    def __str__(self):
        lines = [f"  {name}: {old} -> {new}" for name, (old, new) in self.widths.items()]
        lines += [f"  left whole: {name}: {reason}" for name, reason in self.left_whole]
        return "\n".join(["strip:"] + (lines or ["  nothing removed"]))


def _report(graphs_and_maps):
    widths, left_whole = {}, {}
    for graph, maps in graphs_and_maps:
        for space in graph.base_spaces():
            if space.id in maps:
                old = widths.get(space.name, (space.width,))[0]
                widths[space.name] = (old, maps[space.id].width)
        for layer, reason in graph.refused.items():
            if isinstance(layer, keras.layers.Layer) and layer.weights:
                left_whole.setdefault(layer.name, reason)
    return StripReport(widths, list(left_whole.items()))


def strip(model, plan=None, verify=True):
    """A new plain Keras model with the same function and the dead units removed.

    Removed, without changing what the model computes:

    - Dense units and conv filters whose incoming weights are all zero: their
      constant output (bias through activation, BatchNorm, pooling, residual
      sums) is folded into the biases of the layers that read them;
    - units and filters whose outgoing weights are all zero;
    - MultiHeadAttention heads whose value kernel slice is zero (their value
      bias, which the attention weights average to itself, is folded into the
      output bias) or whose output-kernel slice is zero (heads with zero query
      or key slices attend uniformly: they stay);
    - with a C-SGD `plan`, all but one filter (head) of every cluster, the
      readers' input rows of each cluster summed into the kept one (run after
      `CentripetalSGD` has made the clusters identical).

    Residual `Add`s, `Concatenate` offsets and channels-last `Flatten` -> Dense
    are followed. Layers the analysis does not understand (LSTM, GRU,
    Embedding, LayerNormalization over the channels, custom layers: each
    layer family's rule in `surgery/rules.py` says) and the spaces touching
    them, model inputs and outputs are copied unchanged, never broken; the
    returned model's `strip_report` lists what changed and what was left whole
    and why. The source model is not modified.

    Args:
        model: a built Sequential or functional Keras model.
        plan: optional `ClusterPlan` from C-SGD training.
        verify: compare the stripped model with the source on a random batch
            and raise if the relative error exceeds 1e-4.

    Returns:
        The new model (same name with suffix `_stripped`), with a
        `strip_report` attribute (`StripReport`).

    Raises:
        ValueError: for subclassed models (no graph to rewrite).
        RuntimeError: if `verify` finds the function changed (a bug: please
            report it with the model).
    """
    source, steps = model, []
    if plan is not None:
        graph = ChannelGraph(source)
        maps = plan.channel_maps(graph)
        steps.append((graph, maps))
        source = rebuild(graph, maps, name=f"{model.name}_merged")
    graph = ChannelGraph(source)
    maps, bias_deltas = dead_unit_maps(graph)
    steps.append((graph, maps))
    stripped = rebuild(graph, maps, bias_deltas, name=f"{model.name}_stripped")
    stripped.strip_report = _report(steps)
    if verify:
        inputs = _probe_inputs(model)
        if inputs is not None:
            error = max_relative_error(model, stripped, inputs)
            if error > TOLERANCE:
                unmerged = plan.unmerged(model) if plan is not None else []
                why = (
                    "Its clusters are not identical in "
                    + ", ".join(f"{path} ({distance:.2g})" for path, distance in unmerged[:4])
                    + ": train it with CentripetalSGD(plan), the plan bound to this model "
                    "(plan.bind(model)), or call plan.equalize(model) first."
                    if unmerged else "This is a bug"
                )
                raise RuntimeError(
                    f"strip changed the function of '{model.name}' (relative error "
                    f"{error:.2e} > {TOLERANCE}). {why}; the source model is "
                    "unchanged. Pass verify=False to inspect the result."
                )
    return stripped
