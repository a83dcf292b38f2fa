"""Multiply-accumulates of a model if some channel spaces were narrower.

The count is the one `sparsity_report` calls *dense MACs*: for every kernel of
rank >= 2 of a Dense / Conv / DepthwiseConv / SeparableConv layer, its size
times the layer's output positions per example (biases, normalisation and
activations are not counted). Here every kernel axis that indexes a channel
space is scaled by the fraction of that space's channels still alive, so the
number is exactly the dense MACs of the model `strip` would build once the
other channels are removed. C-SGD and AOFP use it to aim at a FLOPs target.
"""

import math

import keras

from keras_sparse_momentum import prunable as prunable_lib
from keras_sparse_momentum.surgery import graph as graph_lib

_MAC_TYPES = (
    keras.layers.Dense,
    *graph_lib._CONV_TYPES,
    *graph_lib._SEPARABLE_TYPES,
    *graph_lib._DEPTHWISE_TYPES,
)


def live_width(space, widths):
    """Live channels of any space, derived ones computed from their sources."""
    if space.concat_parts is not None:
        return sum(live_width(part, widths) for part, _ in space.concat_parts)
    if space.flat_source is not None:
        return space.flat_positions * live_width(space.flat_source, widths)
    return widths.get(space.id, space.width)


def _positions(channel_graph, layer):
    total = 0
    for node in channel_graph.calls(layer):
        shape = node.outputs[0].shape
        total += int(math.prod(shape[1:-1]))
    return total


def kernel_macs(channel_graph, widths=None):
    """Dense MACs per example with base spaces narrowed to `widths`.

    Args:
        channel_graph: a `ChannelGraph`.
        widths: {space id: live channel count}; spaces not listed keep their width.

    Returns:
        An int; with `widths=None` it equals `sparsity_report(model).dense_macs`
        (for models whose kernels all sit in layers of the graph).
    """
    widths = widths or {}
    total = 0
    for layer, role in channel_graph.layer_roles.items():
        if not isinstance(layer, _MAC_TYPES):
            continue
        scale_in = scale_out = 1.0
        if role != graph_lib.UNKNOWN:
            source = channel_graph.input_space(layer)
            target = channel_graph.output_space(layer)
            scale_in = live_width(source, widths) / source.width
            scale_out = live_width(target, widths) / target.width
        positions = _positions(channel_graph, layer)
        for variable in layer.trainable_weights:
            if not prunable_lib.is_default_prunable(variable):
                continue
            # A depthwise kernel has one filter per input channel; the others
            # read the input space and write the output space.
            depthwise = role == graph_lib.TRANSFORMER or variable.name == "depthwise_kernel"
            scale = scale_in if depthwise else scale_in * scale_out
            total += math.prod(variable.shape) * scale * positions
    return int(round(total))
