"""Shared machinery: momentum SGD that sees every all-reduced gradient at once.

Keras applies an optimizer one variable at a time (`update_step`). The pruning
optimizers need one decision over *all* prunable variables per step (GSM's
global top-Q) or a per-variable gradient rewrite (C-SGD's cluster merge),
taken after gradients are all-reduced so that every replica decides the same.
`PruningSGD` hooks exactly there, in `_backend_update_step`: on TensorFlow it
all-reduces, calls `transform_gradients` once on the whole list, then runs the
usual per-variable update on each replica; on JAX the gradients are already
global and it transforms, then updates (`keras_sparse_momentum.backend` holds
every backend-specific call). Everything else (clipping, gradient accumulation,
EMA, loss scaling, XLA) is Keras's own.

The weight decay of these optimizers is the papers' *coupled* L2 term, added to
the gradient inside the momentum buffer (PyTorch SGD's `weight_decay`), applied
to variables of rank >= 2 only (never to biases or normalisation parameters),
and honouring `exclude_from_weight_decay`.
"""

import math

import keras
from keras import ops

from keras_sparse_momentum import backend
from keras_sparse_momentum import prunable as prunable_lib


def is_int(value):
    """True for a Python int that is not a bool (step counts, ramp lengths)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_unit_interval(value, name, owner, closed_right=False):
    """Raise ValueError unless `value` is a number in [0, 1) (or [0, 1])."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and 0 <= value and (value <= 1 if closed_right else value < 1)
    if not ok:
        interval = "[0, 1]" if closed_right else "[0, 1)"
        raise ValueError(
            f"{owner}: `{name}` must be a number in {interval}. "
            f"Received: {name}={value!r}"
        )
    return float(value)


def check_non_negative(value, name, owner):
    """Raise ValueError unless `value` is a finite number >= 0."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not (0 <= value < math.inf):
        raise ValueError(
            f"{owner}: `{name}` must be a finite number >= 0. "
            f"Received: {name}={value!r}"
        )
    return float(value)


class PruningSGD(keras.optimizers.SGD):
    """Momentum SGD with coupled weight decay and a whole-step gradient hook.

    Subclasses override `transform_gradients(grads, variables)`; with the
    identity transform and `weight_decay=0` this optimizer *is*
    `keras.optimizers.SGD(momentum, nesterov)`.
    """

    def __init__(
        self,
        learning_rate=0.01,
        momentum=0.9,
        nesterov=False,
        weight_decay=0.0,
        prunable=None,
        name=None,
        **kwargs,
    ):
        backend.check_backend()
        owner = type(self).__name__
        momentum = check_unit_interval(momentum, "momentum", owner)
        weight_decay = check_non_negative(weight_decay or 0.0, "weight_decay", owner)
        if isinstance(learning_rate, int) and not isinstance(learning_rate, bool):
            learning_rate = float(learning_rate)
        super().__init__(
            learning_rate=learning_rate,
            momentum=momentum,
            nesterov=bool(nesterov),
            name=name,
            **kwargs,
        )
        # The papers' coupled L2 coefficient; Keras's decoupled decay is off.
        self.weight_decay = weight_decay
        self.prunable = prunable
        self._is_prunable = prunable_lib.resolve(prunable)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._build_flags(variables)

    def _build_flags(self, variables):
        """Which variables are prunable / decayed; fails if nothing is prunable."""
        self._prunable_flags = [bool(self._is_prunable(v)) for v in variables]
        self._decay_flags = [
            len(v.shape) >= 2 and self._use_weight_decay(v) for v in variables
        ]
        if not any(self._prunable_flags):
            names = [v.path for v in variables][:8]
            raise ValueError(
                f"{type(self).__name__} found nothing to prune: none of the "
                f"{len(variables)} trainable variables {names} is selected by "
                "`prunable` (default: kernels of Dense/Conv layers). Pass "
                "`prunable=callable` or use a plain Keras optimizer."
            )
        self._prunable_sizes = [
            int(math.prod(v.shape)) if flag else 0
            for v, flag in zip(variables, self._prunable_flags)
        ]

    @property
    def prunable_count(self):
        """N: the number of prunable weights (after `build`)."""
        return sum(self._prunable_sizes)

    def is_prunable(self, variable):
        """Whether this built optimizer treats `variable` as prunable."""
        key = self._var_key(variable)
        index = self._trainable_variables_indices.get(key)
        return index is not None and self._prunable_flags[index]

    def transform_gradients(self, grads, variables):
        """Rewrite the all-reduced gradients of one step; identity here.

        Args:
            grads: list of gradient tensors (all-reduced across replicas;
                possibly `tf.IndexedSlices`: see `backend.dense_gradient`).
            variables: the matching variables (`tf.Variable`s on TensorFlow,
                Keras variables on JAX), identical on every replica; index
                them with `_get_variable_index`, read them with `backend.read`
                or any `keras.ops` function.
        """
        return grads

    def _apply_weight_decay(self, variables):
        """Keras's decoupled decay is replaced by the coupled term in `update_step`."""

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        backend.update_all(self, grads, trainable_variables, learning_rate)

    def update_step(self, gradient, variable, learning_rate):
        """SGD step on `gradient + weight_decay * variable` (coupled decay)."""
        super().update_step(self.coupled_gradient(gradient, variable), variable, learning_rate)

    def coupled_gradient(self, gradient, variable):
        """`gradient + weight_decay * variable` where decay applies, else `gradient`."""
        if self.weight_decay and self._decay_flags[self._get_variable_index(variable)]:
            gradient = ops.add(
                ops.cast(backend.dense_gradient(gradient), variable.dtype),
                ops.multiply(variable, ops.cast(self.weight_decay, variable.dtype)),
            )
        return gradient

    def prunable_trainables(self, var_list):
        """The members of `var_list` this optimizer treats as prunable."""
        return [v for v in var_list if self.is_prunable(v)]

    def get_config(self):
        config = super().get_config()
        config["prunable"] = (
            None
            if self.prunable is None
            else keras.saving.serialize_keras_object(self.prunable)
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        if isinstance(config.get("prunable"), dict):
            config["prunable"] = keras.saving.deserialize_keras_object(
                config["prunable"], custom_objects=custom_objects
            )
        return super().from_config(config, custom_objects=custom_objects)
