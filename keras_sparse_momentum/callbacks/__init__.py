"""Callbacks that prune during `fit`."""

from keras_sparse_momentum.callbacks.aofp import AOFP
from keras_sparse_momentum.callbacks.prune_to_ratio import PruneToRatio

__all__ = ["AOFP", "PruneToRatio"]
