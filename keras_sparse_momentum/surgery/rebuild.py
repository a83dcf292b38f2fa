"""Build the thinner model: apply a channel map to every space of a ChannelGraph."""

import keras
import numpy as np

from keras_sparse_momentum.surgery import rules
from keras_sparse_momentum.surgery.graph import PRODUCER, READER, ChannelMap  # noqa: F401  (ChannelMap: public here)


def apply_slot(value, slot, space_map):
    """`value` with its `slot` axis resized by `space_map` (TAKE: firsts, SUM: group sums)."""
    if slot.mode == rules.SUM:
        return np.stack(
            [np.take(value, g, axis=slot.axis).sum(axis=slot.axis) for g in space_map.groups],
            axis=slot.axis,
        )
    return np.take(value, space_map.firsts, axis=slot.axis)


def _width_key(space, port):
    """Which width of the layer a space sets: its inner units, its input or its output."""
    if space.owner is not None:
        return "inner"
    return "in" if port.part == READER else "out"


def _plan_layer(channel_graph, layer, maps, deltas):
    """(new config or None, {weight path: new value}) of one layer; (None, None) if unchanged."""
    if not deltas and all(space.map(maps) is None for space, _ in channel_graph.ports(layer)):
        return None, None
    rule = rules.rule_for(layer)
    variables = rules.weights_by_path(layer)
    values = {path: keras.ops.convert_to_numpy(v) for path, v in variables.items()}
    config, widths, created = None, {}, set()
    for weight, delta in deltas.items():  # old output indexing: before any slicing
        if weight not in values:
            config = rule.with_bias(layer, config or layer.get_config())
            values[weight], created = np.zeros_like(delta), created | {weight}
        values[weight] = values[weight] + delta
    for space, port in channel_graph.ports(layer):
        space_map = space.map(maps)
        if space_map is None:
            continue
        slots = port.slots
        if port.part == PRODUCER:  # a bias just created follows the output channels
            slots += tuple(s for s in rule.out_slots(layer) if s.weight in created)
        for slot in slots:
            values[slot.weight] = apply_slot(values[slot.weight], slot, space_map)
        widths[_width_key(space, port)] = space_map.width
    if widths:
        config = rule.resize(layer, config or layer.get_config(), widths)
    return config, values


def _set_weights(new_layer, values, old_layer):
    """Unchanged layers get their weights in order; changed ones by path, new ones
    (a bias the config just enabled) start at zero."""
    if values is None:
        new_layer.set_weights(old_layer.get_weights())
        return
    new = rules.weights_by_path(new_layer)
    if set(values) - set(new):
        raise ValueError(f"Cannot match the weights of '{new_layer.name}' ({sorted(values)}) "
                         f"with those of its rebuilt copy ({sorted(new)}).")
    arrays = []
    for path, variable in new.items():
        dtype = keras.ops.convert_to_numpy(variable).dtype
        arrays.append(values[path].astype(dtype) if path in values else np.zeros(variable.shape, dtype))
    new_layer.set_weights(arrays)


def rebuild(channel_graph, maps, bias_deltas=None, name=None):
    """A new model with every space resized by `maps` ({space id: ChannelMap}).

    Args:
        channel_graph: the `ChannelGraph` of the source model.
        maps: channel maps of base spaces; spaces not listed are unchanged.
        bias_deltas: {layer: {weight path: array}} added to a layer's bias
            (old output indexing), where removed constant channels were folded
            in; a layer without a bias gets one.
        name: name of the new model (default: the source's name + "_stripped").

    Returns:
        The new model, with weights set, compiled like the source unless the
        source's optimizer is bound to its architecture (a C-SGD plan); the
        source model is not modified.
    """
    model = channel_graph.model
    bias_deltas = bias_deltas or {}
    plans = {}
    for layer in channel_graph.layer_roles:
        if isinstance(layer, keras.layers.Layer):
            plans[layer.name] = (*_plan_layer(channel_graph, layer, maps, bias_deltas.get(layer, {})),
                                 layer)

    def clone(layer):
        config = plans.get(layer.name, (None,))[0] or layer.get_config()
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
        if new_layer.name in plans:
            _set_weights(new_layer, *plans[new_layer.name][1:])
    new_model.name = name or f"{model.name}_stripped"
    return new_model
