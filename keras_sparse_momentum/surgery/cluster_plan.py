"""ClusterPlan: which filters Centripetal SGD makes identical, and what merging them touches.

Built on `ChannelGraph`: every non-pinned channel space with Dense/Conv
producers is one clustering unit. Producers whose outputs meet at a residual
`Add` (or `Multiply`, ...) share a space, hence one clustering (the C-SGD
authors' "follow" rule). Besides the producers' kernels and biases, the plan
lists every per-channel parameter living in a clustered space (through
`Concatenate` offsets and `Flatten` rows too): BatchNormalization gamma, beta
and moving statistics, DepthwiseConv kernels, PReLU alphas, and the depthwise
half of a SeparableConv reading the space. Those are the variables
`CentripetalSGD` pulls together and equalises, so that `strip` can keep one
channel per cluster without changing the function.
"""

import dataclasses
import math
import weakref

import keras
import numpy as np

from keras_sparse_momentum.surgery import graph as graph_lib
from keras_sparse_momentum.surgery import kmeans as kmeans_lib
from keras_sparse_momentum.surgery.rebuild import ChannelMap, composite_map

METHODS = ("kmeans", "even")
KERNEL, VECTOR, STATISTIC = "kernel", "vector", "statistic"


@dataclasses.dataclass
class ClusterGroup:
    """One clustered channel space: its producers (layer names) and the clusters."""

    producers: list
    width: int
    clusters: list

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

    def merge_matrix(self, width):
        """(width, width) M with x @ M = each channel replaced by its cluster mean."""
        matrix = np.eye(width)
        for cluster in self.clusters:
            matrix[np.ix_(cluster, cluster)] = 1.0 / len(cluster)
        return matrix

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


def _output_kernel(layer):
    """The kernel whose last axis is the layer's output channels."""
    return layer.pointwise_kernel if hasattr(layer, "pointwise_kernel") else layer.kernel


def _features(space):
    """(width, d) rows to cluster: each filter's flattened weights, over all tied producers."""
    blocks = []
    for layer in space.producers:
        kernel = keras.ops.convert_to_numpy(_output_kernel(layer))
        blocks.append(kernel.reshape(-1, kernel.shape[-1]).T)
    return np.concatenate(blocks, axis=1)


def _producer_merges(layer, clusters):
    merges = [VariableMerge(_output_kernel(layer).path, -1, KERNEL, clusters)]
    if getattr(layer, "bias", None) is not None:
        merges.append(VariableMerge(layer.bias.path, 0, VECTOR, clusters))
    return merges


def _transformer_merges(layer, clusters):
    """Per-channel parameters of BatchNorm, DepthwiseConv, PReLU (axes as `rebuild` slices)."""
    merges = []
    for weight in layer.weights:
        name = weight.name.split("/")[-1]
        axis = -2 if (name == "kernel" and len(weight.shape) >= 3) else -1
        if not weight.trainable:
            kind = STATISTIC
        elif name == "kernel":
            kind = KERNEL
        else:
            kind = VECTOR
        merges.append(VariableMerge(weight.path, axis, kind, clusters))
    return merges


def _layer_name(layer):
    return layer if isinstance(layer, str) else layer.name


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
            layers: None (every producer that can be pruned) or names/layers of
                Dense/Conv producers to cluster; a layer tied to others by a
                residual `Add` brings its whole tie group.
            seed: seed of the k-means start (the plan is deterministic).

        Raises:
            ValueError: bad `keep_ratio`/`method`, a subclassed model, a layer
                in `layers` that is not a producer or cannot be pruned (the
                reason is given), or nothing prunable at all.
        """
        keep_ratio = _check_keep_ratio(keep_ratio)
        if method not in METHODS:
            raise ValueError(
                f"ClusterPlan: `method` must be one of {METHODS}. Received: method={method!r}"
            )
        channel_graph = graph_lib.ChannelGraph(model)
        candidates = [s for s in channel_graph.spaces if s.is_base and s.producers]
        wanted = None
        if layers is not None:
            wanted = {_layer_name(layer) for layer in layers}
            known = {layer.name for s in candidates for layer in s.producers}
            unknown = sorted(wanted - known)
            if unknown:
                raise ValueError(
                    f"ClusterPlan: {unknown} are not Dense/Conv producers of model "
                    f"'{model.name}' that channel surgery understands."
                )
        groups, skipped = [], []
        for space in candidates:
            names = [layer.name for layer in space.producers]
            if wanted is not None and not wanted.intersection(names):
                continue
            if space.pinned:
                if wanted is not None:
                    raise ValueError(
                        f"ClusterPlan: cannot prune {names}: {'; '.join(space.pins)}."
                    )
                skipped.append((names, "; ".join(space.pins)))
                continue
            kept = max(1, math.ceil(round(keep_ratio * space.width, 6)))
            if method == "even":
                clusters = kmeans_lib.even_blocks(space.width, kept)
            else:
                clusters = kmeans_lib.kmeans(_features(space), kept, seed=seed)
            groups.append(ClusterGroup(names, space.width, clusters))
        if not groups:
            reasons = "; ".join(f"{n}: {r}" for n, r in skipped) or "no Dense/Conv layer"
            raise ValueError(
                f"ClusterPlan: nothing in model '{model.name}' can be clustered ({reasons})."
            )
        plan = cls(groups, [], skipped, keep_ratio, method, seed)
        plan.merges = plan._variable_merges(channel_graph)
        return plan.bind(model)

    def _variable_merges(self, channel_graph):
        maps = self.channel_maps(channel_graph, include_singletons=True)
        merges = {}

        def add(merge):
            merges.setdefault(merge.path, merge)

        for space in channel_graph.spaces:
            space_map = composite_map(space, maps)
            if space_map is None:
                continue
            if space.id in maps:
                for layer in space.producers:
                    for merge in _producer_merges(layer, space_map.groups):
                        add(merge)
            for layer in space.transformers:
                for merge in _transformer_merges(layer, space_map.groups):
                    add(merge)
            for layer in space.consumers:
                if getattr(layer, "depthwise_kernel", None) is not None:  # SeparableConv
                    add(VariableMerge(layer.depthwise_kernel.path, -2, KERNEL, space_map.groups))
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
        by_producers = {
            frozenset(layer.name for layer in s.producers): s
            for s in channel_graph.spaces
            if s.is_base and s.producers
        }
        maps = {}
        for group in self.groups:
            space = by_producers.get(frozenset(group.producers))
            if space is None or space.width != group.width or space.pinned:
                raise ValueError(
                    f"ClusterPlan does not match model '{channel_graph.model.name}': no "
                    f"prunable channel space of width {group.width} produced by exactly "
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
        values = {v.path: v for v in variables}
        for merge in self.merges:
            if merge.path in values:
                variable = values[merge.path]
                value = keras.ops.convert_to_numpy(variable)
                variable.assign(merge.equalize(value).astype(value.dtype))
        return distance

    def cluster_distance(self, model_or_variables):
        """max over trained variables and filters of ||w_i - cluster mean|| / max_j ||w_j||.

        0 means every cluster is already identical. Takes a model or a list of
        variables (those not in the plan are ignored).
        """
        variables = getattr(model_or_variables, "weights", model_or_variables)
        values = {v.path: v for v in variables}
        worst = 0.0
        for merge in self.merges:
            if merge.kind != STATISTIC and merge.path in values:
                value = keras.ops.convert_to_numpy(values[merge.path])
                worst = max(worst, merge.relative_distance(value))
        return worst

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
            names = ", ".join(g.producers)
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
