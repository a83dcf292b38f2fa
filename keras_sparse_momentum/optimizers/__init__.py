"""Pruning optimizers: drop-in `keras.optimizers.Optimizer` subclasses."""

from keras_sparse_momentum.optimizers.gsm import GSMMomentum
from keras_sparse_momentum.optimizers.prox_nag import ProxNAG

__all__ = ["GSMMomentum", "ProxNAG"]
