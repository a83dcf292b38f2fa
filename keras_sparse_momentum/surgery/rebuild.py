"""Build the thinner model: apply a channel map to every space of a ChannelGraph."""

import dataclasses

import keras
import numpy as np

from keras_sparse_momentum.surgery import graph as graph_lib


@dataclasses.dataclass
class ChannelMap:
    """New channel `k` stands for the old channels `groups[k]`.

    Producers and per-channel layers keep `groups[k][0]`; consumers sum their
    input rows over `groups[k]` (exact when the group's channels are identical,
    as C-SGD makes them). Old channels in no group are removed.
    """

    groups: list

    @property
    def firsts(self):
        return [g[0] for g in self.groups]

    @property
    def width(self):
        return len(self.groups)

    @classmethod
    def keep(cls, channels):
        """Keep the listed channels, each on its own."""
        return cls([[int(c)] for c in channels])


def composite_map(space, maps):
    """The map of any space (derived ones built from their sources), or None if unchanged."""
    if space.concat_parts is not None:
        parts = [(composite_map(part, maps), part, offset) for part, offset in space.concat_parts]
        if all(m is None for m, _, _ in parts):
            return None
        groups = []
        for m, part, offset in parts:
            m = m or ChannelMap.keep(range(part.width))
            groups.extend([[offset + c for c in g] for g in m.groups])
        return ChannelMap(groups)
    if space.flat_source is not None:
        source = composite_map(space.flat_source, maps)
        if source is None:
            return None
        width = space.flat_source.width
        return ChannelMap(
            [
                [position * width + c for c in g]
                for position in range(space.flat_positions)
                for g in source.groups
            ]
        )
    return maps.get(space.id)


def _gather(array, indices, axis):
    return np.take(array, indices, axis=axis)


def _gather_sum(array, groups, axis):
    return np.stack([np.take(array, g, axis=axis).sum(axis=axis) for g in groups], axis=axis)


def _producer_weights(layer, values, in_map, out_map, bias_delta):
    """New weights of a Dense/Conv/SeparableConv for changed input and/or output spaces."""
    values = dict(values)
    kernel_name = "pointwise_kernel" if "pointwise_kernel" in values else "kernel"
    kernel = values[kernel_name]
    in_axis = 0 if kernel.ndim == 2 else kernel.ndim - 2
    if in_map is not None:
        kernel = _gather_sum(kernel, in_map.groups, in_axis)
        if "depthwise_kernel" in values:
            values["depthwise_kernel"] = _gather(values["depthwise_kernel"], in_map.firsts, -2)
    if bias_delta is not None:
        values["bias"] = values.get("bias", 0) + bias_delta
    if out_map is not None:
        kernel = _gather(kernel, out_map.firsts, -1)
        if "bias" in values:
            values["bias"] = _gather(values["bias"], out_map.firsts, 0)
    values[kernel_name] = kernel
    return values


def _transformer_weights(layer, values, space_map):
    """Slice the per-channel parameters of BatchNorm, DepthwiseConv, PReLU."""
    out = {}
    for name, value in values.items():
        axis = -2 if (name == "kernel" and value.ndim >= 3) else -1
        out[name] = _gather(value, space_map.firsts, axis)
    return out


def rebuild(channel_graph, maps, bias_deltas=None, name=None):
    """A new model with every space resized by `maps` ({space id: ChannelMap}).

    Args:
        channel_graph: the `ChannelGraph` of the source model.
        maps: channel maps of base spaces; spaces not listed are unchanged.
        bias_deltas: {layer: array} added to a consumer's bias (old output
            indexing), where removed constant channels were folded in; a layer
            without a bias gets one.
        name: name of the new model (default: the source's name + "_stripped").

    Returns:
        The new model, with weights set, compiled like the source unless the
        source's optimizer is bound to its architecture (a C-SGD plan); the
        source model is not modified.
    """
    model = channel_graph.model
    bias_deltas = bias_deltas or {}
    plans = {}
    for layer, role in channel_graph.layer_roles.items():
        if not isinstance(layer, keras.layers.Layer):
            continue
        values = {w.name: keras.ops.convert_to_numpy(w) for w in layer.weights}
        config = None
        if role == graph_lib.PRODUCER:
            in_map = composite_map(channel_graph.input_space(layer), maps)
            out_map = composite_map(channel_graph.output_space(layer), maps)
            delta = bias_deltas.get(layer)
            if in_map is not None or out_map is not None or delta is not None:
                config = layer.get_config()
                if out_map is not None:
                    config["units" if "units" in config else "filters"] = out_map.width
                if delta is not None and not config.get("use_bias", True):
                    config["use_bias"] = True
                values = _producer_weights(layer, values, in_map, out_map, delta)
        elif role == graph_lib.TRANSFORMER:
            space_map = composite_map(channel_graph.output_space(layer), maps)
            if space_map is not None:
                values = _transformer_weights(layer, values, space_map)
        plans[layer.name] = (config, values)

    def clone(layer):
        config = plans.get(layer.name, (None, None))[0] or layer.get_config()
        return type(layer).from_config(config)

    # clone_model recompiles the clone from the compile config; an optimizer
    # tied to the old architecture (CentripetalSGD's plan) cannot be rebuilt
    # on the new widths, so such a clone comes back uncompiled.
    compiled = model.compiled
    model.compiled = False
    try:
        new_model = keras.models.clone_model(model, clone_function=clone)
    except NotImplementedError as error:
        raise ValueError(
            f"A layer of '{model.name}' cannot be re-created from its config "
            f"({error}); implement `get_config` on custom layers to strip them."
        ) from error
    finally:
        model.compiled = compiled
    if compiled and getattr(model.optimizer, "plan", None) is None:
        new_model.compile_from_config(model.get_compile_config())
    for new_layer in new_model.layers:
        if new_layer.name not in plans:
            continue
        values = plans[new_layer.name][1]
        new_layer.set_weights(
            [values[w.name].astype(keras.ops.convert_to_numpy(w).dtype) for w in new_layer.weights]
        )
    new_model.name = name or f"{model.name}_stripped"
    return new_model
