"""Pruning optimizers: drop-in `keras.optimizers.Optimizer` subclasses."""

from keras_sparse_momentum.optimizers.centripetal_sgd import CentripetalSGD
from keras_sparse_momentum.optimizers.gsm import GSMMomentum

__all__ = ["CentripetalSGD", "GSMMomentum"]
