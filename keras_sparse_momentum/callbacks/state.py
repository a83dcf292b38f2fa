"""Where the pruning callbacks keep their state during `fit`: with the model's optimizer.

A callback's state must survive what Keras saves and restores mid-training
(`keras.callbacks.BackupAndRestore`: `model.save_weights` after an epoch,
`model.load_weights` in its `on_train_begin`; a `.keras` file written by
`ModelCheckpoint`) and, on JAX, reach a train step that is a pure function of
the model's and the optimizer's variables. Two kinds of state:

- *Step state*, what the compiled step reads: the masks that variable
  constraints multiply into the weights after every update (`step_variable`).
  On JAX they are optimizer variables: the stateless train step receives
  exactly the model's and the optimizer's variables, and any other
  `keras.Variable` would be a constant captured at trace time. On TensorFlow
  (whose step reads variables by reference) they are plain variables, so that
  the optimizer's variable list keeps the length a freshly compiled
  optimizer has and a `.keras` file written mid-`fit` (ModelCheckpoint) still
  loads the optimizer's state. On JAX such a file holds the masks among the
  optimizer's variables: `keras.models.load_model` restores the weights and
  skips the optimizer's variables, with Keras's warning.
- *Host state*, what a callback decides with between steps (search scores,
  round and phase, snapshots, the random generator, and the values of masks
  that cannot be recomputed from the weights): `HostState`, a holder attached
  to the optimizer that Keras's saving writes next to the optimizer's
  variables as a JSON document and numpy arrays, exactly (float64, big
  integers). `load_model` ignores it.

Both are created in `Callback.set_model`, which Keras calls for every
callback before any `on_train_begin`, so they exist when `BackupAndRestore`
loads a backup, wherever it sits in the callback list; a callback applies
restored host state at its first `on_epoch_begin`, after every
`on_train_begin`, and changes nothing in the model before then. Both are
detached at `on_train_end`, so a model saved after `fit` carries only the
optimizer's own variables.

This module is the one place that touches Keras's private hooks for this
(`optimizer._untrack_variable`, the model's `jax_state_sync` through
`Callback.model`).
"""

import contextlib
import json
import re

import keras
import numpy as np

_JSON = "json"
_ARRAY = "array_"


def strategy_scope(model):
    """The model's `tf.distribute` scope on TensorFlow, else a no-op."""
    strategy = getattr(model, "distribute_strategy", None)
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def build_optimizer(model):
    """Build `model.optimizer` on the model's variables if it is not built yet.

    Keras builds it at the first step; building it first fixes the order of
    its variables before a callback adds its own, the same in every run.
    """
    optimizer = model.optimizer
    if not optimizer.built and model.trainable_variables:
        with strategy_scope(model):
            optimizer.build(model.trainable_variables)


def step_variable(model, shape, name):
    """A float32 variable of ones (a mask) that the train step reads as state:
    an optimizer variable of `model.optimizer` where the step is stateless
    (JAX), else a plain variable in the model's distribution scope."""
    if keras.backend.backend() == "jax":
        return model.optimizer.add_variable(shape, initializer="ones", dtype="float32", name=name)
    with strategy_scope(model):
        return keras.Variable(np.ones(shape, "float32"), trainable=False, name=name)


def release_step_variables(optimizer, variables):
    """Remove `variables` (from `step_variable`) from the optimizer's variables, if there."""
    for variable in variables:
        if any(v is variable for v in optimizer.variables):
            optimizer._untrack_variable(variable)


def _plain(value):
    """numpy scalars and arrays in a JSON document, as Python numbers and lists."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


class HostState(keras.layers.Layer):
    """A callback's host state, saved and restored with the optimizer's variables.

    A layer only because Keras's saving walks layers (and optimizers) and calls
    their `save_own_variables` / `load_own_variables`; it has no weights and is
    never called. `save` returns `(document, arrays)`: a JSON-serialisable
    dict and a dict of numpy arrays; `restored` holds what a load brought back
    until `take_restored` hands it over.
    """

    def __init__(self, save, **kwargs):
        super().__init__(**kwargs)
        self._save = save
        self._restored = None

    def save_own_variables(self, store):
        document, arrays = self._save()
        text = json.dumps(document, default=_plain)
        store[_JSON] = np.frombuffer(text.encode(), np.uint8)
        for key, value in arrays.items():
            store[_ARRAY + key] = np.asarray(value)

    def load_own_variables(self, store):
        keys = list(store.keys())
        if _JSON not in keys:  # saved before this callback existed: nothing to restore
            return
        document = json.loads(bytes(np.asarray(store[_JSON], np.uint8)).decode())
        arrays = {k[len(_ARRAY):]: np.asarray(store[k]) for k in keys if k.startswith(_ARRAY)}
        self._restored = (document, arrays)

    def take_restored(self):
        """(document, arrays) from the last load, once; None if nothing was loaded."""
        restored, self._restored = self._restored, None
        return restored


def attach_host_state(callback, save):
    """Attach a `HostState` for `callback` to its model's optimizer; returns it.

    The attribute name is the callback's class and its rank among the callbacks
    of that class attached to this optimizer, so the same callbacks in the same
    order find their state again in a rebuilt model.
    """
    optimizer = callback.model.optimizer
    base = "_ksm_state_" + re.sub(r"(?<!^)(?=[A-Z])", "_", type(callback).__name__).lower()
    rank = 0
    while hasattr(optimizer, f"{base}_{rank}"):
        rank += 1
    holder = HostState(save, name=f"{base}_{rank}")
    setattr(optimizer, holder.name, holder)
    return holder


def detach_host_state(optimizer, holder):
    """Remove `holder` (from `attach_host_state`) from the optimizer."""
    if holder is not None and getattr(optimizer, holder.name, None) is holder:
        delattr(optimizer, holder.name)


class StepClock:
    """The optimizer's step count, read only when it may have reached a target.

    `optimizer.iterations` advances by at most one per train batch, so after
    reading it at step `s` it cannot reach `t` before `t - s` more batches.
    Reading it costs a device round trip (on JAX, a sync of the whole training
    state), so callbacks that act every so many steps read it only then.
    `read` returns the step; `batches` counts the train batches of this `fit`
    run so far; `step` is the last value read.
    """

    def __init__(self, read):
        self._read = read
        self.step = None
        self._read_at = 0

    def reached(self, target, batches):
        """Whether the step is >= `target` after `batches` train batches."""
        if self.step is not None and self.step + batches - self._read_at < target:
            return False
        self.step, self._read_at = self._read(), batches
        return self.step >= target
