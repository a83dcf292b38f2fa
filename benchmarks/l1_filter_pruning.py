"""The classic structured baseline: L1-norm filter pruning, then fine-tuning.

Li, Kadav, Durdanovic, Samet, Graf, "Pruning Filters for Efficient ConvNets"
(ICLR 2017): rank the filters of a trained layer by the L1 norm of their
weights, keep the largest, rebuild the thinner network, fine-tune. Layers tied
by a residual `Add` must keep the same channels, so their filters are ranked
by the summed L1 norm over all tied producers (one decision per channel
space, exactly the spaces a C-SGD `ClusterPlan` clusters), which lets the
baseline prune residual-tied layers to the same widths as C-SGD.
"""

import keras
import numpy as np

from keras_sparse_momentum.surgery.graph import ChannelGraph
from keras_sparse_momentum.surgery.rebuild import ChannelMap, rebuild


def _output_kernel(layer):
    return layer.pointwise_kernel if hasattr(layer, "pointwise_kernel") else layer.kernel


def l1_prune(model, plan):
    """A thinner copy of `model` keeping, per clustered space of `plan`, the
    `kept` filters of largest L1 norm (summed over residual-tied producers).

    The copy's widths equal those of `ksm.strip(model, plan)`; its function is
    of course changed (that is what fine-tuning repairs).
    """
    graph = ChannelGraph(model)
    widths = {frozenset(g.producers): g.kept for g in plan.groups}
    maps = {}
    for space in graph.base_spaces():
        kept = widths.get(frozenset(layer.name for layer in space.producers))
        if kept is None:
            continue
        norms = np.zeros(space.width)
        for layer in space.producers:
            kernel = keras.ops.convert_to_numpy(_output_kernel(layer))
            norms += np.abs(kernel.reshape(-1, kernel.shape[-1])).sum(axis=0)
        keep = np.sort(np.argsort(-norms, kind="stable")[:kept])
        maps[space.id] = ChannelMap.keep(keep)
    return rebuild(graph, maps, name=f"{model.name}_l1")
