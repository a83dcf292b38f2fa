"""PruneToRatio: reach an exact global compression with any Keras optimizer."""

import math
import warnings

import keras
import numpy as np

from keras_sparse_momentum import prunable as prunable_lib
from keras_sparse_momentum.callbacks import state as state_lib
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
    the masks are recomputed by magnitude at steps `begin_step + k * frequency`
    (at the sparsity of that step) and at `end_step`, and *held after every
    step*: each pruned variable gets a mask constraint that
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
    and a TensorBoard callback placed after this one show it. After `fit`,
    `kept` and `reached_sparsity` are measured on the weights: fewer nonzeros
    than asked (an optimizer that zeroes weights itself, such as ProxNAG with
    another schedule than "prox_iterative") comes with a warning.

    The masks and the schedule's state live with the model's optimizer
    (callbacks/state.py), so `keras.callbacks.BackupAndRestore` resumes a
    killed `fit` exactly, the iterative rounds included, and the masks are
    state of the compiled step on JAX too.

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
        self._attached_to, self._holder, self._mask_vars = None, None, []
        self._driver, self._last_point = None, None

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

    def _update_point(self, step):
        """The last mask update at or before `step`: `begin_step + k * frequency`, or
        `end_step` from there on (None before `begin_step`)."""
        if step < self.begin_step:
            return None
        if step >= self._end:
            return self._end
        return step - (step - self.begin_step) % self.frequency

    def _next_point(self, point):
        """The update after `point` (None: the schedule is complete)."""
        if point is None:
            return self.begin_step
        return None if point >= self._end else min(point + self.frequency, self._end)

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

    def _target_count(self):
        """The nonzeros the target leaves: ceil(N (1 - s)) over all prunable weights,
        or per variable with scope="layer" (masks keep no more than the nonzeros)."""
        sizes = [int(math.prod(v.shape)) for v in self._variables]
        if self.scope == "global":
            sizes = [sum(sizes)]
        return sum(prunable_lib.kept_count(n, sparsity=self.target_sparsity) for n in sizes)

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

    # -- state (see callbacks/state.py) ---------------------------------------

    def set_model(self, model):
        super().set_model(model)
        if getattr(model, "optimizer", None) is not None and model.trainable_variables:
            self._attach()
        else:  # a subclassed model, built by its first step: attached then
            self._attached_to = None

    def _attach(self):
        """Create the masks and the rounds' host state (see callbacks/state.py),
        once per `fit`, before `BackupAndRestore` can restore them."""
        model = self.model
        if self._attached_to is model.optimizer:
            return  # attached already (e.g. fit called again after a crash)
        state_lib.build_optimizer(model)
        self._active = self._resolved_schedule()
        self._variables = prunable_lib.prunable_variables(model, self.prunable)
        self._total = sum(int(math.prod(v.shape)) for v in self._variables)
        self._mask_vars = []
        if self._active == "polynomial":
            self._mask_vars = [
                state_lib.step_variable(model, v.shape, "prune_mask") for v in self._variables
            ]
        self._holder = None
        if self._active == "prox_iterative":
            self._holder = state_lib.attach_host_state(self, self._host_state)
        self._attached_to = model.optimizer

    def _detach(self):
        optimizer = self.model.optimizer
        state_lib.release_step_variables(optimizer, self._mask_vars)
        state_lib.detach_host_state(optimizer, self._holder)
        self._attached_to, self._holder = None, None

    def _host_state(self):
        """The iterative rounds' state (saved only for them: the polynomial
        schedule's held mask is the weights' exact zeros, recomputed at the first
        step after a restore, at the same update point, so the same mask)."""
        return self._driver.host_state() if self._driver is not None else ({}, {})

    def _resume(self):
        """Take over the state a backup restored, if any, else start afresh
        (at the first `on_epoch_begin`, after every `on_train_begin`)."""
        if self._driver is None:
            return
        self.model  # noqa: B018 -- on JAX, brings the training state back into the variables
        restored = self._holder.take_restored()
        if restored is not None and restored[0]:
            self._driver.load_host_state(*restored)
        if not self._driver.started:
            self._driver.start()

    # -- callback hooks ---------------------------------------------------

    def on_train_begin(self, logs=None):
        self._mask_sparsity = 0.0
        self._last_point = None
        self._driver = None
        self._batches, self._epoch_start, self._resumed = 0, 0, False
        self._clock = state_lib.StepClock(
            lambda: int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        )
        if self._attached_to is None:
            self._variables = None  # a subclassed model, built by its first step
            return
        self._begin()

    def _begin(self):
        """Validate, plan and install the constraints (no state is changed here)."""
        if self._active == "prox_iterative":
            if self.scope != "global":
                raise ValueError("PruneToRatio(schedule='prox_iterative') needs scope='global'.")
            self._driver = ProxIterative(self.target_sparsity, self.prunable)
            self._driver.on_train_begin(self, self.params, self._variables)
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
        self._saved_constraints = [v.constraint for v in self._variables]
        for variable, mask_var in zip(self._variables, self._mask_vars):
            variable.constraint = _MaskConstraint(mask_var, variable.constraint)
        self.model.make_train_function(force=True)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = self._batches
        if not self._resumed and self._variables is not None:
            self._resumed = True
            self._resume()

    def _update_masks(self, batches):
        target = self._next_point(self._last_point)
        if target is None or not self._clock.reached(target, batches):
            return
        point = self._update_point(self._clock.step)
        if point != self._last_point:
            self._last_point = point
            self._apply_masks(self._keep_masks(self.sparsity_at(point)))

    def on_train_batch_begin(self, batch, logs=None):
        if self._variables is not None and self._active == "polynomial":
            self._update_masks(self._epoch_start + batch)

    def on_train_batch_end(self, batch, logs=None):
        self._batches = self._epoch_start + batch + 1
        if self._variables is None:
            self._attach()
            self._resumed = True
            self._begin()
            if self._active == "polynomial":
                self._update_masks(self._batches)
        if logs is not None and self._active == "polynomial":
            logs["sparsity"] = self._mask_sparsity
        if self._driver is not None:
            self._driver.on_train_batch_end(batch, self._batches, logs)

    def on_epoch_end(self, epoch, logs=None):
        self.model  # noqa: B018 -- on JAX, brings the training state back into the variables
        if logs is not None:
            logs["sparsity"] = self._measured_sparsity()
        if self._driver is not None:  # measures the sparse iterate, not the extrapolation
            self._driver.on_epoch_end(epoch, logs)

    def on_train_end(self, logs=None):
        model = self.model
        if self._variables is None:
            self._attach()
            self._begin()
        if self._active == "polynomial":
            for variable, constraint in zip(self._variables, self._saved_constraints):
                variable.constraint = constraint
        masks = self._keep_masks(self.target_sparsity)
        for variable, mask in zip(self._variables, masks):
            value = keras.ops.convert_to_numpy(variable)
            variable.assign(np.where(mask, value, 0).astype(value.dtype))
        asked = self._target_count()
        self.kept = sum(int(np.count_nonzero(keras.ops.convert_to_numpy(v)))
                        for v in self._variables)
        self.reached_sparsity = 1.0 - self.kept / self._total
        if self.kept < asked:
            warnings.warn(
                f"PruneToRatio: the model ends with {self.kept:,} nonzero prunable weights, "
                f"fewer than the {asked:,} asked (sparsity {self.reached_sparsity:.4f} above "
                f"the target {self.target_sparsity:.4f}): the optimizer itself left exact "
                "zeros (ProxNAG's L1 does), and a magnitude cut cannot bring them back. With "
                "ProxNAG use schedule='prox_iterative' (what 'auto' picks), whose L1 rounds "
                "stop at the target.",
                stacklevel=2,
            )
        if self._driver is not None and self._driver.started:
            self._driver.on_train_end()
        self._detach()
        model.make_train_function(force=True)
