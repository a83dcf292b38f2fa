"""Prox-NAG: proximal L1 on a Nesterov path (Zhou, Chen, Bao, Tao, 2023)."""

import keras
from keras import ops

from keras_sparse_momentum import backend
from keras_sparse_momentum.optimizers import base

_SCHEDULE = keras.optimizers.schedules.LearningRateSchedule


def soft_threshold(x, threshold):
    """The proximal operator of `threshold * ||x||_1`: `sign(x) * max(|x| - threshold, 0)`."""
    return ops.multiply(ops.sign(x), ops.maximum(ops.subtract(ops.abs(x), threshold), 0))


@keras.saving.register_keras_serializable(package="keras_sparse_momentum")
class ProxNAG(base.PruningSGD):
    """Prox-NAG: L1 soft-thresholding on a Nesterov momentum path; exact zeros.

    Reference: Zhou, Chen, Bao, Tao. "Model pruning algorithm based on sparse
    optimization and Nesterov momentum strategy" (2023).

    Solves `min L(w) + l1 * ||w||_1` over the prunable weights (default:
    kernels of Dense/Conv layers) with two sequences: `w`, where gradients are
    taken (the model's variables during training), and the sparse iterate
    `w~` (optimizer state, `w~_0 = w_0`). Each step:

    ```python
    w_hat = w - learning_rate * g
    w~_new = sign(w_hat) * max(|w_hat| - learning_rate * l1, 0)   # soft threshold
    w = w~_new + momentum * (w~_new - w~)                          # extrapolate
    w~ = w~_new
    ```

    Non-prunable variables (biases, normalisation parameters) follow plain
    Nesterov momentum SGD. With `l1=0` the whole optimizer *is*
    `keras.optimizers.SGD(momentum=momentum, nesterov=True)`: Keras's velocity
    is exactly `w~_new - w~`. Prunable variables keep `w~` instead of a
    momentum buffer, so the optimizer holds one slot per variable, as SGD does.

    At the end of `fit` (`finalize_variable_values`) the prunable variables
    receive `w~`, so the trained model holds exact zeros. With `use_ema=True`
    the moving average tracks `w~` (not the extrapolated point) and the final
    weights are the average restricted to the support of the last `w~`.

    Sparsity depends on `l1` only implicitly (a weight stays at zero while
    `|dL/dw| <= l1`). To reach a given sparsity without tuning `l1`, use
    `ksm.PruneToRatio(sparsity=s)`: with this optimizer it runs the paper's
    iterative prune / fine-tune algorithm (see `ProxIterative`).

    If you assign new values to the model's prunable variables between two
    `fit` calls that share this (built) optimizer, call `sync_iterates` so
    that `w~` restarts from them.

    Args:
        learning_rate: float or schedule. Defaults to 0.01.
        momentum: float in [0, 1). Defaults to 0.9.
        l1: float >= 0, or a schedule (a `LearningRateSchedule` or a callable
            of the step) giving the L1 strength. Defaults to 1e-5. A float can
            be changed between steps with `optimizer.l1 = value`.
        prunable: None (layer kernels of rank >= 2) or a callable
            `prunable(variable) -> bool`.
        **kwargs: the standard Keras optimizer arguments (`clipnorm`,
            `global_clipnorm`, `clipvalue`, `use_ema`, `ema_momentum`,
            `loss_scale_factor`, `gradient_accumulation_steps`, ...).
            `weight_decay` is the coupled L2 term of `PruningSGD` (elastic net
            on prunable kernels); it defaults to 0.
    """

    def __init__(
        self,
        learning_rate=0.01,
        momentum=0.9,
        l1=1e-5,
        prunable=None,
        name=None,
        **kwargs,
    ):
        owner = type(self).__name__
        if not (isinstance(l1, _SCHEDULE) or callable(l1)):
            l1 = base.check_non_negative(l1, "l1", owner)
        super().__init__(
            learning_rate=learning_rate,
            momentum=momentum,
            nesterov=True,
            prunable=prunable,
            name=name,
            **kwargs,
        )
        if isinstance(l1, float):
            with keras.name_scope(self.name, caller=self):
                l1 = keras.Variable(
                    l1,
                    name="l1",
                    dtype=keras.backend.floatx(),
                    trainable=False,
                    aggregation="only_first_replica",
                )
        self._l1 = l1

    # -- L1 strength ------------------------------------------------------

    @property
    def l1(self):
        """The current L1 strength (a variable, or the schedule's value now)."""
        if isinstance(self._l1, keras.Variable):
            return self._l1
        return self._l1(self.iterations)

    @l1.setter
    def l1(self, value):
        if not isinstance(self._l1, keras.Variable):
            raise TypeError(
                f"{type(self).__name__}: `l1` is a schedule and cannot be "
                "assigned; construct the optimizer with a float `l1` instead."
            )
        self._l1.assign(base.check_non_negative(value, "l1", type(self).__name__))

    @property
    def l1_is_schedule(self):
        """Whether `l1` was given as a schedule (it cannot then be assigned)."""
        return not isinstance(self._l1, keras.Variable)

    # -- state --------------------------------------------------------------

    def build(self, variables):
        if self.built:
            return
        # Keras's Optimizer.build (indices, EMA, accumulators); SGD.build is
        # skipped because prunable variables keep `w~` instead of a momentum.
        super(keras.optimizers.SGD, self).build(variables)
        self._build_flags(variables)
        self.momentums = []
        if self.momentum != 0:
            self.momentums = [
                None if flag else self.add_variable_from_reference(v, "momentum")
                for v, flag in zip(variables, self._prunable_flags)
            ]
        self._sparse_iterates = [
            self.add_variable_from_reference(v, "sparse_iterate") if flag
            else None
            for v, flag in zip(variables, self._prunable_flags)
        ]
        self._supports = [  # boolean: a quarter of w~'s memory in float32
            self.add_variable(v.shape, initializer="ones", dtype="bool",
                              name=f"{v.path.replace('/', '_')}_support",
                              layout=getattr(v, "_layout", None)) if flag else None
            for v, flag in zip(variables, self._prunable_flags)
        ]

    def sparse_iterate(self, variable):
        """The optimizer variable holding `w~` for the prunable `variable`.

        Before the first step it holds zeros (`w~_0` is the variable itself).
        """
        return self._sparse_iterates[self._get_variable_index(variable)]

    def sync_iterates(self, var_list):
        """Restart `w~` at the current values of the prunable members of `var_list`."""
        for variable in self.prunable_trainables(var_list):
            # A copy: on JAX assigning a variable shares its buffer, and `fit`
            # donates every state buffer once ("donate the same buffer twice").
            self.sparse_iterate(variable).assign(ops.copy(variable))

    # -- support masks (used by the iterative pruning algorithm) -----------

    def set_support(self, variable, mask):
        """Hold the support `mask` (bool or 0/1) for the prunable `variable`."""
        self._supports[self._get_variable_index(variable)].assign(ops.cast(mask, "bool"))

    def release_support(self):
        """Stop holding supports: every support mask back to all ones."""
        for holder in self._supports:
            if holder is not None:
                holder.assign(ops.ones(holder.shape, "bool"))

    # -- the step -----------------------------------------------------------

    def update_step(self, gradient, variable, learning_rate):
        """Soft-thresholded Nesterov step on prunable variables, Nesterov SGD elsewhere."""
        index = self._get_variable_index(variable)
        if not self._prunable_flags[index]:
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        gradient = ops.cast(
            backend.dense_gradient(self.coupled_gradient(gradient, variable)), dtype
        )
        previous = self._sparse_iterates[index]
        # `w~_0 = w_0`. Keras usually builds the optimizer while tracing the
        # train step, where a slot cannot be initialised from a variable, so
        # the first step reads `w` instead of the (zero-initialised) slot.
        previous_value = ops.cond(
            ops.equal(self.iterations, 0),
            lambda: ops.convert_to_tensor(variable),
            lambda: ops.convert_to_tensor(previous),
        )
        iterate = soft_threshold(
            ops.subtract(variable, ops.multiply(lr, gradient)),
            ops.multiply(lr, ops.cast(self.l1, dtype)),
        )
        iterate = ops.where(ops.convert_to_tensor(self._supports[index]), iterate, ops.zeros_like(iterate))
        momentum = ops.cast(self.momentum, dtype)
        self.assign(
            variable,
            ops.add(iterate, ops.multiply(momentum, ops.subtract(iterate, previous_value))),
        )
        self.assign(previous, iterate)

    def _update_model_variables_moving_average(self, trainable_variables):
        """EMA of the output: `w~` for prunable variables, the variable elsewhere."""
        super()._update_model_variables_moving_average(
            [
                self._sparse_iterates[i] if flag else v
                for i, (v, flag) in enumerate(zip(trainable_variables, self._prunable_flags))
            ]
        )

    def finalize_variable_values(self, var_list):
        """Write the sparse iterate `w~` (or its EMA on `w~`'s support) into the model."""
        super().finalize_variable_values(var_list)
        if int(ops.convert_to_numpy(self.iterations)) == 0:
            return  # no step taken: the variables are `w~_0` already
        for variable in self.prunable_trainables(var_list):
            iterate = self.sparse_iterate(variable)
            if self.use_ema:
                value = ops.convert_to_tensor(variable)
                variable.assign(ops.where(ops.not_equal(iterate, 0), value, ops.zeros_like(value)))
            else:
                variable.assign(ops.copy(iterate))  # not shared: see sync_iterates

    # -- config ---------------------------------------------------------------

    def get_config(self):
        config = super().get_config()
        config.pop("nesterov")
        if isinstance(self._l1, keras.Variable):
            config["l1"] = float(ops.convert_to_numpy(self._l1))
        else:
            config["l1"] = keras.saving.serialize_keras_object(self._l1)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        if isinstance(config.get("l1"), dict):
            config["l1"] = keras.saving.deserialize_keras_object(
                config["l1"], custom_objects=custom_objects
            )
        return super().from_config(config, custom_objects=custom_objects)
