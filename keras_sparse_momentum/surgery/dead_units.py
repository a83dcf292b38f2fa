"""Find the channels a pruned model no longer needs, and what removing them costs.

Two kinds of channels of a (non-pinned) space can go without changing what the
model computes:

- *dead*: every producer's kernel slice for the channel is zero, so the
  channel carries a constant (`activation(bias)`, then whatever BatchNorm,
  activations and merges make of it). Readers get that constant folded into
  their bias. The constant is found by running the graph's own layers on the
  constant pattern, so BatchNorm, PReLU, pooling and residual sums are handled
  by Keras itself; where the pattern or the reader's response to it stops
  being constant (a per-position PReLU, zero padding in a 'same' or
  transposed convolution turning a nonzero constant into a border effect), or
  the reader cannot take a bias fold (its rule has no `linear`), the channel
  is kept. A MultiHeadAttention head is dead when its value kernel slice is zero:
  it outputs its value bias, folded into the output bias by the layer's rule.
- *unread*: every reader's SUM slice for the channel is zero (through
  Concatenate offsets and Flatten rows too), so its value never matters.

Which weight axes count is the layers' rules' (`rules.py`).
"""

import keras
import numpy as np

from keras_sparse_momentum.surgery import graph as graph_lib
from keras_sparse_momentum.surgery import rules

_TOLERANCE = 1e-6


def _nonzero_along(value, axis):
    """Per index of `axis`: whether any entry of that slice is nonzero."""
    moved = np.moveaxis(np.asarray(value), axis, 0)
    return np.any(moved.reshape(moved.shape[0], -1) != 0, axis=1)


def _slot_values(port):
    variables = rules.weights_by_path(port.layer)
    for slot in port.slots:
        variable = variables[slot.weight]
        yield slot, variable, keras.ops.convert_to_numpy(variable)


def _is_constant(y):
    """Whether a (1, *positions, C) tensor is constant over positions, per channel.

    The tolerance is relative to each channel's own magnitude, never absolute:
    the constants a few training steps leave (a BatchNorm beta of 1e-7) are
    tiny, and so is the border effect zero padding makes of them, which an
    absolute floor would take for rounding noise and fold (a function change).
    """
    y = np.asarray(y)
    if y.ndim <= 2:
        return True
    flat = y.reshape(-1, y.shape[-1])
    spread = flat.max(axis=0) - flat.min(axis=0)
    return bool(np.all(spread <= _TOLERANCE * np.abs(flat).max(axis=0)))


class _Analysis:
    def __init__(self, channel_graph):
        self.cg = channel_graph
        self.dead, self.unread = {}, {}
        for space in channel_graph.base_spaces():
            self.dead[space.id] = self._dead(space)
            self.unread[space.id] = self._unread(space)

    def _dead(self, space):
        alive, kernels = np.zeros(space.width, bool), 0
        for port in space.ports:
            if port.part != graph_lib.PRODUCER:
                continue
            for slot, _, value in _slot_values(port):
                if rules.is_kernel(slot):
                    alive |= _nonzero_along(value, slot.axis)
                    kernels += 1
        return set(np.flatnonzero(~alive).tolist()) if kernels else set()

    def _unread(self, space):
        unread = set(range(space.width))
        for port, reading in self.cg.readers(space):
            for slot, _, value in _slot_values(port):
                if slot.mode == rules.SUM:
                    read = _nonzero_along(value, slot.axis)
                    unread = {c for c in unread if not read[reading.rows(space, c)].any()}
        return unread

    def removed(self, space):
        removed = self.dead.get(space.id, set()) | self.unread.get(space.id, set())
        if len(removed) == space.width:  # never leave a zero-width layer
            removed = removed - {min(removed)}
        return removed

    def folded_dead(self, space):
        """Dead channels that are removed and still read: their constants get folded."""
        return self.removed(space) & (self.dead.get(space.id, set()) - self.unread.get(space.id, set()))


def _run(node, values):
    """The node's operation on the arrays `values` ({tensor id: array}), outputs as arrays."""
    args, kwargs = node.arguments.fill_in(values)
    return [keras.ops.convert_to_numpy(y) for y in keras.tree.flatten(node.operation(*args, **kwargs))]


def _float_dtype(tensor):
    """The dtype constants of `tensor` are computed in: float64 for a float64
    tensor (a float32 fold of a float64 model is off by float32 rounding, and a
    convolution refuses to mix the two), float32 for every other float."""
    return "float64" if str(tensor.dtype) == "float64" else "float32"


def _filler(tensor, value=0):
    dtype = _float_dtype(tensor) if "float" in str(tensor.dtype) else str(tensor.dtype)
    return np.full((1, *tensor.shape[1:]), value if "float" in dtype else 1, dtype)


def _patterns(channel_graph, analysis):
    """The constant each folded dead channel carries, for every tensor of the graph."""
    values = {id(t): _filler(t) for t in channel_graph.inputs}
    passing = (graph_lib.CHANNELWISE, graph_lib.TRANSFORMER, graph_lib.MERGE,
               graph_lib.CONCAT, graph_lib.FLATTEN)
    for node in channel_graph.nodes:
        role = channel_graph.layer_roles.get(node.operation)
        outs = node.outputs
        if role == graph_lib.INPUT:
            continue
        if role in passing:
            values[id(outs[0])] = _run(node, values)[0]
            continue
        for t in outs:
            values[id(t)] = np.zeros((1, *t.shape[1:]), _float_dtype(t))
        if role == graph_lib.PRODUCER:
            folded = sorted(analysis.folded_dead(channel_graph.space_of(outs[0])))
            if folded:
                response = _run(node, {id(t): _filler(t) for t in node.input_tensors})[0]
                values[id(outs[0])][..., folded] = response[..., folded]
    return values


def _fold_tensor(layer, rule, pattern, rows):
    """(bias delta, []) of reading `pattern` on `rows`, or (None, the rows that cannot fold)."""
    x = np.zeros_like(pattern)
    x[..., rows] = pattern[..., rows]
    live = [r for r in rows if np.any(x[..., r] != 0)]
    if not live:
        return 0.0, []
    y = rule.linear(layer, x)
    if y is None:
        return None, live
    # The reader's own output on the constants, over every position: a pattern
    # varying over positions, or zero padding (a 'same' or transposed
    # convolution), shows here as a non-constant response.
    y = keras.ops.convert_to_numpy(y)
    return (y.reshape(-1, y.shape[-1])[0], []) if _is_constant(y) else (None, live)


def _fold(channel_graph, values, space, folded):
    """Bias deltas {layer: {weight: array}} for `space`'s folded channels, and channels that cannot fold."""
    if space.owner is not None:
        delta = rules.rule_for(space.owner).inner_fold(space.owner, sorted(folded))
        return ({space.owner: delta}, set()) if delta is not None else ({}, set(folded))
    deltas, culprits = {}, set()
    for port, reading in channel_graph.readers(space):
        layer, rule = port.layer, rules.rule_for(port.layer)
        row_of = {r: c for c in folded for r in reading.rows(space, c)}
        delta = None
        for tensor in port.tensors:
            this, bad = _fold_tensor(layer, rule, values[id(tensor)], list(row_of))
            if bad:
                culprits.update(row_of[r] for r in bad)
            elif delta is not None and not np.allclose(delta, this, rtol=_TOLERANCE, atol=0):
                culprits.update(folded)  # a shared layer sees different constants
            else:
                delta = this
        if delta is not None and np.any(delta != 0):
            deltas[layer] = {"bias": delta}
    return deltas, culprits


def dead_unit_maps(channel_graph):
    """Channel maps removing dead and unread channels, and the bias folds they need.

    Returns:
        (maps, bias_deltas): `maps` {space id: ChannelMap} for `rebuild`,
        `bias_deltas` {layer: {weight path: array}}.
    """
    analysis = _Analysis(channel_graph)
    while True:
        values = _patterns(channel_graph, analysis)
        deltas, culprits = {}, []
        for space in channel_graph.base_spaces():
            folded = analysis.folded_dead(space)
            if not folded:
                continue
            space_deltas, bad = _fold(channel_graph, values, space, folded)
            culprits.extend((space, c) for c in bad)
            for layer, weights in space_deltas.items():
                for weight, delta in weights.items():
                    layer_deltas = deltas.setdefault(layer, {})
                    layer_deltas[weight] = layer_deltas.get(weight, 0) + delta
        if not culprits:
            break
        for space, channel in culprits:  # keep them, and look again
            analysis.dead[space.id].discard(channel)
            analysis.unread[space.id].discard(channel)
    maps = {}
    for space in channel_graph.base_spaces():
        removed = analysis.removed(space)
        if removed:
            maps[space.id] = graph_lib.ChannelMap.keep(
                c for c in range(space.width) if c not in removed
            )
    return maps, deltas
