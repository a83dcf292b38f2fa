"""Crash and resume: every method ends with the same model as an uninterrupted run.

Each test trains a tiny model three times, everything rebuilt from code as a
new process would: uninterrupted; interrupted (a callback raises at the start
of an epoch, after `BackupAndRestore` saved the previous one, as Keras's own
BackupAndRestore tests do); resumed from that backup. The interruption is
placed inside the method's state: mid-ramp (GSM, polynomial), inside a
pruning round (ProxNAG's iterative rounds), mid-search (AOFP), mid-training
(C-SGD).
"""

import warnings

import keras
import numpy as np
import pytest

import keras_sparse_momentum as ksm
from support import (classification_data, compile_for_test, kernels, mlp, nonzeros,
                     tensorflow_only)

EPOCHS, BATCH = 6, 32


class _Interrupted(Exception):
    pass


class _Crash(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise _Interrupted(f"killed before epoch {epoch}")


def _numpy(model):
    return [keras.ops.convert_to_numpy(v) for v in model.weights]


def max_difference(a, b):
    return max(float(np.max(np.abs(x - y), initial=0.0)) for x, y in zip(_numpy(a), _numpy(b)))


def crash_and_resume(build, data, crash_epoch, backup_dir, epochs=EPOCHS, backup_first=False):
    """(uninterrupted model and callbacks, interrupted ones, resumed ones).

    `build()` returns (model, callbacks), seeded, from code. The resumed run
    lists `BackupAndRestore` first or last (`backup_first`): a callback's state
    must come back whether the backup is loaded before or after its
    `on_train_begin`.
    """
    x, y = data

    def fit(model, callbacks):
        model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0,
                  callbacks=callbacks)

    whole = build()
    fit(*whole)
    backup = keras.callbacks.BackupAndRestore(str(backup_dir))
    crashed = build()
    with pytest.raises(_Interrupted):
        fit(crashed[0], [backup, *crashed[1], _Crash(crash_epoch)])
    resumed = build()
    restore = [keras.callbacks.BackupAndRestore(str(backup_dir))]
    fit(resumed[0], restore + resumed[1] if backup_first else resumed[1] + restore)
    return whole, crashed, resumed


def checkpoint_and_continue(build, data, crash_epoch, path, epochs=EPOCHS):
    """(uninterrupted model and callbacks, model loaded from a `.keras` file written
    mid-training by ModelCheckpoint and trained on with rebuilt callbacks)."""
    x, y = data
    kwargs = dict(batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0)
    whole = build()
    whole[0].fit(x, y, callbacks=whole[1], **kwargs)
    crashed = build()
    checkpoint = keras.callbacks.ModelCheckpoint(str(path))
    with pytest.raises(_Interrupted):
        crashed[0].fit(x, y, callbacks=[*crashed[1], checkpoint, _Crash(crash_epoch)], **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the optimizer's state loads: no "Skipping" warning
        model = keras.saving.load_model(str(path))
    callbacks = build()[1]
    model.fit(x, y, callbacks=callbacks, initial_epoch=crash_epoch, **kwargs)
    return whole, (model, callbacks)


def _data():
    return classification_data(n=256)


def _steps():
    return EPOCHS * 256 // BATCH


# -- the five methods ----------------------------------------------------------------


def test_gsm_for_budget_resumed_mid_ramp(tmp_path):
    def build():
        keras.utils.set_random_seed(0)
        opt = ksm.GSMMomentum.for_budget(_steps(), compression=8, learning_rate=0.1,
                                         momentum=0.9, nesterov=True)
        return compile_for_test(mlp(), opt), []

    whole, crashed, resumed = crash_and_resume(build, _data(), 2, tmp_path / "backup")
    opt = crashed[0].optimizer
    step = int(opt.iterations.numpy())  # the crash is inside the ramp
    assert opt.ramp_begin_step < step < opt.ramp_steps
    report("GSMMomentum.for_budget", whole[0], resumed[0])
    assert max_difference(whole[0], resumed[0]) == 0.0
    assert nonzeros(kernels(resumed[0])) == whole[0].optimizer.kept_count


def test_polynomial_prune_to_ratio_resumed_mid_ramp(tmp_path):
    def build():
        keras.utils.set_random_seed(0)
        model = compile_for_test(mlp(), keras.optimizers.SGD(0.05, momentum=0.9))
        return model, [ksm.PruneToRatio(sparsity=0.9, schedule="polynomial", frequency=3)]

    whole, crashed, resumed = crash_and_resume(build, _data(), 2, tmp_path / "backup",
                                               backup_first=True)
    prune = crashed[1][0]
    step = int(crashed[0].optimizer.iterations.numpy())
    assert 0 < prune.sparsity_at(step) < 0.9 and step % 3  # mid-ramp, mid-slot
    report("PruneToRatio polynomial + SGD", whole[0], resumed[0])
    assert max_difference(whole[0], resumed[0]) == 0.0
    assert resumed[1][0].kept == whole[1][0].kept


@tensorflow_only("held masks are plain variables only there; on JAX they are optimizer "
                 "variables, so load_model skips a mid-fit file's optimizer state with "
                 "Keras's warning (callbacks/state.py); JAX resumes through BackupAndRestore "
                 "(test_on_jax.py)")
def test_polynomial_prune_to_ratio_continues_from_a_keras_file(tmp_path):
    """TensorFlow: the masks are not optimizer variables, so the file's optimizer state
    loads; a new PruneToRatio recomputes the held mask from the weights' exact zeros."""
    def build():
        keras.utils.set_random_seed(0)
        model = compile_for_test(mlp(), keras.optimizers.SGD(0.05, momentum=0.9))
        return model, [ksm.PruneToRatio(sparsity=0.9, schedule="polynomial", frequency=3)]

    whole, loaded = checkpoint_and_continue(build, _data(), 2, tmp_path / "mid.keras")
    assert max_difference(whole[0], loaded[0]) == 0.0
    assert loaded[1][0].kept == whole[1][0].kept


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX only: masks as optimizer variables")
def test_on_jax_a_keras_file_with_held_masks_loads_the_weights_not_the_optimizer_state(tmp_path):
    """What README's Backends section says: the weights load exactly, the optimizer's
    state (with the masks among its variables) is skipped with Keras's warning."""
    x, y = _data()
    keras.utils.set_random_seed(0)
    model = compile_for_test(mlp(), keras.optimizers.SGD(0.05, momentum=0.9))
    prune = ksm.PruneToRatio(sparsity=0.9, schedule="polynomial", frequency=3)
    checkpoint = keras.callbacks.ModelCheckpoint(str(tmp_path / "mid.keras"))
    with pytest.raises(_Interrupted):
        model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0,
                  callbacks=[prune, checkpoint, _Crash(2)])
    with pytest.warns(UserWarning, match="Skipping variable loading for optimizer"):
        loaded = keras.saving.load_model(str(tmp_path / "mid.keras"))
    assert max_difference(model, loaded) == 0.0


def _functional_mlp():
    """`mlp()` as a functional model with named layers."""
    x = inputs = keras.Input((16,))
    for i, units in enumerate((32, 24)):
        x = keras.layers.Dense(units, activation="relu", name=f"hidden{i}")(x)
    return keras.Model(inputs, keras.layers.Dense(4, name="logits")(x))


@pytest.mark.parametrize("architecture", ["functional", "sequential"])
def test_centripetal_sgd_resumed_mid_training(tmp_path, architecture):
    """A Sequential's variables are 'sequential/dense/kernel' when built from code and
    'dense/kernel' from `load_model`: the plan in the optimizer's config still finds them."""
    def build():
        keras.utils.set_random_seed(0)
        model = _functional_mlp() if architecture == "functional" else mlp(name="sequential")
        plan = ksm.ClusterPlan.from_model(model, keep_ratio=0.5)
        opt = ksm.CentripetalSGD(plan, 0.05, centripetal_strength=0.3)
        return compile_for_test(model, opt), []

    whole, _, resumed = crash_and_resume(build, _data(), 3, tmp_path / "backup")
    report("CentripetalSGD", whole[0], resumed[0])
    assert max_difference(whole[0], resumed[0]) == 0.0
    # From a .keras file: the plan comes back in the optimizer's config, unbound.
    whole, loaded = checkpoint_and_continue(build, _data(), 3, tmp_path / "mid.keras")
    assert isinstance(loaded[0].optimizer, ksm.CentripetalSGD)
    assert max_difference(whole[0], loaded[0]) == 0.0
    plan = loaded[0].optimizer.plan
    assert plan.cluster_distance(loaded[0]) == 0.0
    assert len(plan.planned(loaded[0].weights)) == len(plan.merges) == 4
    assert max_difference(ksm.strip(whole[0], whole[0].optimizer.plan),
                          ksm.strip(loaded[0], plan)) == 0.0


def test_prox_nag_iterative_rounds_resumed_inside_a_pruning_round(tmp_path):
    def build():
        keras.utils.set_random_seed(0)
        model = compile_for_test(mlp(), ksm.ProxNAG(0.05, momentum=0.9, l1=1e-4))
        return model, [ksm.PruneToRatio(sparsity=0.8, schedule="auto")]

    data = classification_data(n=128)  # 4 steps an epoch: rounds span several epochs
    whole, crashed, resumed = crash_and_resume(build, data, 2, tmp_path / "backup", epochs=12)
    driver = crashed[1][0]._driver
    assert driver.phase == "prune" and driver.round >= 2  # inside a later pruning round
    report("ProxNAG + PruneToRatio auto", whole[0], resumed[0])
    assert max_difference(whole[0], resumed[0]) == 0.0
    assert resumed[1][0]._driver.rounds == whole[1][0]._driver.rounds


def _cnn():
    x = inputs = keras.Input((8, 8, 1))
    for i, filters in enumerate((8, 12)):  # named: the events name them
        x = keras.layers.Conv2D(filters, 3, padding="same", name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(4)(x))


def _images(n=256, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 8, 8, 1)).astype("float32")
    y = (x[:, :4].mean(axis=(1, 2, 3)) > 0) * 2 + (x[:, :, :4].mean(axis=(1, 2, 3)) > 0)
    return x, y.astype("int32")


def test_aofp_resumed_mid_search(tmp_path):
    probe = _images(64, seed=1)[0]

    def build():
        keras.utils.set_random_seed(0)
        model = compile_for_test(_cnn(), keras.optimizers.SGD(0.05, momentum=0.9))
        return model, [ksm.AOFP(0.4, probe_data=probe, thresh=0.05, iters_per_half=3,
                                measure_every=1, seed=0, thresh_growth=2.0)]

    whole, crashed, resumed = crash_and_resume(build, _images(), 2, tmp_path / "backup",
                                               backup_first=True)
    aofp = crashed[1][0]
    assert aofp.events and any(s.iterations for s in aofp._searches)  # between decisions
    assert whole[1][0].events[-1]["step"] > aofp._step  # more decisions after the crash
    report("AOFP", whole[0], resumed[0])
    assert max_difference(whole[0], resumed[0]) == 0.0
    assert resumed[1][0].widths == whole[1][0].widths
    assert resumed[1][0].events == whole[1][0].events


def report(name, whole, resumed):
    print(f"RESUME {name}: max |uninterrupted - resumed| = {max_difference(whole, resumed):.3g}")
