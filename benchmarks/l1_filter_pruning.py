"""The classic structured baseline: L1-norm filter pruning, then fine-tuning.

Li, Kadav, Durdanovic, Samet, Graf, "Pruning Filters for Efficient ConvNets"
(ICLR 2017): rank the filters of a trained layer by the L1 norm of their
weights, keep the largest, rebuild the thinner network, fine-tune. Layers tied
by a residual `Add` must keep the same channels, so their filters are ranked
by the summed L1 norm over all tied producers (one decision per channel
space, exactly the spaces a C-SGD `ClusterPlan` clusters), which lets the
baseline prune residual-tied layers to the same widths as C-SGD. The norms
are those of `cluster_plan.features` (every kernel slice of a channel, or of a
MultiHeadAttention head: its query, key and value slices), so attention heads
are ranked and removed the same way.
"""

import numpy as np

from keras_sparse_momentum.surgery.cluster_plan import features
from keras_sparse_momentum.surgery.graph import ChannelGraph
from keras_sparse_momentum.surgery.rebuild import ChannelMap, rebuild


def l1_prune(model, plan):
    """A thinner copy of `model` keeping, per clustered space of `plan`, the
    `kept` filters (heads) of largest L1 norm (summed over residual-tied producers).

    The copy's widths equal those of `ksm.strip(model, plan)`; its function is
    of course changed (that is what fine-tuning repairs).
    """
    graph = ChannelGraph(model)
    widths = {(g.unit, frozenset(g.producers)): g.kept for g in plan.groups}
    maps = {}
    for space in graph.base_spaces():
        kept = widths.get(space.key)
        if kept is None:
            continue
        norms = np.abs(features(space)).sum(axis=1)
        keep = np.sort(np.argsort(-norms, kind="stable")[:kept])
        maps[space.id] = ChannelMap.keep(keep)
    return rebuild(graph, maps, name=f"{model.name}_l1")
