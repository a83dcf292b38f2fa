"""The Prox-NAG paper's iterative prune / fine-tune algorithm (section 3, figure 5).

`PruneToRatio(sparsity=s)` runs it when the optimizer is `ProxNAG`
(`schedule="auto"` or `"prox_iterative"`), inside one `model.fit` call.
"""

import logging
import math
import warnings

import keras
import numpy as np

from keras_sparse_momentum import prunable as prunable_lib
from keras_sparse_momentum.callbacks import state as state_lib

logger = logging.getLogger("keras_sparse_momentum")

PRUNE, FINETUNE, FINAL = "prune", "finetune", "final"
PHASE_CODES = {PRUNE: 0, FINETUNE: 1, FINAL: 2}


class ProxIterative:
    """Reach an exact sparsity with Prox-NAG: prune, hold the mask, fine-tune, raise l1.

    Rounds `k = 1, 2, ...` of

    1. *Pruning phase*: ProxNAG with `l1 = k * l1_step` (raised linearly). The
       sparsity of the sparse iterate `w~` and the training loss are checked
       every `check_every` steps. The phase stops at the sparsity's local
       maximum (no new maximum for `patience` checks), when the loss rises
       sharply (two checks above `(1 + loss_rise) * first + loss_margin`,
       `first` being the phase's first check), or after
       `phase_steps`; the state at the maximum is restored. The support (sign)
       mask `M = (w~ != 0)` is then recorded and multiplied into `w~` after
       every later step, so sparsity never falls from round to round.
    2. *Fine-tune phase*: `l1 = 0` (plain Nesterov momentum) with `M` held,
       for `k * phase_steps / 2` steps: longer round after round, because late
       rounds decay the important weights more.

    When a check finds the target met, the last state at or below the target
    is trimmed by magnitude to exactly `ceil(N * (1 - sparsity))` nonzeros,
    held, and fine-tuned with `l1 = 0` for the rest of `fit` (the *final*
    phase). The budget is `epochs * steps` of the `fit` call: rounds must end
    by `1 - final_fraction` of it; if they do not, a warning says so and the
    model is trimmed by magnitude to the target there (or, at worst, by
    `PruneToRatio`'s exact cut at the end of `fit`).

    `l1_step` is calibrated from the model, not tuned by hand: a weight with
    no gradient pushing back shrinks by about `lr * l1 / (1 - momentum)` per
    step, so `l1_step` is set so that one pruning phase shrinks by
    `shrink_fraction` of the magnitude at the target quantile of `|w|`.
    The default 2.0 overshoots that estimate on purpose: the gradient pushes
    back on every weight that still matters, and behind BatchNorm it pushes
    harder as a layer's weights shrink (the layer is scale-invariant). With
    0.5 a LeNet-5 with BatchNorm ended its rounds at 37 % and 64 % sparsity
    for targets of 50 % and 90 % within 10 epochs (one seed); with 2.0 the
    rounds themselves reached the target in 17 of 18 runs of
    benchmarks/prox_nag_lenet5.py (LeNet-5 with and without BatchNorm,
    50 / 70 / 90 %, 3 seeds; the other stopped at 81 % of 90 % and was trimmed).

    Every epoch, `logs` receive `sparsity` (of `w~`), `l1`, `prox_round` and
    `prox_phase` (0 prune, 1 fine-tune, 2 final); `epoch_log` keeps the same
    with the phase's name, `rounds` one entry per finished pruning phase.

    The held support and `l1` are ProxNAG's own variables; everything else the
    rounds decide with (phase, round, loss windows, the best state of the
    pruning phase) is `host_state`, which `PruneToRatio` saves with the
    optimizer, so `BackupAndRestore` resumes inside a round. The step count is
    read only when a check is due (`StepClock`).

    Args:
        target_sparsity: in [0, 1).
        prunable: predicate for the prunable variables (as `PruneToRatio`).
        planned_rounds: rounds the budget is split for (4).
        final_fraction: share of the budget kept for the final fine-tune (0.25).
        checks_per_phase: checks per pruning phase (10).
        patience: checks without a new sparsity maximum that end a phase (3).
        loss_rise, loss_margin: the sharp-rise rule (1.0, 0.1).
        shrink_fraction: see above (2.0).
    """

    def __init__(
        self,
        target_sparsity,
        prunable,
        planned_rounds=4,
        final_fraction=0.25,
        checks_per_phase=10,
        patience=3,
        loss_rise=1.0,
        loss_margin=0.1,
        shrink_fraction=2.0,
    ):
        self.target_sparsity = float(target_sparsity)
        self.prunable = prunable
        self.planned_rounds = planned_rounds
        self.final_fraction = final_fraction
        self.checks_per_phase = checks_per_phase
        self.patience = patience
        self.loss_rise = loss_rise
        self.loss_margin = loss_margin
        self.shrink_fraction = shrink_fraction

    # -- set-up -----------------------------------------------------------

    def on_train_begin(self, owner, params, variables):
        """Validate and plan the rounds; nothing in the model or optimizer changes
        (a backup may be restored after this; `start` or `load_host_state` follows).

        Args:
            owner: the `PruneToRatio` callback (its `model` is synced on JAX).
            params: the callback params of `fit`.
            variables: the prunable variables.
        """
        from keras_sparse_momentum.optimizers import ProxNAG

        self._owner = owner
        model = self.model
        self.optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)
        if not isinstance(self.optimizer, ProxNAG):
            raise ValueError(
                "PruneToRatio(schedule='prox_iterative') needs the ProxNAG "
                f"optimizer; the model uses {type(self.optimizer).__name__}. "
                "Compile with ksm.ProxNAG(...) or use schedule='polynomial'."
            )
        if self.optimizer.l1_is_schedule:
            raise ValueError(
                "PruneToRatio(schedule='prox_iterative') sets ProxNAG's `l1` "
                "itself, round by round; construct ProxNAG with a float `l1` "
                "(it is restored after fit), not a schedule."
            )
        steps = params.get("steps")
        if not steps:
            raise ValueError(
                "PruneToRatio(schedule='prox_iterative') plans its rounds over "
                "the epochs of `fit` and needs the number of steps per epoch: "
                "pass a dataset of known length or `steps_per_epoch`."
            )
        self.budget = int(steps) * int(params["epochs"])
        self.verbose = params.get("verbose", 0)
        self.variables = variables
        foreign = [v.path for v in variables if not self.optimizer.is_prunable(v)]
        if foreign:
            raise ValueError(
                f"PruneToRatio prunes {foreign[:5]}, which ProxNAG does not "
                "treat as prunable: give both the same `prunable`."
            )
        self.others = [v for v in model.trainable_variables if not self.optimizer.is_prunable(v)]
        self.total = sum(int(math.prod(v.shape)) for v in variables)
        self.keep = prunable_lib.kept_count(self.total, sparsity=self.target_sparsity)
        usable = self.budget * (1.0 - self.final_fraction)
        rounds = self.planned_rounds
        self.phase_steps = max(1, int(usable / (rounds + rounds * (rounds + 1) / 4)))
        self.prune_deadline = int(usable)
        self.check_every = max(1, self.phase_steps // self.checks_per_phase)
        self.rounds, self.epoch_log = [], []
        self._best = None
        self._clock = state_lib.StepClock(self._iterations)
        self.started = False

    @property
    def model(self):
        return self._owner.model

    def start(self):
        """Begin the first round from the model as it is (a fresh `fit`)."""
        optimizer = self.optimizer
        self.initial_l1 = float(keras.ops.convert_to_numpy(optimizer.l1))
        self.start_step = self._iterations()
        optimizer.sync_iterates(self.variables)
        values = self._iterates()
        magnitudes = np.sort(np.concatenate([np.abs(v).ravel() for v in values]))
        quantile = float(magnitudes[min(self.total - 1, self.total - self.keep)])
        lr = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        self.l1_step = (
            self.shrink_fraction * quantile * (1.0 - optimizer.momentum)
            / (lr * self.phase_steps)
        )
        self.round = 1
        self._last_loss = (-1, 0.0)  # (batch index, running mean) within the epoch
        self._loss_sum, self._loss_count = 0.0, 0
        self._next_check = self.check_every
        self.started = True
        if self._sparsity(values) >= self.target_sparsity:
            self._trim(self._state())
        else:
            self._begin_pruning()

    # -- host state (carried by BackupAndRestore; see callbacks/state.py) ----

    _SCALARS = ("initial_l1", "start_step", "l1_step", "round", "phase", "l1", "_phase_start",
                "_finetune_steps", "_next_check", "_loss_sum", "_loss_count", "_last_loss",
                "_since_best", "_reference_loss", "_rising", "rounds", "epoch_log")

    def host_state(self):
        """(document, arrays): everything the rounds decide with, the best state of
        the current pruning phase included."""
        if not self.started:
            return {"started": False}, {}
        document = {name: getattr(self, name, None) for name in self._SCALARS}
        document["started"] = True
        arrays = {}
        if self.phase == PRUNE:
            sparsity, (iterates, others) = self._best
            document["best_sparsity"] = sparsity
            arrays.update({f"best_iterate_{i}": v for i, v in enumerate(iterates)})
            arrays.update({f"best_other_{i}": v for i, v in enumerate(others)})
        return document, arrays

    def load_host_state(self, document, arrays):
        """Continue from `host_state`'s output (the optimizer's own variables,
        l1 and support masks included, were restored with the model)."""
        if not document["started"]:
            return
        for name in self._SCALARS:
            value = document[name]
            setattr(self, name, tuple(value) if name == "_last_loss" else value)
        self.started = True
        if self.phase == PRUNE:
            iterates = [arrays[f"best_iterate_{i}"] for i in range(len(self.variables))]
            others = [arrays[f"best_other_{i}"] for i in range(len(self.others))]
            self._best = (document["best_sparsity"], (iterates, others))

    # -- state helpers ----------------------------------------------------

    def _iterations(self):
        self.model  # noqa: B018 -- on JAX, brings the training state back into the variables
        return int(keras.ops.convert_to_numpy(self.optimizer.iterations))

    def _iterates(self):
        return [
            keras.ops.convert_to_numpy(self.optimizer.sparse_iterate(v))
            for v in self.variables
        ]

    def _sparsity(self, values):
        return 1.0 - sum(int(np.count_nonzero(v)) for v in values) / self.total

    def _state(self):
        return (self._iterates(), [keras.ops.convert_to_numpy(v) for v in self.others])

    def _restore(self, state):
        iterates, others = state
        for variable, value in zip(self.variables, iterates):
            variable.assign(value)
            self.optimizer.sparse_iterate(variable).assign(value)
        for variable, value in zip(self.others, others):
            variable.assign(value)

    def _hold(self, iterates):
        for variable, value in zip(self.variables, iterates):
            self.optimizer.set_support(variable, value != 0)

    def _set_l1(self, value):
        self.l1 = float(value)
        self.optimizer.l1 = self.l1

    # -- phases -------------------------------------------------------------

    def _begin_pruning(self):
        self.phase = PRUNE
        self._set_l1(self.round * self.l1_step)
        self._phase_start = self._iterations()
        state = self._state()
        self._best = (self._sparsity(state[0]), state)
        self._since_best = 0
        self._reference_loss, self._rising = None, 0

    def _end_pruning(self, reason):
        sparsity, state = self._best
        self._restore(state)
        self._hold(state[0])
        self.rounds.append(
            {"round": self.round, "l1": self.l1, "sparsity": sparsity, "stop": reason}
        )
        self.phase = FINETUNE
        self._set_l1(0.0)
        self._phase_start = self._iterations()
        self._finetune_steps = max(1, self.round * self.phase_steps // 2)

    def _trim(self, state):
        """Restore `state`, cut it to exactly `keep` nonzeros by magnitude, hold them."""
        iterates, others = state
        masks = prunable_lib.global_magnitude_masks(iterates, self.keep)
        trimmed = [np.where(m, v, 0).astype(v.dtype) for v, m in zip(iterates, masks)]
        self._restore((trimmed, others))
        self._hold(trimmed)
        self.phase = FINAL
        self._set_l1(0.0)

    def _out_of_budget(self, where):
        warnings.warn(
            f"PruneToRatio(schedule='prox_iterative'): the pruning budget "
            f"({self.prune_deadline} of {self.budget} steps) ended in round "
            f"{self.round} ({where}) at sparsity "
            f"{self._sparsity(self._iterates()):.4f}, below the target "
            f"{self.target_sparsity:.4f}; trimming by magnitude to the target "
            "instead. Train for more epochs to let the L1 rounds get there.",
            stacklevel=2,
        )
        self._trim(self._state())

    def _check(self, loss):
        step = self._iterations() - self.start_step
        if self.phase == PRUNE:
            iterates = self._iterates()
            sparsity = self._sparsity(iterates)
            if sparsity >= self.target_sparsity:
                # Trimming cannot add weights back: cut from the last state
                # at or below the target (the current one if it is exact).
                self.rounds.append(
                    {"round": self.round, "l1": self.l1,
                     "sparsity": self.target_sparsity, "stop": "target"}
                )
                exact = sparsity == self.target_sparsity
                self._trim((iterates, self._state()[1]) if exact else self._best[1])
                return
            if self._reference_loss is None:
                self._reference_loss = loss
            rising = loss > (1 + self.loss_rise) * self._reference_loss + self.loss_margin
            self._rising = self._rising + 1 if rising else 0
            if not rising:  # a state with a sharply risen loss is never kept
                if sparsity > self._best[0]:
                    self._best = (sparsity, (iterates, self._state()[1]))
                    self._since_best = 0
                else:
                    self._since_best += 1
            if self._rising >= 2:  # two windows in a row: not batch noise
                self._end_pruning("loss")
            elif self._since_best >= self.patience:
                self._end_pruning("peak")
            elif self._iterations() - self._phase_start >= self.phase_steps:
                self._end_pruning("length")
            if self.phase == PRUNE and step >= self.prune_deadline:
                self._out_of_budget("pruning")
        elif self.phase == FINETUNE:
            if self._iterations() - self._phase_start >= self._finetune_steps:
                self.round += 1
                if step + self.phase_steps > self.prune_deadline:
                    self._out_of_budget("before pruning")
                else:
                    self._begin_pruning()

    # -- callback hooks ---------------------------------------------------------

    def on_train_batch_end(self, batch, batches, logs):
        """After the `batches`-th train batch of `fit` (`batch` within its epoch)."""
        if not self.started:  # a subclassed model, built by its first step
            self.start()
        if logs and "loss" in logs:  # Keras logs the epoch's running mean
            last_batch, last_mean = self._last_loss
            if batch <= last_batch:
                last_batch, last_mean = -1, 0.0
            mean = float(logs["loss"])
            self._loss_sum += mean * (batch + 1) - last_mean * (last_batch + 1)
            self._loss_count += batch - last_batch
            self._last_loss = (batch, mean)
        if self.phase == FINAL or not self._clock.reached(
            self.start_step + self._next_check, batches
        ):
            return
        self._next_check += self.check_every
        loss = self._loss_sum / max(1, self._loss_count)
        self._loss_sum, self._loss_count = 0.0, 0
        self._check(loss)

    def on_epoch_end(self, epoch, logs):
        sparsity = self._sparsity(self._iterates())
        record = {"epoch": epoch, "phase": self.phase, "round": self.round,
                  "l1": self.l1, "sparsity": sparsity}
        self.epoch_log.append(record)
        if logs is not None:
            logs.update(sparsity=sparsity, l1=self.l1, prox_round=self.round,
                        prox_phase=PHASE_CODES[self.phase])
        message = (
            f"prox_iterative epoch {epoch + 1}: phase={self.phase} "
            f"round={self.round} l1={self.l1:.3g} sparsity={sparsity:.4f}"
        )
        logger.info(message)
        if self.verbose:
            print(message)

    def on_train_end(self):
        """After `PruneToRatio`'s exact cut: warn if the rounds fell short, stop
        holding masks, restore `l1`, restart `w~` at the final weights."""
        if self.phase != FINAL:
            warnings.warn(
                f"PruneToRatio(schedule='prox_iterative'): fit ended in round "
                f"{self.round} ({self.phase} phase) at sparsity "
                f"{self._sparsity(self._iterates()):.4f}, below the target "
                f"{self.target_sparsity:.4f}; the final magnitude cut removes "
                "the rest. Train for more epochs.",
                stacklevel=2,
            )
        self.optimizer.release_support()
        self.optimizer.l1 = self.initial_l1
        self.optimizer.sync_iterates(self.variables)
