"""Multiply-accumulates of a model if some channel spaces were narrower.

The count is the one `sparsity_report` calls *dense MACs*: every prunable
kernel's size times the number of times its layer applies it per example (its
rule's `kernel_positions`: output positions of a convolution, sequence
positions of a Dense on sequences or of a MultiHeadAttention projection, steps
of a recurrent layer); biases, normalisation, activations and the attention
score products are not counted. Here every kernel axis bound to a channel space
(or to a MultiHeadAttention's heads) is scaled by the fraction of that space's
channels still alive, so the number is exactly the dense MACs of the model
`strip` would build once the other channels are removed. C-SGD and AOFP use it
to aim at a FLOPs target.
"""

import math

from keras_sparse_momentum import prunable as prunable_lib
from keras_sparse_momentum.surgery import rules


def call_shapes(node):
    """({argument position or name: shape}, [output shapes]) of a functional call node."""
    inputs = {}
    for position, arg in enumerate(node.arguments.args):
        if hasattr(arg, "shape"):
            inputs[position] = tuple(arg.shape)
    for name, arg in node.arguments.kwargs.items():
        if hasattr(arg, "shape"):
            inputs[name] = tuple(arg.shape)
    return inputs, [tuple(t.shape) for t in node.outputs]


def layer_positions(layer, nodes):
    """{weight path: applications per example} summed over `nodes`, None if unknown."""
    total = {}
    for node in nodes:
        positions = rules.rule_for(layer).kernel_positions(layer, *call_shapes(node))
        if positions is None:
            return None
        for weight, count in positions.items():
            total[weight] = total.get(weight, 0) + count
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
    total = 0.0
    for layer in channel_graph.layer_roles:
        positions = layer_positions(layer, channel_graph.calls(layer)) or {}
        variables = rules.weights_by_path(layer)
        scales = {}
        for space, port in channel_graph.ports(layer):
            for slot in port.slots:
                scales.setdefault(slot.weight, {})[slot.axis] = space.live_width(widths) / space.width
        for weight, count in positions.items():
            variable = variables[weight]
            if variable.trainable and prunable_lib.is_default_prunable(variable):
                scale = math.prod(scales.get(weight, {}).values())
                total += math.prod(variable.shape) * scale * count
    return int(round(total))
