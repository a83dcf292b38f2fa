"""Pruning optimizers: drop-in `keras.optimizers.Optimizer` subclasses."""

from keras_sparse_momentum.optimizers.gsm import GSMMomentum

__all__ = ["GSMMomentum"]
