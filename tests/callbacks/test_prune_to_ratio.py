"""PruneToRatio: exact counts, masks held every step, any optimizer, any model kind."""

import math

import keras
import numpy as np
import pytest

import keras_sparse_momentum as ksm
from support import classification_data, compile_for_test, kernels, mlp, nonzeros, top_magnitude_masks


def _size(variables):
    return sum(int(np.prod(v.shape)) for v in variables)


class _Recorder(keras.callbacks.Callback):
    """Records, after every batch, the nonzeros and the logged sparsity."""

    def __init__(self):
        super().__init__()
        self.nonzeros, self.logged, self.epoch_logs = [], [], []

    def on_train_batch_end(self, batch, logs=None):
        self.nonzeros.append(nonzeros(kernels(self.model)))
        self.logged.append(logs.get("sparsity"))

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_logs.append(dict(logs))


class _BeforeCut(keras.callbacks.Callback):
    """Placed before PruneToRatio: the kernels at `on_train_end`, just before its cut."""

    def on_train_end(self, logs=None):
        self.values = [keras.ops.convert_to_numpy(v) for v in kernels(self.model)]


def _assert_largest_survive(model, before, keep):
    """Exactly the `keep` largest |w| of `before` survive (independent ranking), unchanged."""
    for variable, value, mask in zip(kernels(model), before, top_magnitude_masks(before, keep)):
        np.testing.assert_array_equal(variable.numpy(), np.where(mask, value, 0))


def _fit(model, callback, optimizer=None, epochs=3, jit_compile=False, recorder=None,
         before=None):
    x, y = classification_data()
    compile_for_test(model, optimizer or keras.optimizers.SGD(0.05, momentum=0.9), jit_compile)
    callbacks = [c for c in (before, callback, recorder) if c is not None]
    history = model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=callbacks)
    return history


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "ema"])
def test_end_schedule_leaves_exactly_ceil_n_over_c(optimizer):
    optimizer = {
        "sgd": keras.optimizers.SGD(0.05),
        "adam": keras.optimizers.Adam(1e-3),
        "ema": keras.optimizers.SGD(0.05, use_ema=True, ema_momentum=0.9),
    }[optimizer]
    model = mlp()
    callback = ksm.PruneToRatio(compression=17, schedule="end")
    before = _BeforeCut()  # after the EMA swap, when there is one
    _fit(model, callback, optimizer, before=before)
    n = _size(kernels(model))
    assert nonzeros(kernels(model)) == math.ceil(n / 17) == callback.kept
    assert callback.reached_sparsity == pytest.approx(1 - math.ceil(n / 17) / n)
    _assert_largest_survive(model, before.values, math.ceil(n / 17))


def test_end_cut_keeps_the_largest_magnitudes_globally():
    model = mlp()
    before = _BeforeCut()
    _fit(model, ksm.PruneToRatio(sparsity=0.9, schedule="end"), keras.optimizers.SGD(0.05), epochs=1,
         before=before)
    n = _size(kernels(model))
    _assert_largest_survive(model, before.values, math.ceil(n * 0.1 - 1e-9))
    # Global, not per layer: the layers end up at different densities.
    densities = [np.count_nonzero(v.numpy()) / v.numpy().size for v in kernels(model)]
    assert max(densities) > 1.5 * min(densities)


def test_end_cut_breaks_ties_by_variable_then_index():
    model = mlp()
    rng = np.random.default_rng(0)
    for variable in kernels(model):  # a few distinct magnitudes: blocks of ties everywhere
        variable.assign(rng.integers(-3, 4, variable.shape).astype("float32"))
    before = _BeforeCut()
    # A zero learning rate: the cut sees exactly these values.
    _fit(model, ksm.PruneToRatio(compression=7, schedule="end"), keras.optimizers.SGD(0.0), epochs=1,
         before=before)
    n = _size(kernels(model))
    _assert_largest_survive(model, before.values, math.ceil(n / 7))


def _scheduled(step, begin, end, frequency, initial, target, power):
    """Zhu & Gupta's sparsity held from the last update point: begin, begin + frequency,
    ..., end (independent of the callback's own `sparsity_at`)."""
    if step < begin:
        return 0.0
    point = end if step >= end else begin + (step - begin) // frequency * frequency
    return target + (initial - target) * (1 - (point - begin) / (end - begin)) ** power


@pytest.mark.parametrize("jit_compile, frequency, begin, end, initial, power", [
    (False, 3, 0, 18, 0.0, 3),
    (True, 3, 0, 18, 0.0, 3),
    (False, 4, 3, 13, 0.3, 2),  # points 3, 7, 11, then 13 (a shorter last interval)
])
def test_polynomial_schedule_holds_masks_after_every_step(jit_compile, frequency, begin, end,
                                                          initial, power):
    model = mlp()
    recorder, before = _Recorder(), _BeforeCut()
    callback = ksm.PruneToRatio(compression=10, schedule="polynomial", frequency=frequency,
                                begin_step=begin, end_step=end, initial_sparsity=initial,
                                power=power)
    _fit(model, callback, epochs=3, jit_compile=jit_compile, recorder=recorder, before=before)
    n = _size(kernels(model))
    _assert_largest_survive(model, before.values, math.ceil(n / 10))
    assert recorder.nonzeros == sorted(recorder.nonzeros, reverse=True)  # never grows back
    for step, (count, logged) in enumerate(zip(recorder.nonzeros, recorder.logged)):
        scheduled = _scheduled(step, begin, end, frequency, initial, 0.9, power)
        # after the optimizer step the pruned weights are still exactly zero
        assert count == math.ceil(round(n * (1 - scheduled), 6)), step
        assert logged == pytest.approx(1 - count / n, abs=2 / n), step
    assert recorder.nonzeros[-1] == math.ceil(n / 10)
    assert recorder.epoch_logs[-1]["sparsity"] == pytest.approx(1 - math.ceil(n / 10) / n)
    assert nonzeros(kernels(model)) == math.ceil(n / 10)
    assert all(v.constraint is None for v in kernels(model))  # restored


def test_polynomial_follows_zhu_and_gupta():
    callback = ksm.PruneToRatio(sparsity=0.8, schedule="polynomial", begin_step=10, end_step=110,
                                initial_sparsity=0.2)
    callback._end = 110
    assert callback.sparsity_at(5) == 0.0
    assert callback.sparsity_at(10) == pytest.approx(0.2)
    assert callback.sparsity_at(60) == pytest.approx(0.8 + (0.2 - 0.8) * 0.5**3)
    assert callback.sparsity_at(500) == pytest.approx(0.8)


def test_layer_scope_prunes_every_variable_alike():
    model = mlp()
    before = _BeforeCut()
    _fit(model, ksm.PruneToRatio(compression=4, schedule="polynomial", scope="layer", frequency=2),
         epochs=2, before=before)
    for variable, value in zip(kernels(model), before.values):
        size = int(np.prod(variable.shape))
        assert np.count_nonzero(variable.numpy()) == math.ceil(size / 4)
        (mask,) = top_magnitude_masks([value], math.ceil(size / 4))  # ranked within the layer
        np.testing.assert_array_equal(variable.numpy(), np.where(mask, value, 0))


class SubclassedNet(keras.Model):
    """A subclassed 16 -> 32 -> 4 MLP: its variables exist only after its first step."""

    def __init__(self):
        super().__init__()
        self.a = keras.layers.Dense(32, activation="relu")
        self.b = keras.layers.Dense(4)

    def call(self, x):
        return self.b(self.a(x))


def test_functional_and_subclassed_models_and_history():
    inputs = keras.Input((16,))
    hidden = keras.layers.Dense(32, activation="relu")(inputs)
    functional = keras.Model(inputs, keras.layers.Dense(4)(hidden))

    for model in (functional, SubclassedNet()):
        history = _fit(model, ksm.PruneToRatio(compression=8, schedule="polynomial", frequency=2), epochs=2)
        assert nonzeros(kernels(model)) == math.ceil((16 * 32 + 32 * 4) / 8)
        assert "sparsity" in history.history and history.history["sparsity"][-1] > 0.8


@pytest.mark.filterwarnings("ignore:.*final cut zeroed")
def test_the_default_auto_leaves_gsm_alone_and_prunes_gradually_otherwise():
    assert ksm.PruneToRatio(compression=8).schedule == "auto"
    gsm_callback = ksm.PruneToRatio(compression=8)
    _fit(mlp(), gsm_callback, ksm.GSMMomentum(0.05, momentum=0.9, compression=8), epochs=1)
    assert gsm_callback._active == "end"
    sgd_callback = ksm.PruneToRatio(compression=8, frequency=1)
    recorder = _Recorder()
    _fit(mlp(), sgd_callback, epochs=1, recorder=recorder)  # 8 steps, target at step 6
    assert sgd_callback._active == "polynomial"
    assert 0 < recorder.logged[1] < recorder.logged[5] < recorder.logged[6]  # gradual
    prox_callback = ksm.PruneToRatio(compression=8)
    _fit(mlp(), prox_callback, ksm.ProxNAG(0.05, momentum=0.9), epochs=1)
    assert prox_callback._active == "prox_iterative"


def test_train_function_is_clean_after_pruning():
    model = mlp()
    _fit(model, ksm.PruneToRatio(compression=10, schedule="polynomial", frequency=1), epochs=1)
    x, y = classification_data()
    model.fit(x, y, epochs=1, verbose=0)  # plain training afterwards: weights grow back
    n = _size(kernels(model))
    assert nonzeros(kernels(model)) > math.ceil(n / 10)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "exactly one of"),
        ({"compression": 0.9}, "`compression` must be"),
        ({"compression": 2, "schedule": "cubic"}, "`schedule` must be one of"),
        ({"compression": 2, "scope": "model"}, "`scope` must be one of"),
        ({"compression": 2, "frequency": 0}, "`frequency` must be an int >= 1"),
        ({"compression": 2, "begin_step": -1}, "`begin_step` must be an int >= 0"),
        ({"compression": 2, "begin_step": 5, "end_step": 5}, "`end_step` must be None or an int"),
        ({"compression": 2, "initial_sparsity": 0.9}, "`initial_sparsity` must be in"),
        ({"compression": 2, "power": 0}, "`power` must be > 0"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ksm.PruneToRatio(**kwargs)


def test_model_without_prunable_weights_is_a_clear_error():
    model = keras.Sequential([keras.Input((16,)), keras.layers.BatchNormalization()])
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="no prunable variables"):
        model.fit(np.zeros((8, 16)), np.zeros((8, 16)), verbose=0, callbacks=[ksm.PruneToRatio(compression=2)])


def test_defaults_and_arguments_are_kept():
    callback = ksm.PruneToRatio(compression=4)
    assert (callback.schedule, callback.scope, callback.frequency, callback.begin_step,
            callback.end_step, callback.initial_sparsity, callback.power) == \
        ("auto", "global", 100, 0, None, 0.0, 3)
    assert (callback.compression, callback.sparsity, callback.target_sparsity) == (4, None, 0.75)
    assert (callback.kept, callback.reached_sparsity) == (None, None)
    other = ksm.PruneToRatio(sparsity=0.5, end_step=7, initial_sparsity=0.5, power=0.5)
    assert (other.compression, other.sparsity, other.end_step) == (None, 0.5, 7)
    for kwargs in ({}, {"compression": 0.5}, {"compression": 2, "power": 0}):
        with pytest.raises(ValueError) as raised:
            ksm.PruneToRatio(**kwargs)
        assert str(raised.value).startswith("PruneToRatio"), kwargs


@pytest.mark.parametrize("epochs, steps_per_epoch, end", [(3, 8, 18), (1, 1, 1)])
def test_the_default_end_is_three_quarters_of_the_run_and_at_least_one_step(
        epochs, steps_per_epoch, end):
    callback = ksm.PruneToRatio(compression=4, schedule="polynomial", frequency=1)
    x, y = classification_data(n=32 * steps_per_epoch)
    compile_for_test(mlp(), keras.optimizers.SGD(0.05)).fit(
        x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=[callback])
    assert callback.sparsity_at(end - 1) < 0.75 == callback.sparsity_at(end)


def _generator(x, y, batch=32):
    def batches():
        for start in range(0, len(x), batch):
            yield x[start:start + batch], y[start:start + batch]
    return batches


def test_unknown_steps_per_epoch_need_end_step_and_work_with_it():
    x, y = classification_data(n=128)
    model = compile_for_test(mlp(), keras.optimizers.SGD(0.05))
    callback = ksm.PruneToRatio(compression=4, schedule="polynomial", frequency=1)
    with pytest.raises(ValueError) as raised:
        model.fit(_generator(x, y)(), epochs=1, verbose=0, callbacks=[callback])
    assert str(raised.value) == (
        "PruneToRatio(schedule='polynomial') needs `end_step` when the number of steps per "
        "epoch is unknown (a dataset of unknown length): pass end_step=...")
    callback = ksm.PruneToRatio(compression=4, schedule="polynomial", frequency=1, end_step=3)
    recorder = _Recorder()
    model.fit(_generator(x, y)(), epochs=1, verbose=0, callbacks=[callback, recorder])
    n = _size(kernels(model))
    assert recorder.nonzeros[3] == math.ceil(n / 4) < recorder.nonzeros[2]


def test_prunable_chooses_the_variables_and_other_kernels_stay_dense():
    model = mlp()
    last = model.layers[-1].kernel
    callback = ksm.PruneToRatio(compression=4, schedule="polynomial", frequency=1,
                                prunable=lambda v: v.path == last.path)
    _fit(model, callback, epochs=1)
    assert np.count_nonzero(last.numpy()) == math.ceil(_size([last]) / 4)
    others = [v for v in kernels(model) if v.path != last.path]
    assert nonzeros(others) == _size(others)


def test_a_kernel_constraint_still_applies_under_the_mask_and_comes_back():
    max_norm = keras.constraints.MaxNorm(0.3)
    model = keras.Sequential([keras.Input((16,)),
                              keras.layers.Dense(32, activation="relu", kernel_constraint=max_norm),
                              keras.layers.Dense(4)])
    callback = ksm.PruneToRatio(compression=4, schedule="polynomial", frequency=1)
    recorder = _Recorder()
    _fit(model, callback, epochs=2, recorder=recorder)
    kernel = model.layers[0].kernel
    assert kernel.constraint is max_norm
    assert np.linalg.norm(kernel.numpy(), axis=0).max() <= 0.3 + 1e-6
    assert recorder.nonzeros[-1] == math.ceil(_size(kernels(model)) / 4)


def test_auto_looks_through_a_loss_scale_optimizer():
    callback = ksm.PruneToRatio(compression=8)
    wrapped = keras.optimizers.LossScaleOptimizer(
        ksm.GSMMomentum(0.05, momentum=0.9, compression=8))
    with pytest.warns(UserWarning, match="final cut zeroed"):
        _fit(mlp(), callback, wrapped, epochs=1)
    assert callback._active == "end"


def test_more_zeros_than_asked_are_measured_and_named():
    """ProxNAG's L1 zeroes weights by itself: under the polynomial schedule at 2x the
    model ends sparser than asked, which the callback measures and says."""
    model = mlp()
    callback = ksm.PruneToRatio(compression=2, schedule="polynomial", frequency=1)
    with pytest.warns(UserWarning, match="fewer than the 688 asked") as caught:
        _fit(model, callback, ksm.ProxNAG(0.05, momentum=0.9, l1=0.05), epochs=2)
    n = _size(kernels(model))
    assert callback.kept == nonzeros(kernels(model)) < math.ceil(n / 2) == 688
    assert callback.reached_sparsity == pytest.approx(1 - callback.kept / n)
    (message,) = [str(w.message) for w in caught if "PruneToRatio" in str(w.message)]
    assert "schedule='prox_iterative'" in message
    plain = ksm.PruneToRatio(compression=2, schedule="polynomial", frequency=1)
    _fit(mlp(), plain, epochs=1)
    assert (plain.kept, plain.reached_sparsity) == (688, pytest.approx(0.5))


def test_a_subclassed_model_is_masked_from_its_first_step():
    """Its variables exist only after the first step: the masks come at that step's end."""
    model, recorder = SubclassedNet(), _Recorder()
    callback = ksm.PruneToRatio(compression=10, schedule="polynomial", frequency=1,
                                initial_sparsity=0.5)
    _fit(model, callback, epochs=1, recorder=recorder)
    n = 16 * 32 + 32 * 4
    # At least the initial sparsity after the first step (the point is step 0 or 1: on
    # JAX the step count the callback reads there may not include that step yet).
    assert recorder.nonzeros[0] <= math.ceil(n * 0.5)
    assert recorder.logged[0] == pytest.approx(1 - recorder.nonzeros[0] / n, abs=1 / n)
