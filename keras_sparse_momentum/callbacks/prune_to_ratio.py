"""PruneToRatio: reach an exact global compression with any Keras optimizer."""

import math

import keras
import numpy as np

from keras_sparse_momentum import prunable as prunable_lib
from keras_sparse_momentum.callbacks.prox_iterative import ProxIterative
from keras_sparse_momentum.schedules import polynomial_sparsity

SCHEDULES = ("end", "polynomial", "auto", "prox_iterative")
SCOPES = ("global", "layer")


class _MaskConstraint(keras.constraints.Constraint):
    """Multiplies a variable by its mask after every optimizer update."""

    def __init__(self, mask, inner=None):
        self.mask = mask
        self.inner = inner

    def __call__(self, w):
        if self.inner is not None:
            w = self.inner(w)
        return w * keras.ops.cast(self.mask, w.dtype)


class PruneToRatio(keras.callbacks.Callback):
    """Prune a model to an exact compression ratio during `fit`, with any optimizer.

    `schedule="auto"` (the default) picks the schedule from the optimizer:
    `"end"` for GSMMomentum (which prunes by itself; its own final cut matches
    this one), `"prox_iterative"` for ProxNAG, and gradual `"polynomial"`
    pruning (what tfmot users expect) for every other optimizer, so
    `PruneToRatio(sparsity=0.9)` next to SGD or Adam prunes gradually and
    leaves the last quarter of `fit` to recover.

    `schedule="end"`: training is untouched; at `on_train_end` (after the
    optimizer's `finalize_variable_values`, so an EMA swap cannot undo it) one
    magnitude cut leaves exactly `ceil(N / C)` nonzero prunable weights, chosen
    globally (or `ceil(n_i / C)` per variable with `scope="layer"`), ties
    broken deterministically (earlier variable, then lower index).

    `schedule="polynomial"`: gradual magnitude pruning (Zhu & Gupta 2017, the
    schedule of tfmot's `PolynomialDecay`): the sparsity rises from
    `initial_sparsity` to the target along
    `s_t = s_f + (s_i - s_f) * (1 - (t - begin) / (end - begin)) ** power`,
    the masks are recomputed by magnitude every `frequency` optimizer steps and
    *held after every step*: each pruned variable gets a mask constraint that
    Keras's optimizers apply after each update, inside the compiled step (XLA
    included). The constraints are removed at the end of `fit`, where the
    exact cut is also made (a subclassed model is built by its first step, so
    its masks are held from the second step on). This is the Keras 3 replacement for tfmot's
    `prune_low_magnitude`, with no layer wrapping, for Sequential, functional
    and subclassed models alike.

    `schedule="prox_iterative"`: the Prox-NAG paper's iterative algorithm
    (needs `ProxNAG`; see `ProxIterative`): pruning phases with a linearly
    rising `l1`, the support mask held, growing fine-tune phases, then an
    exact trim to the target and a final fine-tune, all in one `fit`.

    The sparsity reached is written to `logs["sparsity"]` (each batch: the
    mask's; each epoch: measured on the weights), so the progress bar, History
    and a TensorBoard callback placed after this one show it.

    Args:
        compression: C >= 1: keep `ceil(N / C)` of the N prunable weights.
        sparsity: s in [0, 1): the fraction removed; give exactly one.
        schedule: "auto" (default), "end", "polynomial" or "prox_iterative".
            "end" with an optimizer that does not prune (SGD, Adam) is one cut
            with no recovery: only for a model that is fine-tuned afterwards.
        prunable: None (layer kernels of rank >= 2) or `callable(variable) -> bool`.
        scope: "global" (one ranking over all prunable weights) or "layer"
            (every variable at the same sparsity, like tfmot).
        begin_step: optimizer step at which gradual pruning starts.
        end_step: step at which the target is reached; default: 75 % of the
            steps of the `fit` call (the rest lets the network recover).
        frequency: steps between mask updates (tfmot's default, 100).
        initial_sparsity: sparsity at `begin_step`, in [0, target].
        power: exponent of the polynomial schedule (3, as in the paper).
    """

    def __init__(
        self,
        compression=None,
        sparsity=None,
        schedule="auto",
        prunable=None,
        scope="global",
        begin_step=0,
        end_step=None,
        frequency=100,
        initial_sparsity=0.0,
        power=3,
    ):
        super().__init__()
        owner = "PruneToRatio"
        self.ratio = prunable_lib.validate_ratio(compression, sparsity, owner)
        self.target_sparsity = 1.0 - 1.0 / self.ratio
        if schedule not in SCHEDULES:
            raise ValueError(
                f"{owner}: `schedule` must be one of {SCHEDULES}. "
                f"Received: schedule={schedule!r}"
            )
        if scope not in SCOPES:
            raise ValueError(
                f"{owner}: `scope` must be one of {SCOPES}. Received: scope={scope!r}"
            )
        for name, value in (("begin_step", begin_step), ("frequency", frequency)):
            if not isinstance(value, int) or value < (1 if name == "frequency" else 0):
                low = 1 if name == "frequency" else 0
                raise ValueError(
                    f"{owner}: `{name}` must be an int >= {low}. Received: {name}={value!r}"
                )
        if end_step is not None and (not isinstance(end_step, int) or end_step <= begin_step):
            raise ValueError(
                f"{owner}: `end_step` must be None or an int > begin_step "
                f"({begin_step}). Received: end_step={end_step!r}"
            )
        if not (0 <= initial_sparsity <= self.target_sparsity):
            raise ValueError(
                f"{owner}: `initial_sparsity` must be in [0, {self.target_sparsity:.4g}] "
                f"(the target). Received: initial_sparsity={initial_sparsity!r}"
            )
        if not (isinstance(power, (int, float)) and power > 0):
            raise ValueError(f"{owner}: `power` must be > 0. Received: power={power!r}")
        self.compression = compression
        self.sparsity = sparsity
        self.schedule = schedule
        self.prunable = prunable_lib.resolve(prunable)
        self.scope = scope
        self.begin_step = begin_step
        self.end_step = end_step
        self.frequency = frequency
        self.initial_sparsity = float(initial_sparsity)
        self.power = power
        self.reached_sparsity = None
        self.kept = None

    # -- schedule ---------------------------------------------------------

    def _resolved_schedule(self):
        if self.schedule != "auto":
            return self.schedule
        optimizer = getattr(self.model.optimizer, "inner_optimizer", self.model.optimizer)
        from keras_sparse_momentum.optimizers import GSMMomentum, ProxNAG

        if isinstance(optimizer, ProxNAG):
            return "prox_iterative"
        return "end" if isinstance(optimizer, GSMMomentum) else "polynomial"

    def sparsity_at(self, step):
        """The scheduled sparsity at optimizer step `step` (polynomial schedule)."""
        if step < self.begin_step:
            return 0.0
        progress = min(1.0, (step - self.begin_step) / (self._end - self.begin_step))
        return polynomial_sparsity(
            progress, self.initial_sparsity, self.target_sparsity, self.power
        )

    # -- masks ------------------------------------------------------------

    def _keep_masks(self, sparsity):
        """Boolean masks for `sparsity`, by magnitude, at the configured scope."""
        values = [keras.ops.convert_to_numpy(v) for v in self._variables]
        if self.scope == "global":
            keep = prunable_lib.kept_count(self._total, sparsity=sparsity)
            return prunable_lib.global_magnitude_masks(values, keep)
        return [
            prunable_lib.global_magnitude_masks(
                [value], prunable_lib.kept_count(value.size, sparsity=sparsity)
            )[0]
            for value in values
        ]

    def _apply_masks(self, masks):
        for variable, mask_var, mask in zip(self._variables, self._mask_vars, masks):
            mask_var.assign(mask.astype(mask_var.dtype))
            variable.assign(keras.ops.convert_to_numpy(variable) * mask)
        self._mask_sparsity = 1.0 - sum(int(m.sum()) for m in masks) / self._total

    def _measured_sparsity(self):
        nonzero = sum(
            int(np.count_nonzero(keras.ops.convert_to_numpy(v))) for v in self._variables
        )
        return 1.0 - nonzero / self._total

    # -- callback hooks ---------------------------------------------------

    def on_train_begin(self, logs=None):
        self._active = self._resolved_schedule()
        self._mask_sparsity = 0.0
        self._last_update = None
        self._variables = None
        self._driver = None
        if self._active == "prox_iterative":
            if self.scope != "global":
                raise ValueError("PruneToRatio(schedule='prox_iterative') needs scope='global'.")
            self._driver = ProxIterative(self.target_sparsity, self.prunable)
            self._driver.on_train_begin(self.model, self.params)
        if self.model.trainable_variables:  # else: a subclassed model, built by its first step
            self._setup()

    def _setup(self):
        self._variables = prunable_lib.prunable_variables(self.model, self.prunable)
        self._total = sum(int(math.prod(v.shape)) for v in self._variables)
        if self._active != "polynomial":
            return
        self._end = self.end_step
        if self._end is None:
            steps = self.params.get("steps")
            if not steps:
                raise ValueError(
                    "PruneToRatio(schedule='polynomial') needs `end_step` when "
                    "the number of steps per epoch is unknown (a dataset of "
                    "unknown length): pass end_step=..."
                )
            self._end = max(self.begin_step + 1, int(0.75 * steps * self.params["epochs"]))
        with self.model.distribute_strategy.scope():
            self._mask_vars = [
                keras.Variable(np.ones(v.shape, v.dtype), trainable=False, name="prune_mask")
                for v in self._variables
            ]
        self._saved_constraints = [v.constraint for v in self._variables]
        for variable, mask_var in zip(self._variables, self._mask_vars):
            variable.constraint = _MaskConstraint(mask_var, variable.constraint)
        self.model.make_train_function(force=True)
        self._update_masks()

    def _update_masks(self):
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        if step < self.begin_step or step > self._end + self.frequency:
            return
        slot = (min(step, self._end) - self.begin_step) // self.frequency
        if slot != self._last_update:
            self._last_update = slot
            self._apply_masks(self._keep_masks(self.sparsity_at(step)))

    def on_train_batch_begin(self, batch, logs=None):
        if self._variables is not None and self._active == "polynomial":
            self._update_masks()

    def on_train_batch_end(self, batch, logs=None):
        if self._variables is None:
            self._setup()
        if logs is not None and self._active == "polynomial":
            logs["sparsity"] = self._mask_sparsity
        if self._driver is not None:
            self._driver.on_train_batch_end(batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["sparsity"] = self._measured_sparsity()
        if self._driver is not None:  # measures the sparse iterate, not the extrapolation
            self._driver.on_epoch_end(epoch, logs)

    def on_train_end(self, logs=None):
        if self._variables is None:
            self._setup()
        if self._active == "polynomial":
            for variable, constraint in zip(self._variables, self._saved_constraints):
                variable.constraint = constraint
            self.model.make_train_function(force=True)
        masks = self._keep_masks(self.target_sparsity)
        for variable, mask in zip(self._variables, masks):
            value = keras.ops.convert_to_numpy(variable)
            variable.assign(np.where(mask, value, 0).astype(value.dtype))
        self.kept = sum(int(m.sum()) for m in masks)
        self.reached_sparsity = 1.0 - self.kept / self._total
        if self._driver is not None:
            self._driver.on_train_end()
