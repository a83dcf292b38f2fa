"""ClusterPlan: which filters Centripetal SGD makes identical, and what merging them touches.

Built on `ChannelGraph`: every non-pinned channel space with producers is one
clustering unit, and so are the heads of every MultiHeadAttention whose heads
can be followed. Producers whose outputs meet at a residual `Add` (or
`Multiply`, ...) share a space, hence one clustering (the C-SGD authors'
"follow" rule). The plan lists every per-channel slice bound to a clustered
space (through `Concatenate` offsets and `Flatten` rows too) that its layer's
rule marks TAKE: producers' kernels and biases, BatchNormalization gamma, beta
and moving statistics, DepthwiseConv kernels, PReLU alphas, the depthwise half
of a SeparableConv reading the space, a head's query, key and value slices.
Those are the variables `CentripetalSGD` pulls together and equalises, so that
`strip` can keep one channel (head) per cluster, summing the readers' rows,
without changing the function.
"""

import dataclasses
import math
import weakref

import keras
import numpy as np

from keras_sparse_momentum.surgery import graph as graph_lib
from keras_sparse_momentum.surgery import kmeans as kmeans_lib
from keras_sparse_momentum.surgery import rules
from keras_sparse_momentum.surgery.graph import ChannelMap
from keras_sparse_momentum.surgery.rules import KERNEL, STATISTIC, VECTOR  # noqa: F401

METHODS = ("kmeans", "even")


@dataclasses.dataclass
class ClusterGroup:
    """One clustered space: its producers (layer names), the clusters, and the unit
    clustered ("channels", or "heads" of the MultiHeadAttention in `producers`)."""

    producers: list
    width: int
    clusters: list
    unit: str = "channels"

    @property
    def name(self):
        return self.producers[0] + "/heads" if self.unit != "channels" else ", ".join(self.producers)

    @property
    def kept(self):
        return len(self.clusters)


@dataclasses.dataclass
class VariableMerge:
    """A variable whose slices along `axis` are merged cluster by cluster.

    `kind` is "kernel" (full centripetal strength), "vector" (bias, BN
    gamma/beta, PReLU alpha: a tenth of it) or "statistic" (BN moving mean and
    variance: not trained, only averaged at the end).
    """

    path: str
    axis: int
    kind: str
    clusters: list

    def segments(self, width):
        """(ids, sizes): each channel's cluster index (a channel in no cluster is
        its own) and each cluster's size, for a segment mean over `axis`."""
        ids = np.full(width, -1, np.int32)
        for index, cluster in enumerate(self.clusters):
            ids[cluster] = index
        alone = np.flatnonzero(ids < 0)
        ids[alone] = len(self.clusters) + np.arange(len(alone))
        return ids, np.bincount(ids, minlength=len(self.clusters) + len(alone))

    def equalize(self, value):
        """`value` with the slices of every cluster replaced by their mean (bitwise equal)."""
        value = np.array(value)
        moved = np.moveaxis(value, self.axis, -1)
        for cluster in self.clusters:
            moved[..., cluster] = moved[..., cluster].mean(axis=-1, keepdims=True)
        return np.moveaxis(moved, -1, self.axis)

    def relative_distance(self, value):
        """max_i ||w_i - mean(cluster of i)|| / max_i ||w_i||, slices along `axis`."""
        value = np.asarray(value, np.float64)
        width = value.shape[self.axis]
        slices = np.moveaxis(value, self.axis, -1).reshape(-1, width)
        means = np.moveaxis(self.equalize(value), self.axis, -1).reshape(-1, width)
        scale = float(np.linalg.norm(slices, axis=0).max())
        gap = float(np.linalg.norm(slices - means, axis=0).max())
        return gap / scale if scale > 0 else 0.0


def _check_keep_ratio(keep_ratio):
    ok = isinstance(keep_ratio, (int, float)) and not isinstance(keep_ratio, bool)
    if not ok or not 0 < keep_ratio <= 1:
        raise ValueError(
            "ClusterPlan: `keep_ratio` must be a number in (0, 1], the fraction of "
            f"filters kept per clustered layer. Received: keep_ratio={keep_ratio!r}"
        )
    return float(keep_ratio)


def features(space):
    """(width, d) rows describing each channel (head) of a base space: its kernel
    slices in every producer and follower, flattened (k-means points, L1 norms)."""
    blocks = []
    for port in space.ports:
        if port.part == graph_lib.READER:
            continue
        variables = rules.weights_by_path(port.layer)
        for slot in port.slots:
            variable = variables[slot.weight]
            if rules.slot_kind(variable, slot) == KERNEL:
                value = np.moveaxis(keras.ops.convert_to_numpy(variable), slot.axis, -1)
                blocks.append(value.reshape(-1, space.width).T)
    return np.concatenate(blocks, axis=1)


def _same_up_to_scope(a, b):
    """Whether one variable path is the other with leading scopes ('model/') removed."""
    short, long = sorted((a, b), key=len)
    return long.endswith("/" + short)


def _layer_name(layer):
    return layer if isinstance(layer, str) else layer.name


def _selectors(space):
    """The names that select `space` in `layers=`: its producers, or '<layer>/heads'."""
    return {space.name} if space.owner is not None else {layer.name for layer in space.producers}


class ClusterPlan:
    """The filter clusters of a model for Centripetal SGD, with residual ties respected.

    Build it once, before training, from the starting weights:

    ```python
    plan = ksm.ClusterPlan.from_model(model, keep_ratio=0.5)
    print(plan)                                   # what is clustered, what is not and why
    model.compile(optimizer=ksm.CentripetalSGD(plan), ...)
    model.fit(...)                                # clusters become identical
    slim = ksm.strip(model, plan)                 # one filter per cluster, same function
    ```

    Attributes:
        groups: list of `ClusterGroup` (one per clustered channel space).
        merges: list of `VariableMerge`, every variable the clusters touch.
        skipped: list of (producer names, reason) left unpruned.
        keep_ratio, method, seed: how the plan was made.
    """

    def __init__(self, groups, merges, skipped=(), keep_ratio=None, method=None, seed=0):
        self.groups = list(groups)
        self.merges = list(merges)
        self.skipped = [tuple(s) for s in skipped]
        self.keep_ratio = keep_ratio
        self.method = method
        self.seed = seed
        self._model = None

    # -- construction -------------------------------------------------------

    @classmethod
    def from_model(cls, model, keep_ratio, method="kmeans", layers=None, seed=0):
        """Cluster the filters of every prunable producer of `model`.

        Args:
            model: a built functional or Sequential Keras model.
            keep_ratio: fraction in (0, 1] of the filters kept per clustered
                space: `ceil(keep_ratio * width)` clusters.
            method: "kmeans" (k-means on the flattened filters of the current
                weights, the authors' default) or "even" (consecutive blocks).
            layers: None (every producer that can be pruned, and the heads
                of every MultiHeadAttention) or names/layers of Dense/Conv
                producers to cluster, and '<attention layer>/heads'; a layer
                tied to others by a residual `Add` brings its whole tie group.
            seed: seed of the k-means start (the plan is deterministic).

        Raises:
            ValueError: bad `keep_ratio`/`method`, a subclassed model, a layer
                in `layers` that is not a producer or cannot be pruned (LSTM,
                GRU, Embedding, ...: the reason is given), or nothing prunable
                at all.
        """
        keep_ratio = _check_keep_ratio(keep_ratio)
        if method not in METHODS:
            raise ValueError(
                f"ClusterPlan: `method` must be one of {METHODS}. Received: method={method!r}"
            )
        channel_graph = graph_lib.ChannelGraph(model)
        candidates = channel_graph.base_spaces(include_pinned=True)
        refused = {layer.name: reason for layer, reason in channel_graph.refused.items()
                   if isinstance(layer, keras.layers.Layer) and layer.weights}
        wanted = None
        if layers is not None:
            wanted = {_layer_name(layer) for layer in layers}
            whole = sorted(wanted & set(refused))
            if whole:
                reasons = "; ".join(refused[name] for name in whole)
                raise ValueError(f"ClusterPlan: cannot prune {whole}: {reasons}.")
            unknown = sorted(wanted - {n for s in candidates for n in _selectors(s)})
            if unknown:
                raise ValueError(
                    f"ClusterPlan: {unknown} are not Dense/Conv producers (or "
                    f"'<attention layer>/heads') of model '{model.name}' that channel "
                    "surgery understands."
                )
        groups, skipped = [], [([name], reason) for name, reason in refused.items()
                               if wanted is None]
        for space in candidates:
            names = [layer.name for layer in space.producers]
            if wanted is not None and not wanted.intersection(_selectors(space)):
                continue
            if space.pinned:
                if wanted is not None:
                    raise ValueError(
                        f"ClusterPlan: cannot prune {space.name}: {'; '.join(space.pins)}."
                    )
                skipped.append(([space.name] if space.owner else names, "; ".join(space.pins)))
                continue
            kept = max(1, math.ceil(round(keep_ratio * space.width, 6)))
            if method == "even":
                clusters = kmeans_lib.even_blocks(space.width, kept)
            else:
                clusters = kmeans_lib.kmeans(features(space), kept, seed=seed)
            groups.append(ClusterGroup(names, space.width, clusters, space.unit))
        if not groups:
            reasons = "; ".join(f"{', '.join(n)}: {r}" for n, r in skipped) or "no Dense/Conv layer"
            raise ValueError(
                f"ClusterPlan: nothing in model '{model.name}' can be clustered ({reasons})."
            )
        plan = cls(groups, [], skipped, keep_ratio, method, seed)
        plan.merges = plan._variable_merges(channel_graph)
        return plan.bind(model)

    def _variable_merges(self, channel_graph):
        """One VariableMerge per TAKE slot bound to a clustered space (one per variable)."""
        maps = self.channel_maps(channel_graph, include_singletons=True)
        merges = {}
        for space in channel_graph.spaces:
            space_map = space.map(maps)
            if space_map is None:
                continue
            for port in space.ports:
                variables = rules.weights_by_path(port.layer)
                for slot in port.slots:
                    if slot.mode == rules.TAKE:
                        variable = variables[slot.weight]
                        merges.setdefault(variable.path, VariableMerge(
                            variable.path, slot.axis, rules.slot_kind(variable, slot),
                            space_map.groups))
        return list(merges.values())

    def bind(self, model):
        """Remember `model` (weakly) so that its BatchNorm moving statistics can be
        equalised at the end of training; `from_model` binds automatically, a
        plan restored with `from_dict` needs it. Returns the plan."""
        self._model = weakref.ref(model)
        return self

    @property
    def model(self):
        """The bound model, or None."""
        return self._model() if self._model is not None else None

    # -- use ----------------------------------------------------------------

    def channel_maps(self, channel_graph, include_singletons=False):
        """{space id: ChannelMap} of `channel_graph` for `rebuild` (one channel per cluster).

        Raises:
            ValueError: if the graph's spaces do not match the plan's (another
                model, or an architecture changed since the plan was made).
        """
        by_key = {s.key: s for s in channel_graph.base_spaces(include_pinned=True)}
        maps = {}
        for group in self.groups:
            space = by_key.get((group.unit, frozenset(group.producers)))
            if space is None or space.width != group.width or space.pinned:
                raise ValueError(
                    f"ClusterPlan does not match model '{channel_graph.model.name}': no "
                    f"prunable space of {group.width} {group.unit} produced by exactly "
                    f"{group.producers}. Make the plan from this model."
                )
            if include_singletons or any(len(c) > 1 for c in group.clusters):
                maps[space.id] = ChannelMap([list(c) for c in group.clusters])
        return maps

    def equalize(self, model_or_variables):
        """Make every cluster exactly identical (cluster means), in place.

        Takes a model or a list of variables (those not in the plan are
        ignored). Returns the largest relative intra-cluster distance found
        before (see `cluster_distance`).
        """
        variables = getattr(model_or_variables, "weights", model_or_variables)
        distance = self.cluster_distance(variables)
        for merge, variable in self.planned(variables):
            value = keras.ops.convert_to_numpy(variable)
            variable.assign(merge.equalize(value).astype(value.dtype))
        return distance

    def cluster_distance(self, model_or_variables):
        """max over trained variables and filters of ||w_i - cluster mean|| / max_j ||w_j||.

        0 means every cluster is already identical. Takes a model or a list of
        variables (those not in the plan are ignored).
        """
        variables = getattr(model_or_variables, "weights", model_or_variables)
        worst = 0.0
        for merge, variable in self.planned(variables):
            if merge.kind != STATISTIC:
                value = keras.ops.convert_to_numpy(variable)
                worst = max(worst, merge.relative_distance(value))
        return worst

    def unmerged(self, model):
        """[(variable path, relative distance)] of the planned variables of `model`
        (moving statistics included) whose clusters are not identical."""
        return [
            (merge.path, distance)
            for merge, variable in self.planned(model.weights)
            if (distance := merge.relative_distance(keras.ops.convert_to_numpy(variable)))
        ]

    def planned(self, variables):
        """[(merge, variable)] for the planned variables among `variables`, in plan order.

        A merge names its variable by the path it had in the model the plan was
        made from. Paths carry the scope the model built its layers in: a
        Sequential built from code names a kernel 'sequential/dense/kernel', the
        same model from `load_model` 'dense/kernel'. So a merge with no variable
        of its exact path takes the one variable whose path equals its path
        with leading scopes removed, or the other way round; none or several
        such variables: the merge has no variable here.
        """
        variables = list(variables)
        exact = {v.path: v for v in variables}
        pairs = []
        for merge in self.merges:
            variable = exact.get(merge.path)
            if variable is None:
                near = [v for v in variables if _same_up_to_scope(v.path, merge.path)]
                variable = near[0] if len(near) == 1 else None
            if variable is not None:
                pairs.append((merge, variable))
        return pairs

    def check_bound(self, variables):
        """Raise if the plan is bound to a model that does not hold `variables`.

        CentripetalSGD equalises the BatchNorm moving statistics of the bound
        model at the end of `fit`; bound to another model (a copy with the same
        architecture), the trained model's statistics would stay unmerged and
        `strip(model, plan)` would change its function.
        """
        model = self.model
        if model is None:
            return
        held = {id(v) for v in model.weights}
        foreign = [v.path for v in variables if id(v) not in held]
        if foreign:
            raise ValueError(
                f"ClusterPlan is bound to model '{model.name}', which does not hold the "
                f"trained variables {foreign[:4]}: call `plan.bind(model)` with the model "
                "being trained, so that its BatchNorm statistics are merged too."
            )

    # -- serialisation and display -----------------------------------------------

    def to_dict(self):
        """A JSON-serialisable dict; `ClusterPlan.from_dict` inverts it."""
        return {
            "keep_ratio": self.keep_ratio,
            "method": self.method,
            "seed": self.seed,
            "groups": [dataclasses.asdict(g) for g in self.groups],
            "merges": [dataclasses.asdict(m) for m in self.merges],
            "skipped": [[list(names), reason] for names, reason in self.skipped],
        }

    @classmethod
    def from_dict(cls, config):
        """The plan saved by `to_dict` (unbound: call `bind(model)` before training)."""
        return cls(
            [ClusterGroup(**g) for g in config["groups"]],
            [VariableMerge(**m) for m in config["merges"]],
            [(list(n), r) for n, r in config.get("skipped", [])],
            config.get("keep_ratio"),
            config.get("method"),
            config.get("seed", 0),
        )

    def __eq__(self, other):
        return isinstance(other, ClusterPlan) and self.to_dict() == other.to_dict()

    def summary(self):
        """A readable table of the clustered spaces and the skipped ones."""
        lines = [
            f"ClusterPlan(keep_ratio={self.keep_ratio}, method={self.method!r}, seed={self.seed}): "
            f"{len(self.groups)} clustered spaces, {len(self.skipped)} left unpruned"
        ]
        header = f"  {'producers':<44} {'width':>5} {'kept':>5}  cluster sizes"
        lines += [header, "  " + "-" * (len(header) - 2)]
        for g in self.groups:
            names = g.name
            if len(names) > 44:
                names = names[:41] + "..."
            sizes = [len(c) for c in g.clusters]
            tie = f"  (tied: {len(g.producers)} layers)" if len(g.producers) > 1 else ""
            lines.append(
                f"  {names:<44} {g.width:>5} {g.kept:>5}  {min(sizes)}-{max(sizes)}{tie}"
            )
        for names, reason in self.skipped:
            lines.append(f"  unpruned {', '.join(names)}: {reason}")
        return "\n".join(lines)

    def __str__(self):
        return self.summary()

    def __repr__(self):
        return (
            f"<ClusterPlan keep_ratio={self.keep_ratio} method={self.method!r} "
            f"groups={len(self.groups)} skipped={len(self.skipped)}>"
        )
