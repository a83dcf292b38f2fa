"""Pruning optimizers: drop-in `keras.optimizers.Optimizer` subclasses."""

from keras_sparse_momentum.optimizers.centripetal_sgd import CentripetalSGD
from keras_sparse_momentum.optimizers.gsm import GSMMomentum
from keras_sparse_momentum.optimizers.prox_nag import ProxNAG

__all__ = ["CentripetalSGD", "GSMMomentum", "ProxNAG"]
