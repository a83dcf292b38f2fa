"""Find the channels a pruned model no longer needs, and what removing them costs.

Two kinds of channels of a (non-pinned) space can go without changing what the
model computes:

- *dead*: every producer's incoming weights for the channel are zero, so the
  channel carries a constant (`activation(bias)`, then whatever BatchNorm,
  activations and merges make of it). Consumers get that constant folded into
  their bias. The constant is found by running the graph's own layers on the
  constant pattern, so BatchNorm, PReLU, pooling and residual sums are handled
  by Keras itself; where the pattern stops being constant (zero padding before
  a 'same' convolution turns a nonzero constant into a border effect) the
  channel is kept.
- *unread*: every consumer's weights reading the channel are zero (through
  Concatenate offsets and Flatten rows too), so its value never matters.
"""

import keras
import numpy as np

from keras_sparse_momentum.surgery import graph as graph_lib
from keras_sparse_momentum.surgery.rebuild import ChannelMap

_TOLERANCE = 1e-6


def _kernel_for_input(layer):
    """The kernel that reads the layer's input channels on axis -2 (or 0 for Dense)."""
    name = "pointwise_kernel" if hasattr(layer, "pointwise_kernel") else "kernel"
    kernel = keras.ops.convert_to_numpy(getattr(layer, name))
    return np.moveaxis(kernel, 0 if kernel.ndim == 2 else -2, 0)  # (in, ..., out)


def _kernel_for_output(layer):
    name = "pointwise_kernel" if hasattr(layer, "pointwise_kernel") else "kernel"
    return keras.ops.convert_to_numpy(getattr(layer, name))  # (..., out)


def _rows(space, base, channel):
    """Indices in `space` (base or derived) where channel `channel` of `base` appears."""
    if space is base:
        return [channel]
    if space.concat_parts is not None:
        rows = []
        for part, offset in space.concat_parts:
            rows.extend(offset + r for r in _rows(part, base, channel))
        return rows
    if space.flat_source is not None:
        source_rows = _rows(space.flat_source, base, channel)
        width = space.flat_source.width
        return [p * width + r for p in range(space.flat_positions) for r in source_rows]
    return []


def _readers(channel_graph, base):
    """(consumer layer, reading space) pairs for every space that carries `base`'s channels."""
    pairs = []
    for space in channel_graph.spaces:
        if space is base or _rows(space, base, 0):
            pairs.extend((layer, space) for layer in space.consumers)
    return pairs


def _linear_part(layer, x):
    """The layer's kernel applied to `x`: no bias, no activation."""
    ops = keras.ops
    if isinstance(layer, keras.layers.Dense):
        return ops.tensordot(x, layer.kernel, axes=[[-1], [0]])
    kwargs = dict(
        strides=layer.strides,
        padding=layer.padding,
        data_format=layer.data_format,
        dilation_rate=layer.dilation_rate,
    )
    if hasattr(layer, "pointwise_kernel"):
        return ops.separable_conv(x, layer.depthwise_kernel, layer.pointwise_kernel, **kwargs)
    return ops.conv(x, layer.kernel, **kwargs)


def _is_constant(y):
    """Whether a (1, *positions, C) tensor is constant over positions, per channel."""
    y = np.asarray(y)
    if y.ndim <= 2:
        return True
    flat = y.reshape(-1, y.shape[-1])
    spread = flat.max(axis=0) - flat.min(axis=0)
    return bool(np.all(spread <= _TOLERANCE * (1 + np.abs(flat).max(axis=0))))


class _Analysis:
    def __init__(self, channel_graph):
        self.cg = channel_graph
        self.dead, self.unread = {}, {}
        for space in channel_graph.base_spaces():
            self.dead[space.id] = self._dead(space)
            self.unread[space.id] = self._unread(space)

    def _dead(self, space):
        dead = np.ones(space.width, bool)
        for layer in space.producers:
            kernel = _kernel_for_output(layer)
            dead &= ~np.any(kernel.reshape(-1, kernel.shape[-1]) != 0, axis=0)
        return set(np.flatnonzero(dead).tolist())

    def _unread(self, space):
        unread = set(range(space.width))
        for layer, reading in _readers(self.cg, space):
            kernel = _kernel_for_input(layer)
            unread = {c for c in unread if not np.any(kernel[_rows(reading, space, c)] != 0)}
        return unread

    def removed(self, space):
        removed = self.dead.get(space.id, set()) | self.unread.get(space.id, set())
        if len(removed) == space.width:  # never leave a zero-width layer
            removed = removed - {min(removed)}
        return removed

    def folded_dead(self, space):
        """Dead channels that are removed and still read: their constants get folded."""
        return self.removed(space) & (self.dead.get(space.id, set()) - self.unread.get(space.id, set()))


def _patterns(channel_graph, analysis):
    """The constant each folded dead channel carries, for every tensor of the graph."""
    values = {}
    for tensor in channel_graph.inputs:
        values[id(tensor)] = np.zeros((1, *tensor.shape[1:]), "float32")
    for node in channel_graph.nodes:
        op = node.operation
        role = channel_graph.layer_roles.get(op)
        outs = node.outputs
        if role == graph_lib.INPUT:
            continue
        shape_of = lambda t: (1, *t.shape[1:])  # noqa: E731
        if role == graph_lib.PRODUCER:
            space = channel_graph.space_of(outs[0])
            folded = sorted(analysis.folded_dead(space)) if space.id in analysis.dead else []
            pattern = np.zeros(shape_of(outs[0]), "float32")
            if folded:
                response = keras.ops.convert_to_numpy(
                    op(np.zeros(shape_of(node.input_tensors[0]), "float32"))
                )
                pattern[..., folded] = response[..., folded]
            values[id(outs[0])] = pattern
        elif role in (graph_lib.CHANNELWISE, graph_lib.TRANSFORMER, graph_lib.MERGE,
                      graph_lib.CONCAT, graph_lib.FLATTEN):
            args, kwargs = node.arguments.fill_in(values)
            result = op(*args, **kwargs)
            values[id(outs[0])] = keras.ops.convert_to_numpy(result)
        else:
            for t in outs:
                values[id(t)] = np.zeros(shape_of(t), "float32")
    return values


def _culprits(layer, x, rows):
    """Rows whose pattern cannot be folded into `layer`'s bias."""
    spatial = x.ndim > 2
    kernel_positions = int(np.prod(_kernel_for_output(layer).shape[:-2])) if spatial else 1
    padded = getattr(layer, "padding", "valid") != "valid" and kernel_positions > 1
    bad = []
    for r in rows:
        column = x[..., r].ravel()
        if spatial and (column.max() - column.min() > _TOLERANCE * (1 + np.abs(column).max())):
            bad.append(r)
        elif padded and np.any(column != 0):
            bad.append(r)
    return bad


def _fold(channel_graph, values, space, folded):
    """Bias deltas for the consumers of `space`'s folded channels, and channels that cannot fold."""
    deltas, culprits = {}, set()
    for layer, reading in _readers(channel_graph, space):
        row_of = {r: c for c in folded for r in _rows(reading, space, c)}
        delta = None
        for node in channel_graph.calls(layer):
            pattern = values[id(node.input_tensors[0])]
            x = np.zeros_like(pattern)
            x[..., list(row_of)] = pattern[..., list(row_of)]
            bad = _culprits(layer, x, list(row_of))
            y = keras.ops.convert_to_numpy(_linear_part(layer, x))
            if bad or not _is_constant(y):
                culprits.update(row_of[r] for r in bad or row_of)
                continue
            this = y.reshape(-1, y.shape[-1])[0]
            if delta is not None and not np.allclose(delta, this, atol=_TOLERANCE):
                culprits.update(folded)  # a shared layer sees different constants
            delta = this
        if delta is not None:
            deltas[layer] = delta
    return deltas, culprits


def dead_unit_maps(channel_graph):
    """Channel maps removing dead and unread channels, and the bias folds they need.

    Returns:
        (maps, bias_deltas): `maps` {space id: ChannelMap} for `rebuild`,
        `bias_deltas` {consumer layer: array}.
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
            for layer, delta in space_deltas.items():
                deltas[layer] = deltas.get(layer, 0) + delta
        if not culprits:
            break
        for space, channel in culprits:  # keep them, and look again
            analysis.dead[space.id].discard(channel)
            analysis.unread[space.id].discard(channel)
    maps = {}
    for space in channel_graph.base_spaces():
        removed = analysis.removed(space)
        if removed:
            maps[space.id] = ChannelMap.keep(c for c in range(space.width) if c not in removed)
    return maps, deltas
