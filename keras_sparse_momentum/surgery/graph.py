"""Channel spaces of a functional Keras graph: who produces, transforms and reads each channel.

A *channel space* is a set of tensors whose last axis indexes the same channels:
a Dense/Conv output, then everything it flows through unchanged channel-wise
(activations, BatchNormalization, pooling, Dropout, padding, depthwise convs,
global pooling) and everything it is merged with element-wise (`Add`,
`Multiply`, ...: the residual ties). Removing or merging channel `j` must happen
in the whole space at once: in every *producer* (the Dense/Conv layers whose
output channels define it), every *transformer* (layers with per-channel
parameters: BatchNormalization, DepthwiseConv, PReLU), and every *consumer*
(the Dense/Conv layers whose kernel reads it on its input axis).

`Concatenate` makes a derived space laid out from its inputs' spaces with
offsets; a channels-last `Flatten` makes a derived space whose rows of channel
`c` are `s * C + c` for every spatial position `s`. A space that reaches a model
output, a model input, or a layer this module does not understand is *pinned*:
its width must not change, and the reasons are recorded. This one analysis
serves `strip` (dead units), `ClusterPlan` (C-SGD) and `AOFP`.
"""

import dataclasses
import math

import keras

_CONV_TYPES = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
_SEPARABLE_TYPES = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
_DEPTHWISE_TYPES = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
_TRANSPOSE_TYPES = (
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
)
_CHANNELWISE_TYPES = (
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.AlphaDropout,
    keras.layers.ActivityRegularization,
    keras.layers.Identity,
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.MaxPooling3D,
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
    keras.layers.AveragePooling3D,
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalAveragePooling3D,
    keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.GlobalMaxPooling3D,
    keras.layers.ZeroPadding1D,
    keras.layers.ZeroPadding2D,
    keras.layers.ZeroPadding3D,
    keras.layers.Cropping1D,
    keras.layers.Cropping2D,
    keras.layers.Cropping3D,
    keras.layers.UpSampling1D,
    keras.layers.UpSampling2D,
    keras.layers.UpSampling3D,
)
_MERGE_TYPES = (
    keras.layers.Add,
    keras.layers.Subtract,
    keras.layers.Average,
    keras.layers.Maximum,
    keras.layers.Minimum,
    keras.layers.Multiply,
)
# Element-wise Keras operations that appear in functional graphs as `x + y`.
_ELEMENTWISE_OP_NAMES = {"Add", "Subtract", "Multiply", "Maximum", "Minimum"}
_CHANNEL_MIXING_ACTIVATIONS = {"softmax", "log_softmax"}

PRODUCER, CHANNELWISE, TRANSFORMER, MERGE, CONCAT, FLATTEN, INPUT, UNKNOWN = (
    "producer",
    "channelwise",
    "transformer",
    "merge",
    "concat",
    "flatten",
    "input",
    "unknown",
)


def _channels_last(layer):
    return getattr(layer, "data_format", "channels_last") == "channels_last"


def classify(layer, input_rank=None):
    """The role of a layer (or Keras operation) in channel surgery, with a reason if unknown.

    `input_rank` is the rank of the input of the call being classified; it is
    only needed for BatchNormalization with a positive axis and defaults to the
    layer's own (single) input, which shared layers do not have.
    """
    if isinstance(layer, keras.layers.InputLayer):
        return INPUT, None
    if isinstance(layer, keras.Model):
        return UNKNOWN, f"nested model '{layer.name}'"
    if isinstance(layer, _TRANSPOSE_TYPES):
        return UNKNOWN, f"transposed convolution '{layer.name}'"
    if isinstance(layer, keras.layers.Dense):
        if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
            return UNKNOWN, f"LoRA or quantized Dense '{layer.name}'"
        return PRODUCER, None
    if isinstance(layer, _SEPARABLE_TYPES):
        if not _channels_last(layer) or layer.depth_multiplier != 1:
            return UNKNOWN, f"'{layer.name}': channels_first or depth_multiplier != 1"
        return PRODUCER, None
    if isinstance(layer, _DEPTHWISE_TYPES):
        if not _channels_last(layer) or layer.depth_multiplier != 1:
            return UNKNOWN, f"'{layer.name}': channels_first or depth_multiplier != 1"
        return TRANSFORMER, None
    if isinstance(layer, _CONV_TYPES):
        if not _channels_last(layer) or getattr(layer, "groups", 1) != 1:
            return UNKNOWN, f"'{layer.name}': channels_first or grouped convolution"
        return PRODUCER, None
    if isinstance(layer, keras.layers.BatchNormalization):
        axis = layer.axis if isinstance(layer.axis, int) else None
        if input_rank is None and axis not in (None, -1):
            input_rank = len(layer.input.shape)
        if axis is None or axis not in (-1, (input_rank or 0) - 1):
            return UNKNOWN, f"BatchNormalization '{layer.name}' not on the channel axis"
        return TRANSFORMER, None
    if isinstance(layer, keras.layers.PReLU):
        return TRANSFORMER, None
    if isinstance(layer, keras.layers.Activation):
        name = getattr(layer.activation, "__name__", "")
        if name in _CHANNEL_MIXING_ACTIVATIONS:
            return UNKNOWN, f"'{layer.name}': {name} mixes channels"
        return CHANNELWISE, None
    if isinstance(layer, _CHANNELWISE_TYPES):
        if not _channels_last(layer):
            return UNKNOWN, f"'{layer.name}': channels_first"
        return CHANNELWISE, None
    if isinstance(layer, _MERGE_TYPES):
        return MERGE, None
    if isinstance(layer, keras.layers.Concatenate):
        return CONCAT, None
    if isinstance(layer, keras.layers.Flatten):
        if not _channels_last(layer):
            return UNKNOWN, f"'{layer.name}': channels_first Flatten"
        return FLATTEN, None
    if not isinstance(layer, keras.layers.Layer) and type(layer).__name__ in _ELEMENTWISE_OP_NAMES:
        return MERGE, None
    return UNKNOWN, f"'{getattr(layer, 'name', layer)}' ({type(layer).__name__}) is not supported"


@dataclasses.dataclass(eq=False)
class Space:
    """A set of tensors sharing one channel index, and the layers bound to it."""

    id: int
    width: int
    producers: list = dataclasses.field(default_factory=list)
    transformers: list = dataclasses.field(default_factory=list)
    consumers: list = dataclasses.field(default_factory=list)
    pins: list = dataclasses.field(default_factory=list)
    concat_parts: list | None = None  # [(Space, offset)] for a Concatenate output
    flat_source: "Space | None" = None  # the space a Flatten output derives from
    flat_positions: int = 0  # spatial positions per channel in that Flatten

    @property
    def pinned(self):
        return bool(self.pins)

    @property
    def is_base(self):
        return self.concat_parts is None and self.flat_source is None

    def __repr__(self):
        names = ", ".join(layer.name for layer in self.producers)
        return f"Space({self.id}, width={self.width}, producers=[{names}], pinned={self.pinned})"


class _UnionFind:
    def __init__(self):
        self.parent = {}

    def find(self, x):
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


def functional_graph(model):
    """(inputs, outputs, nodes in topological order) of a Sequential or functional model."""
    graph = model._functional if isinstance(model, keras.Sequential) else model
    if graph is None or not hasattr(graph, "_nodes_by_depth"):
        raise ValueError(
            f"Model '{model.name}' has no layer graph: channel surgery needs a "
            "functional or Sequential model built with a known input shape "
            "(keras.Input). Subclassed models cannot be rewritten; rebuild the "
            "architecture with the functional API and copy the weights."
        )
    nodes = []
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        nodes.extend(graph._nodes_by_depth[depth])
    return graph.inputs, graph.outputs, nodes


class ChannelGraph:
    """The channel spaces of a model, with every layer's place in them.

    Attributes:
        model: the analysed model.
        nodes: its call nodes, inputs first.
        spaces: the spaces, in order of first appearance.
        layer_roles: {layer: role} for every operation in the graph.
        unsupported: reasons for every pin, for reports.
    """

    def __init__(self, model):
        self.model = model
        inputs, outputs, self.nodes = functional_graph(model)
        self.inputs, self.outputs = list(inputs), list(outputs)
        self.layer_roles = {}
        self.unsupported = []
        uf = _UnionFind()
        derived = {}  # tensor id -> ("concat", [tensor ids]) / ("flat", tensor id, positions)
        producers, transformers, consumers, pins = {}, {}, {}, {}
        widths = {}
        tensor_of = {}

        def pin(tid, reason):
            pins.setdefault(tid, []).append(reason)

        for tensor in inputs:
            pin(id(tensor), "model input")
        for node in self.nodes:
            op = node.operation
            ins = [t for t in node.input_tensors]
            role, reason = classify(op, len(ins[0].shape) if ins else None)
            self.layer_roles[op] = role
            outs = list(node.outputs)
            for t in ins + outs:
                tensor_of[id(t)] = t
                widths[id(t)] = t.shape[-1] if len(t.shape) else None
                uf.find(id(t))
            if role == INPUT:
                continue
            same_width = all(
                widths[id(t)] == widths[id(outs[0])] for t in ins + outs
            ) and len(outs) == 1
            if role in (CHANNELWISE, TRANSFORMER, MERGE) and not same_width:
                role, reason = UNKNOWN, f"'{getattr(op, 'name', op)}' changes or broadcasts channels"
                self.layer_roles[op] = role
            if role == PRODUCER:
                for t in ins:
                    consumers.setdefault(id(t), []).append(op)
                producers.setdefault(id(outs[0]), []).append(op)
            elif role in (CHANNELWISE, TRANSFORMER, MERGE):
                for t in ins:
                    uf.union(id(outs[0]), id(t))
                if role == TRANSFORMER:
                    transformers.setdefault(id(outs[0]), []).append(op)
            elif role == CONCAT:
                axis = op.axis
                if len(outs) != 1 or axis not in (-1, len(outs[0].shape) - 1):
                    role, reason = UNKNOWN, f"Concatenate '{op.name}' not on the channel axis"
                    self.layer_roles[op] = role
                else:
                    derived[id(outs[0])] = ("concat", [id(t) for t in ins])
            elif role == FLATTEN:
                shape = ins[0].shape
                if any(d is None for d in shape[1:]):
                    role, reason = UNKNOWN, f"Flatten '{op.name}' with unknown spatial size"
                    self.layer_roles[op] = role
                else:
                    positions = int(math.prod(shape[1:-1]))
                    derived[id(outs[0])] = ("flat", id(ins[0]), positions)
            if role == UNKNOWN:
                self.unsupported.append(reason)
                for t in ins + outs:
                    pin(id(t), reason)
        for tensor in outputs:
            pin(id(tensor), "model output")

        # Shared layers: one kernel, so all their calls share the spaces.
        for op in self.layer_roles:
            calls = [n for n in self.nodes if n.operation is op]
            if len(calls) > 1:
                for other in calls[1:]:
                    for a, b in zip(calls[0].outputs, other.outputs):
                        uf.union(id(a), id(b))
                    for a, b in zip(calls[0].input_tensors, other.input_tensors):
                        uf.union(id(a), id(b))

        # Collect spaces.
        self._space_of = {}
        self.spaces = []
        by_root = {}
        for tid in list(uf.parent):
            root = uf.find(tid)
            if root not in by_root:
                space = Space(id=len(self.spaces), width=widths.get(tid))
                by_root[root] = space
                self.spaces.append(space)
            space = by_root[root]
            self._space_of[tid] = space
            for layer in producers.get(tid, []):
                if layer not in space.producers:
                    space.producers.append(layer)
            for layer in transformers.get(tid, []):
                if layer not in space.transformers:
                    space.transformers.append(layer)
            for layer in consumers.get(tid, []):
                if layer not in space.consumers:
                    space.consumers.append(layer)
            for reason in pins.get(tid, []):
                if reason not in space.pins:
                    space.pins.append(reason)
        for tid, definition in derived.items():
            space = self._space_of[tid]
            if space.producers or not space.is_base:
                space.pins.append("derived space merged with another definition")
                continue
            if definition[0] == "concat":
                offset, parts = 0, []
                for part_tid in definition[1]:
                    part = self._space_of[part_tid]
                    parts.append((part, offset))
                    offset += part.width
                space.concat_parts = parts
            else:
                space.flat_source = self._space_of[definition[1]]
                space.flat_positions = definition[2]
        for space in self.spaces:
            if space.is_base and not space.producers:
                space.pins.append("no Dense/Conv producer")
        self._propagate_pins()

    def _propagate_pins(self):
        """A pinned derived space pins its sources; a pinned source freezes nothing else."""
        changed = True
        while changed:
            changed = False
            for space in self.spaces:
                if not space.pinned:
                    continue
                sources = [p for p, _ in space.concat_parts or []]
                if space.flat_source is not None:
                    sources.append(space.flat_source)
                for source in sources:
                    if not source.pinned:
                        source.pins.append(f"feeds pinned derived space {space.id}")
                        changed = True

    def space_of(self, tensor):
        """The space of a KerasTensor of the graph."""
        return self._space_of[id(tensor)]

    def base_spaces(self, include_pinned=False):
        """Spaces defined by Dense/Conv producers (the ones surgery can change)."""
        return [
            s for s in self.spaces if s.is_base and s.producers and (include_pinned or not s.pinned)
        ]

    def calls(self, layer):
        """The call nodes of `layer` in this graph."""
        return [n for n in self.nodes if n.operation is layer]

    def input_space(self, layer):
        """The space a Dense/Conv layer reads on its kernel's input axis."""
        return self.space_of(self.calls(layer)[0].input_tensors[0])

    def output_space(self, layer):
        """The space a layer's output belongs to."""
        return self.space_of(self.calls(layer)[0].outputs[0])
