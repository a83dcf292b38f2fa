"""Channel spaces of a functional Keras graph: who produces, transforms and reads each channel.

A *channel space* is a set of tensors whose last axis indexes the same channels:
a Dense/Conv output, then everything it flows through unchanged channel-wise
(activations, BatchNormalization, pooling, Dropout, padding, depthwise convs,
global pooling) and everything it is merged with element-wise (`Add`,
`Multiply`, ...: the residual ties). Removing or merging channel `j` must happen
in the whole space at once, in every *port* bound to it: the *producers* (the
kernels whose output channels define it), the *followers* (per-channel
parameters on the way: BatchNormalization, DepthwiseConv, PReLU) and the
*readers* (the kernels reading it on their input axis). What each layer binds,
and on which weight axes, is its rule's (`rules.py`); this module only joins
the calls of a graph into spaces. A MultiHeadAttention's heads form a space of
their own (`unit="heads"`), bound to that layer alone.

`Concatenate` makes a derived space laid out from its inputs' spaces with
offsets; a channels-last `Flatten` makes a derived space whose rows of channel
`c` are `s * C + c` for every spatial position `s`. Both are kept as one list
of *segments* `(base space, offset)`, the only index map: `rows`, `map` and
`live_width` read it. A space that reaches a model output, a model input, or a
layer its rule refuses is *pinned*: its width must not change, and the reasons
are recorded. This one analysis serves `strip` (dead units), `ClusterPlan`
(C-SGD), `AOFP` and the FLOPs count.
"""

import dataclasses
import math

import keras

from keras_sparse_momentum.surgery import rules
from keras_sparse_momentum.surgery.rules import (  # noqa: F401  (the roles, re-exported)
    CHANNELWISE,
    CONCAT,
    FLATTEN,
    INPUT,
    MERGE,
    PRODUCER,
    TRANSFORMER,
    UNKNOWN,
)

FOLLOWER, READER = "follower", "reader"


@dataclasses.dataclass
class ChannelMap:
    """New channel `k` stands for the old channels `groups[k]`.

    TAKE slots keep `groups[k][0]`; SUM slots (consumers' input rows) are
    summed over `groups[k]` (exact when the group's channels are identical,
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


@dataclasses.dataclass(eq=False)
class Port:
    """`layer`'s weight axes `slots` index the channels of a space, as its `part`
    (PRODUCER, FOLLOWER or READER); `tensors` are the tensors a reader reads."""

    layer: object
    part: str
    slots: tuple
    tensors: list = dataclasses.field(default_factory=list)


def _unique(layers):
    out = []
    for layer in layers:
        if layer not in out:
            out.append(layer)
    return out


@dataclasses.dataclass(eq=False)
class Space:
    """A set of tensors sharing one channel index (or a layer's heads), and the ports bound to it."""

    id: int
    width: int
    ports: list = dataclasses.field(default_factory=list)
    pins: list = dataclasses.field(default_factory=list)
    segments: list | None = None  # [(base Space, offset)] for a Concatenate / Flatten output
    unit: str = "channels"
    owner: object = None  # the layer holding an inner space

    def _layers(self, part):
        return _unique(p.layer for p in self.ports if p.part == part)

    @property
    def producers(self):
        return self._layers(PRODUCER)

    @property
    def transformers(self):
        return self._layers(FOLLOWER)

    @property
    def consumers(self):
        return self._layers(READER)

    @property
    def pinned(self):
        return bool(self.pins)

    @property
    def is_base(self):
        return self.segments is None

    @property
    def name(self):
        """How reports and `layers=` arguments name the space."""
        if self.owner is not None:
            return f"{self.owner.name}/{self.unit}"
        return "+".join(layer.name for layer in self.producers)

    @property
    def key(self):
        return self.unit, frozenset(layer.name for layer in self.producers)

    def rows(self, base, channel):
        """Indices of this space where channel `channel` of base space `base` appears."""
        if self is base:
            return [channel]
        return [offset + channel for b, offset in self.segments or [] if b is base]

    def map(self, maps):
        """The ChannelMap of this space given maps of base spaces, or None if unchanged."""
        if self.segments is None:
            return maps.get(self.id)
        if all(b.id not in maps for b, _ in self.segments):
            return None
        groups = []
        for base, offset in self.segments:
            base_map = maps.get(base.id) or ChannelMap.keep(range(base.width))
            groups.extend([[offset + c for c in g] for g in base_map.groups])
        return ChannelMap(groups)

    def live_width(self, widths):
        """Channels left if base spaces had the widths `widths` ({space id: width})."""
        if self.segments is None:
            return widths.get(self.id, self.width)
        return sum(widths.get(b.id, b.width) for b, _ in self.segments)

    def __repr__(self):
        return f"Space({self.id}, {self.name!r}, width={self.width}, pinned={self.pinned})"


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


def _present(layer, slots):
    names = rules.weights_by_path(layer)
    return tuple(s for s in slots if s.weight in names)


class ChannelGraph:
    """The channel spaces of a model, with every layer's place in them.

    Attributes:
        model: the analysed model.
        nodes: its call nodes, inputs first.
        spaces: the spaces, in order of first appearance (inner spaces last).
        layer_roles: {layer: role} for every operation in the graph.
        unsupported: reasons for every pin, for reports.
        refused: {layer: reason} for the layers left whole.
    """

    def __init__(self, model):
        self.model = model
        inputs, outputs, self.nodes = functional_graph(model)
        self.inputs, self.outputs = list(inputs), list(outputs)
        self.layer_roles, self.refused, self.unsupported = {}, {}, []
        uf = _UnionFind()
        derived = {}  # tensor id -> [(tensor id, positions)] of its sources
        ports, pins, widths = {}, {}, {}
        inner = {}  # layer -> Space

        def pin(tid, reason):
            pins.setdefault(tid, []).append(reason)

        def bind(tid, port):
            ports.setdefault(tid, []).append(port)

        for tensor in inputs:
            pin(id(tensor), "model input")
        for node in self.nodes:
            op = node.operation
            rule = rules.rule_for(op)
            role, reason = rules.classify(op, node)
            ins, outs = list(node.input_tensors), list(node.outputs)
            for t in ins + outs:
                widths[id(t)] = t.shape[-1] if len(t.shape) else None
                uf.find(id(t))
            if role == INPUT:
                self.layer_roles[op] = role
                continue
            same_width = len(outs) == 1 and all(widths[id(t)] == widths[id(outs[0])] for t in ins)
            if role in (CHANNELWISE, TRANSFORMER, MERGE) and not same_width:
                role, reason = UNKNOWN, f"'{getattr(op, 'name', op)}' changes or broadcasts channels"
            if role == PRODUCER:
                bind(id(outs[0]), Port(op, PRODUCER, _present(op, rule.out_slots(op))))
                read = set()
                for position, name, slots in rule.in_slots(op):
                    tensor = rules.call_argument(node, position, name)
                    if tensor is None and name == "key":  # MultiHeadAttention: key = value
                        tensor = rules.call_argument(node, 1, "value")
                    if tensor is not None:
                        bind(id(tensor), Port(op, READER, _present(op, slots), [tensor]))
                        read.add(id(tensor))
                for t in ins:
                    if id(t) not in read:
                        pin(id(t), f"an input of '{op.name}' that no kernel reads")
                for t in outs[1:]:
                    pin(id(t), f"second output of '{op.name}'")
                self._add_inner(op, rule, node, inner)
            elif role in (CHANNELWISE, TRANSFORMER, MERGE):
                for t in ins:
                    uf.union(id(outs[0]), id(t))
                if role == TRANSFORMER:
                    bind(id(outs[0]), Port(op, FOLLOWER, _present(op, rule.out_slots(op))))
            elif role == CONCAT:
                derived[id(outs[0])] = [(id(t), 1) for t in ins]
            elif role == FLATTEN:
                positions = int(math.prod(ins[0].shape[1:-1]))
                derived[id(outs[0])] = [(id(ins[0]), positions)]
            if role == UNKNOWN:
                self.refused.setdefault(op, reason)
                self.unsupported.append(reason)
                for t in ins + outs:
                    pin(id(t), reason)
            self.layer_roles[op] = role
        for tensor in outputs:
            pin(id(tensor), "model output")

        # Shared layers: one kernel, so all their calls share the spaces.
        for op in self.layer_roles:
            calls = self.calls(op)
            for other in calls[1:]:
                for a, b in zip(calls[0].outputs, other.outputs):
                    uf.union(id(a), id(b))
                for a, b in zip(calls[0].input_tensors, other.input_tensors):
                    uf.union(id(a), id(b))

        self._space_of, self.spaces = {}, []
        by_root = {}
        for tid in list(uf.parent):
            root = uf.find(tid)
            if root not in by_root:
                by_root[root] = Space(id=len(self.spaces), width=widths.get(tid))
                self.spaces.append(by_root[root])
            space = by_root[root]
            self._space_of[tid] = space
            for port in ports.get(tid, []):
                _add_port(space, port)
            for reason in pins.get(tid, []):
                if reason not in space.pins:
                    space.pins.append(reason)
        for tid, sources in derived.items():
            space = self._space_of[tid]
            if space.producers or not space.is_base:
                space.pins.append("derived space merged with another definition")
                continue
            space.segments = []
            for source_tid, positions in sources:
                source = self._space_of[source_tid]
                base = source.segments if source.segments is not None else [(source, 0)]
                start = sum(b.width for b, _ in space.segments)
                for p in range(positions):
                    space.segments += [(b, start + p * source.width + o) for b, o in base]
        for space in self.spaces:
            if space.is_base and not space.producers:
                space.pins.append("no Dense/Conv producer")
        for space in inner.values():
            space.id = len(self.spaces)
            self.spaces.append(space)
        for space in self.spaces:  # a pinned derived space pins its sources
            if space.pinned and not space.is_base:
                for base, _ in space.segments:
                    reason = f"feeds pinned derived space {space.id}"
                    if reason not in base.pins:
                        base.pins.append(reason)
        self._ports_of = {}
        for space in self.spaces:
            for port in space.ports:
                self._ports_of.setdefault(port.layer, []).append((space, port))

    def _add_inner(self, op, rule, node, inner):
        """The inner space (MultiHeadAttention heads) of a producer, once per layer."""
        spec = rule.inner(op)
        if spec is None:
            return
        if op not in inner:
            space = Space(id=-1, width=spec.width, unit=spec.unit, owner=op)
            for part, slots in ((PRODUCER, spec.producers), (FOLLOWER, spec.followers),
                                (READER, spec.readers)):
                _add_port(space, Port(op, part, _present(op, slots)))
            inner[op] = space
        reason = rule.inner_refusal(op, node)
        if reason is not None and reason not in inner[op].pins:
            inner[op].pins.append(reason)

    def space_of(self, tensor):
        """The space of a KerasTensor of the graph."""
        return self._space_of[id(tensor)]

    def base_spaces(self, include_pinned=False):
        """Spaces defined by producers (the ones surgery can change), inner ones included."""
        return [
            s for s in self.spaces if s.is_base and s.producers and (include_pinned or not s.pinned)
        ]

    def inner_space(self, layer):
        """The inner space (heads) of `layer`, or None."""
        return next((s for s in self.spaces if s.owner is layer), None)

    def ports(self, layer):
        """[(space, port)] of every space `layer` is bound to."""
        return self._ports_of.get(layer, [])

    def readers(self, base):
        """[(reader port, reading space)] of every space that carries `base`'s channels."""
        pairs = []
        for space in self.spaces:
            if space is base or (space.segments and any(b is base for b, _ in space.segments)):
                pairs.extend((p, space) for p in space.ports if p.part == READER)
        return pairs

    def calls(self, layer):
        """The call nodes of `layer` in this graph."""
        return [n for n in self.nodes if n.operation is layer]

    def input_space(self, layer):
        """The space a producer reads on its (first) kernel input axis."""
        return next(s for s, p in self.ports(layer) if p.part == READER and s.owner is None)

    def output_space(self, layer):
        """The space a layer's output belongs to."""
        return self.space_of(self.calls(layer)[0].outputs[0])


def _add_port(space, port):
    for known in space.ports:
        if (known.layer, known.part, known.slots) == (port.layer, port.part, port.slots):
            known.tensors.extend(t for t in port.tensors if all(t is not k for k in known.tensors))
            return
    space.ports.append(port)
