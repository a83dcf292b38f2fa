"""GSMMomentum: golden equivalences, exact compression, and the Keras feature matrix."""

import math
import warnings

import keras
import numpy as np
import pytest

import keras_sparse_momentum as ksm
from keras_sparse_momentum.optimizers import gsm
from support import (classification_data, compile_for_test, kernels, mlp, nonzeros,
                     tensorflow_only, top_magnitude_masks)


def _train(optimizer, epochs=3, jit_compile="auto", model=None, batch_size=32, **fit_kwargs):
    keras.utils.set_random_seed(0)
    model = model or mlp()
    x, y = classification_data()
    compile_for_test(model, optimizer, jit_compile=jit_compile)
    model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0, **fit_kwargs)
    return model


class _LastEpoch(keras.callbacks.Callback):
    """The kernels at the end of the last epoch: what GSM's final cut sees (no EMA)."""

    def on_epoch_end(self, epoch, logs=None):
        self.values = [keras.ops.convert_to_numpy(v) for v in kernels(self.model)]


def _assert_largest_survive(model, before, keep):
    """Exactly the `keep` largest |w| of `before` survive (independent ranking), unchanged."""
    for variable, value, mask in zip(kernels(model), before, top_magnitude_masks(before, keep)):
        np.testing.assert_array_equal(variable.numpy(), np.where(mask, value, 0))


def _weights(model):
    return [keras.ops.convert_to_numpy(w) for w in model.weights]


def _assert_same(a, b, atol=1e-6):
    for wa, wb in zip(_weights(a), _weights(b)):
        np.testing.assert_allclose(wa, wb, atol=atol, rtol=0)


# -- golden equivalences ----------------------------------------------------


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("jit_compile", [False, True])
def test_compression_one_is_keras_momentum_sgd(nesterov, jit_compile):
    schedule = keras.optimizers.schedules.ExponentialDecay(0.05, 10, 0.9)
    gsm = ksm.GSMMomentum(schedule, momentum=0.9, weight_decay=0.0, compression=1, nesterov=nesterov)
    sgd = keras.optimizers.SGD(schedule, momentum=0.9, nesterov=nesterov)
    _assert_same(_train(gsm, jit_compile=jit_compile), _train(sgd, jit_compile=jit_compile))


def _numpy_gsm(weights, grads_per_step, q, lr, momentum, wd, nesterov):
    """Reference implementation of the paper's rule, in Keras's velocity form."""
    w = [np.array(v, np.float64) for v in weights]
    vel = [np.zeros_like(v) for v in w]
    for grads in grads_per_step:
        prunable = [i for i, v in enumerate(w) if v.ndim >= 2]
        scores = np.concatenate([np.abs(grads[i] * w[i]).ravel() for i in prunable])
        threshold = np.sort(scores)[::-1][q - 1]
        for i, (v, g) in enumerate(zip(w, grads)):
            if v.ndim >= 2:
                g = np.where(np.abs(g * v) >= threshold, g, 0.0) + wd * v
            vel[i] = momentum * vel[i] - lr * g
            w[i] = v + (momentum * vel[i] - lr * g if nesterov else vel[i])
    return w


@pytest.mark.parametrize("nesterov", [False, True])
def test_single_steps_match_the_numpy_reference(nesterov):
    rng = np.random.default_rng(0)
    shapes = [(3, 4), (4,), (4, 2)]
    values = [rng.standard_normal(s).astype("float32") for s in shapes]
    variables = [keras.Variable(v, name=n) for v, n in zip(values, ["kernel", "bias", "kernel"])]
    steps = [[rng.standard_normal(s).astype("float32") for s in shapes] for _ in range(3)]
    opt = ksm.GSMMomentum(0.1, momentum=0.9, weight_decay=0.1, compression=4, nesterov=nesterov)
    for grads in steps:
        opt.apply(grads, variables)
    assert opt.prunable_count == 20 and opt.kept_count == 5
    expected = _numpy_gsm(values, steps, 5, 0.1, 0.9, 0.1, nesterov)
    for variable, reference in zip(variables, expected):
        np.testing.assert_allclose(variable.numpy(), reference, rtol=1e-5, atol=1e-6)


def test_exactly_q_weights_receive_their_gradient():
    rng = np.random.default_rng(3)
    w = keras.Variable(rng.standard_normal((50, 40)).astype("float32"), name="kernel")
    start = w.numpy()
    opt = ksm.GSMMomentum(0.1, weight_decay=0.0, compression=7)
    opt.apply([rng.standard_normal((50, 40)).astype("float32")], [w])
    assert np.count_nonzero(w.numpy() != start) == math.ceil(2000 / 7)


def test_magnitude_importance_gives_the_gradient_to_the_largest_weights():
    rng = np.random.default_rng(4)
    start = rng.standard_normal((30, 20)).astype("float32")
    w = keras.Variable(start, name="kernel")
    opt = ksm.GSMMomentum(0.1, weight_decay=0.0, compression=6, importance="magnitude")
    opt.apply([rng.standard_normal((30, 20)).astype("float32")], [w])
    moved = w.numpy() != start
    largest = np.abs(start) >= np.sort(np.abs(start).ravel())[-100]
    assert moved.sum() == 100
    np.testing.assert_array_equal(moved, largest)


def test_for_budget_sets_the_short_budget_recipe_and_prunes_exactly():
    opt = ksm.GSMMomentum.for_budget(16, compression=10, learning_rate=0.05, momentum=0.9)
    assert (opt.ramp_begin_step, opt.ramp_steps) == (1, 8)
    assert (opt.passive_decay, opt.importance) == (2.0, "magnitude")
    model = _train(opt, epochs=2)  # 16 steps of 32 examples
    assert nonzeros(kernels(model)) == opt.kept_count
    assert ksm.GSMMomentum.for_budget(16, compression=10, importance="taylor").importance == "taylor"
    with pytest.raises(ValueError, match="`total_steps` must be an int >= 1"):
        ksm.GSMMomentum.for_budget(0, compression=10)


def test_for_budget_warms_up_over_the_dense_tenth_then_decays_to_zero():
    opt = ksm.GSMMomentum.for_budget(100, compression=10, learning_rate=0.2, momentum=0.9)
    schedule = opt._learning_rate
    rates = [float(schedule(step)) for step in (0, 5, 10, 55, 100)]
    np.testing.assert_allclose(rates, [0.0, 0.1, 0.2, 0.1, 0.0], atol=1e-6)
    clone = ksm.GSMMomentum.from_config(opt.get_config())
    assert float(clone._learning_rate(55)) == pytest.approx(0.1, abs=1e-6)
    plain = ksm.GSMMomentum.for_budget(100, compression=10, learning_rate=0.2,
                                       warmup_cosine=False)
    assert float(plain.learning_rate) == pytest.approx(0.2)
    numpy_peak = ksm.GSMMomentum.for_budget(100, compression=10, learning_rate=np.float32(0.2))
    assert float(numpy_peak._learning_rate(10)) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="warmup_cosine=False"):
        ksm.GSMMomentum.for_budget(
            100, compression=10,
            learning_rate=keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5))



def test_warmup_ends_where_the_dense_tenth_ends_for_any_step_count():
    # 105 steps: the dense first tenth is 10 whole steps (ramp_begin_step), so the rate
    # peaks at step 10 exactly, not at 10.5.
    opt = ksm.GSMMomentum.for_budget(105, compression=10, learning_rate=0.2, momentum=0.9)
    assert opt.ramp_begin_step == 10
    assert float(opt._learning_rate(10)) == pytest.approx(0.2, abs=1e-7)
    assert float(opt._learning_rate(5)) == pytest.approx(0.1, abs=1e-7)


# -- exact compression --------------------------------------------------------


@pytest.mark.parametrize("jit_compile", [False, True])
def test_fit_leaves_exactly_ceil_n_over_c_nonzeros(jit_compile):
    opt = ksm.GSMMomentum(0.05, momentum=0.9, compression=13, nesterov=True)
    last = _LastEpoch()
    model = _train(opt, epochs=2, jit_compile=jit_compile, callbacks=[last])
    n = sum(int(np.prod(v.shape)) for v in kernels(model))
    assert nonzeros(kernels(model)) == math.ceil(n / 13) == opt.kept_count
    _assert_largest_survive(model, last.values, math.ceil(n / 13))
    biases = [v for v in model.trainable_variables if v.name == "bias"]
    assert nonzeros(biases) > 0.9 * sum(int(np.prod(v.shape)) for v in biases)


def test_sparsity_argument_is_compression_one_over_one_minus_s():
    opt = ksm.GSMMomentum(0.05, momentum=0.9, sparsity=0.9)
    model = _train(opt, epochs=1)
    n = sum(int(np.prod(v.shape)) for v in kernels(model))
    assert nonzeros(kernels(model)) == math.ceil(n * 0.1 - 1e-9)


def test_final_cut_breaks_ties_by_variable_then_index():
    model = mlp()
    rng = np.random.default_rng(1)
    for variable in kernels(model):  # a few distinct magnitudes: blocks of ties everywhere
        variable.assign(rng.integers(-3, 4, variable.shape).astype("float32"))
    before = [v.numpy() for v in kernels(model)]
    opt = ksm.GSMMomentum(0.0, momentum=0.9, weight_decay=0.0, compression=9)  # nothing moves
    model = _train(opt, epochs=1, model=model)
    _assert_largest_survive(model, before, opt.kept_count)


def test_ramp_reaches_the_target_and_passive_decay_shrinks_passive_weights():
    ramp = ksm.GSMMomentum(0.05, momentum=0.9, compression=10, ramp_steps=12, passive_decay=0.5)
    model = _train(ramp, epochs=2)
    assert nonzeros(kernels(model)) == ramp.kept_count
    assert int(keras.ops.convert_to_numpy(ramp._active_count())) == ramp.kept_count
    fresh = ksm.GSMMomentum(0.05, momentum=0.9, compression=10, ramp_steps=100)
    fresh.build(mlp().trainable_variables)
    assert int(keras.ops.convert_to_numpy(fresh._active_count())) == fresh.prunable_count


def test_ramp_begin_step_keeps_every_weight_active_until_the_ramp_starts():
    rng = np.random.default_rng(5)
    w = keras.Variable(rng.standard_normal((30, 20)).astype("float32"), name="kernel")
    opt = ksm.GSMMomentum(0.01, momentum=0.9, compression=10, ramp_steps=12, ramp_begin_step=6)
    counts = []
    for _ in range(14):
        counts.append(int(keras.ops.convert_to_numpy(opt._active_count())) if opt.built else 600)
        before = w.numpy().copy()
        opt.apply([rng.standard_normal((30, 20)).astype("float32")], [w])
        if len(counts) <= 6:  # dense steps: plain momentum SGD moves every weight
            assert (w.numpy() != before).all()
    assert counts[:7] == [600] * 7  # steps 0..6: the ramp has not removed anything
    assert 60 < counts[8] < counts[7] < 600  # cubic: the largest cut comes first
    assert counts[12:] == [60, 60]
    assert ksm.GSMMomentum.from_config(opt.get_config()).ramp_begin_step == 6


def test_subclassed_model_is_pruned():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden = keras.layers.Dense(32, activation="relu")
            self.out = keras.layers.Dense(4)

        def call(self, x):
            return self.out(self.hidden(x))

    opt = ksm.GSMMomentum(0.05, momentum=0.9, compression=20)
    last = _LastEpoch()
    model = _train(opt, model=Net(), epochs=1, callbacks=[last])
    assert nonzeros(kernels(model)) == math.ceil((16 * 32 + 32 * 4) / 20)
    _assert_largest_survive(model, last.values, math.ceil((16 * 32 + 32 * 4) / 20))


# -- the Keras feature matrix -------------------------------------------------


def test_clipnorm_matches_sgd_and_still_prunes():
    gsm = ksm.GSMMomentum(0.05, momentum=0.9, weight_decay=0.0, compression=1, clipnorm=0.05)
    sgd = keras.optimizers.SGD(0.05, momentum=0.9, clipnorm=0.05)
    _assert_same(_train(gsm), _train(sgd))
    pruned = _train(ksm.GSMMomentum(0.05, momentum=0.9, compression=8, global_clipnorm=0.5))
    assert nonzeros(kernels(pruned)) == math.ceil(sum(int(np.prod(v.shape)) for v in kernels(pruned)) / 8)


def test_gradient_accumulation_matches_sgd_and_still_prunes():
    gsm = ksm.GSMMomentum(0.05, momentum=0.9, weight_decay=0.0, compression=1, gradient_accumulation_steps=3)
    sgd = keras.optimizers.SGD(0.05, momentum=0.9, gradient_accumulation_steps=3)
    _assert_same(_train(gsm, jit_compile=True), _train(sgd, jit_compile=True))
    opt = ksm.GSMMomentum(0.05, momentum=0.9, compression=8, gradient_accumulation_steps=2)
    pruned = _train(opt, jit_compile=True)
    assert nonzeros(kernels(pruned)) == opt.kept_count


def test_ema_is_swapped_in_before_the_final_cut():
    opt = ksm.GSMMomentum(0.05, momentum=0.9, compression=8, use_ema=True, ema_momentum=0.9)
    model = _train(opt, epochs=2)
    assert nonzeros(kernels(model)) == opt.kept_count
    for variable in kernels(model):
        average = opt._model_variables_moving_average[opt._get_variable_index(variable)]
        kept = variable.numpy() != 0
        np.testing.assert_array_equal(variable.numpy()[kept], average.numpy()[kept])


def test_mixed_precision_loss_scaling():
    keras.config.set_dtype_policy("mixed_float16")
    opt = ksm.GSMMomentum(0.05, momentum=0.9, compression=8)
    model = _train(opt, epochs=2)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert nonzeros(kernels(model)) == opt.kept_count
    assert all(np.all(np.isfinite(w)) for w in _weights(model))


@tensorflow_only("tf.distribute.MirroredStrategy (JAX: test_jax_backend.py's DataParallel tests)")
def test_mirrored_strategy_on_two_cpus_equals_one_device():
    import tensorflow as tf

    x, y = classification_data()

    def run(strategy):
        with strategy.scope():
            keras.utils.set_random_seed(0)
            model = mlp()
            compile_for_test(model, ksm.GSMMomentum(0.05, momentum=0.9, compression=8, nesterov=True))
        model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
        return model

    mirrored = run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    single = run(tf.distribute.get_strategy())
    for variable in mirrored.weights:  # the replicas agree bit for bit
        copies = [c.numpy() for c in variable.value.values]
        for copy in copies[1:]:
            np.testing.assert_array_equal(copy, copies[0])
    _assert_same(mirrored, single, atol=1e-5)
    assert nonzeros(kernels(mirrored)) == nonzeros(kernels(single))


class _GradientKinds(ksm.GSMMomentum):
    """GSMMomentum that records the types of the gradients `fit` hands to it."""

    def apply(self, grads, trainable_variables=None):
        self.kinds = [type(g).__name__ for g in grads]
        return super().apply(grads, trainable_variables)


def test_sparse_embedding_gradients_work():
    model = keras.Sequential(
        [keras.Input((5,), dtype="int32"), keras.layers.Embedding(50, 8),
         keras.layers.Flatten(), keras.layers.Dense(4)]
    )
    x = np.random.default_rng(0).integers(0, 50, (64, 5)).astype("int32")
    y = (x[:, 0] % 4).astype("int32")
    opt = ksm.GSMMomentum(0.05, momentum=0.9, compression=4)
    compile_for_test(model, opt)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert nonzeros(kernels(model)) == math.ceil(40 * 4 / 4)
    embed = _GradientKinds(0.05, momentum=0.9, compression=4, name="recording_gsm",
                           prunable=lambda v: v.name in ("kernel", "embeddings"))
    model2 = keras.models.clone_model(model)
    compile_for_test(model2, embed)
    model2.fit(x, y, batch_size=16, epochs=1, verbose=0)
    if keras.backend.backend() == "tensorflow":  # JAX has no sparse gradients
        # The sparse path was taken: the embedding's gradient reached GSM as IndexedSlices.
        assert embed.kinds[0] == "IndexedSlices" and "IndexedSlices" not in embed.kinds[1:]
    assert nonzeros(model2.trainable_variables[:1] + kernels(model2)) == math.ceil((400 + 160) / 4)


# -- saving and resuming ------------------------------------------------------


def test_config_round_trip():
    schedule = keras.optimizers.schedules.CosineDecay(0.1, 100)
    opt = ksm.GSMMomentum(schedule, momentum=0.95, weight_decay=1e-4, sparsity=0.75,
                          nesterov=True, ramp_steps=50, passive_decay=1e-2, importance="magnitude",
                          clipnorm=1.0)
    config = opt.get_config()
    clone = ksm.GSMMomentum.from_config(config)
    assert clone.get_config() == config
    assert keras.optimizers.deserialize(keras.optimizers.serialize(opt)).get_config() == config


def test_save_load_and_resume_equal_uninterrupted(tmp_path):
    x, y = classification_data()
    path = tmp_path / "checkpoint.keras"

    def fresh():
        keras.utils.set_random_seed(0)
        return compile_for_test(mlp(), ksm.GSMMomentum(0.05, momentum=0.9, compression=8, nesterov=True))

    uninterrupted = fresh()
    uninterrupted.fit(x, y, batch_size=32, epochs=4, shuffle=False, verbose=0)

    interrupted = fresh()
    checkpoint = keras.callbacks.ModelCheckpoint(str(path))  # saved before the final cut
    interrupted.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0, callbacks=[checkpoint])
    resumed = keras.saving.load_model(str(path))  # no custom_objects
    assert isinstance(resumed.optimizer, ksm.GSMMomentum)
    resumed.fit(x, y, batch_size=32, epochs=4, initial_epoch=2, shuffle=False, verbose=0)
    _assert_same(resumed, uninterrupted, atol=1e-6)


# -- the final cut is measured; a destructive one warns ------------------------


def test_final_cut_measures_what_it_zeroes_against_what_it_keeps():
    rng = np.random.default_rng(5)
    values = [rng.standard_normal(shape).astype("float32") for shape in ((6, 5), (5, 3))]
    variables = [keras.Variable(v, name="kernel") for v in values]
    opt = ksm.GSMMomentum(0.05, momentum=0.9, weight_decay=0.0, compression=4)
    opt.build(variables)
    assert opt.final_cut is None
    with pytest.warns(UserWarning, match="final cut zeroed") as caught:
        opt.finalize_variable_values(variables)
    magnitudes = np.sort(np.concatenate([np.abs(v.astype("float64")).ravel() for v in values]))
    kept = math.ceil(45 / 4)  # 12 of 45 weights
    squares = np.square(magnitudes)
    assert opt.final_cut.norm_share == pytest.approx(squares[:-kept].sum() / squares.sum(),
                                                     rel=1e-9)
    scale = np.median(magnitudes[:-kept]) / np.median(magnitudes[-kept:])
    assert opt.final_cut.scale == pytest.approx(scale, rel=1e-9)
    (message,) = [str(w.message) for w in caught if w.category is UserWarning]
    assert f"{opt.final_cut.scale:.2g} times the median kept weight" in message
    assert f"{opt.final_cut.norm_share:.2%} of the prunable weights' squared L2 norm" in message
    assert "GSMMomentum.for_budget(0, compression=4, learning_rate=0.05, momentum=0.9, " \
        "nesterov=True, weight_decay=0)" in message
    # Cut again: only zeros go, nothing is removed, nothing is said.
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        opt.finalize_variable_values(variables)
    assert opt.final_cut == (0.0, 0.0)


def test_paper_rule_on_a_short_budget_warns_and_the_suggested_call_does_not():
    """224 steps of the paper's constants leave the passive weights large: the cut is
    destructive and says so, naming for_budget for 224 steps; that call, run on the
    same budget, ends with a harmless cut (its passive weights are already zero)."""
    x, y = classification_data(n=1024)

    def train(optimizer):
        keras.utils.set_random_seed(0)
        model = compile_for_test(mlp(), optimizer)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(x, y, batch_size=32, epochs=7, verbose=0)  # 224 steps
        return [str(w.message) for w in caught if "final cut" in str(w.message)]

    paper = ksm.GSMMomentum(compression=10)
    (message,) = train(paper)
    assert paper.final_cut.scale > 50 * gsm.DESTRUCTIVE_CUT
    call = "GSMMomentum.for_budget(224, compression=10, learning_rate=0.1, momentum=0.9, " \
        "nesterov=True)"
    assert call in message
    suggested = eval(call, {"GSMMomentum": ksm.GSMMomentum})
    assert train(suggested) == []
    assert suggested.final_cut.scale < gsm.DESTRUCTIVE_CUT / 100


# -- bad input ----------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "exactly one of `compression`"),
        ({"compression": 2, "sparsity": 0.5}, "exactly one of `compression`"),
        ({"compression": 0.5}, "`compression` must be a finite number >= 1"),
        ({"compression": float("inf")}, "`compression` must be a finite number >= 1"),
        ({"sparsity": 1.0}, r"`sparsity` must be a number in \[0, 1\)"),
        ({"sparsity": -0.1}, r"`sparsity` must be a number in \[0, 1\)"),
        ({"compression": 2, "momentum": 1.0}, r"`momentum` must be a number in \[0, 1\)"),
        ({"compression": 2, "weight_decay": -1.0}, "`weight_decay` must be a finite number >= 0"),
        ({"compression": 2, "ramp_steps": -1}, "`ramp_steps` must be an int >= 0"),
        ({"compression": 2, "ramp_steps": 10, "ramp_begin_step": 10}, "`ramp_begin_step` must be"),
        ({"compression": 2, "ramp_begin_step": 3}, r"`ramp_begin_step` must be an int in \[0, ramp_steps\)"),
        ({"compression": 2, "ramp_steps": 10, "ramp_begin_step": 2.0}, "`ramp_begin_step` must be"),
        ({"compression": 2, "passive_decay": -1.0}, "`passive_decay` must be a finite number >= 0"),
        ({"compression": 2, "prunable": "kernel"}, "`prunable` must be None"),
        ({"compression": 2, "importance": "hessian"}, "`importance` must be one of"),
    ],
)
def test_invalid_arguments_are_rejected_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ksm.GSMMomentum(**kwargs)


def test_nothing_to_prune_is_a_clear_error():
    with pytest.raises(ValueError, match="found nothing to prune"):
        _train(ksm.GSMMomentum(compression=2, prunable=lambda v: False), epochs=1)


def test_diverged_training_is_a_clear_error():
    x, y = classification_data()
    model = compile_for_test(mlp(), ksm.GSMMomentum(1e4, momentum=0.9, compression=4))
    with pytest.raises(ValueError, match="training diverged"):
        model.fit(x, y, batch_size=32, epochs=1, verbose=0)


# -- defaults, for_budget's edges, and what the warnings say -------------------------


def test_defaults_are_the_papers_and_the_cut_is_none_before_it_runs():
    opt = ksm.GSMMomentum(compression=2)
    assert float(keras.ops.convert_to_numpy(opt.learning_rate)) == pytest.approx(0.01)
    assert (opt.momentum, opt.weight_decay, opt.nesterov) == (0.99, 5e-4, False)
    assert (opt.ramp_steps, opt.ramp_begin_step, opt.passive_decay, opt.importance) == \
        (0, 0, None, "taylor")
    assert opt.final_cut is None


def test_every_construction_error_names_the_optimizer():
    for kwargs in ({}, {"compression": 0.5}, {"compression": 2, "passive_decay": -1.0},
                   {"compression": 2, "ramp_steps": 1, "ramp_begin_step": 1}):
        with pytest.raises(ValueError) as raised:
            ksm.GSMMomentum(**kwargs)
        assert str(raised.value).startswith("GSMMomentum"), kwargs


def test_for_budget_edges_default_peak_sparsity_and_bad_peaks():
    one = ksm.GSMMomentum.for_budget(1, compression=2)
    assert (one.ramp_begin_step, one.ramp_steps) == (0, 0)
    default = ksm.GSMMomentum.for_budget(100, compression=10)
    assert float(default._learning_rate(10)) == pytest.approx(0.01)
    sparse = ksm.GSMMomentum.for_budget(100, sparsity=0.9)
    assert (sparse.compression, sparse.sparsity) == (None, 0.9)
    for peak in (0, -0.1, True):
        with pytest.raises(ValueError) as raised:
            ksm.GSMMomentum.for_budget(100, compression=10, learning_rate=peak)
        assert str(raised.value) == (
            "GSMMomentum.for_budget: with warmup_cosine=True, `learning_rate` must be a number "
            "> 0 (the peak of the schedule); pass warmup_cosine=False to use your own "
            f"schedule. Received: learning_rate={peak!r}")


def _cut_directly(opt, values):
    """Build `opt` on float32 kernels holding `values` and run its final cut, here
    (not inside fit), recording the warnings."""
    variables = [keras.Variable(np.asarray(v, "float32"), name="kernel") for v in values]
    opt.build(variables)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt.finalize_variable_values(variables)
    return [w for w in caught if issubclass(w.category, UserWarning)]


def _random_kernels(seed=5):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape) for shape in ((6, 5), (5, 3))]


def test_destructive_cut_message_of_the_papers_rule_word_for_word():
    opt = ksm.GSMMomentum(0.01, momentum=0.99, weight_decay=1e-4, compression=4)
    (warning,) = _cut_directly(opt, _random_kernels())
    assert warning.category is UserWarning
    scale, share = opt.final_cut.scale, opt.final_cut.norm_share
    assert str(warning.message) == (
        f"GSMMomentum: the weights the final cut zeroed had a median size of {scale:.2g} "
        f"times the median kept weight (warned above 0.001; {share:.2%} of the prunable "
        "weights' squared L2 norm): with the paper's rule a passive weight only decays, by "
        "about lr * weight_decay / (1 - momentum) = 0.0001 of itself per step, which is far "
        "from zero after 0 steps, so the cut was a plain magnitude prune of live weights with "
        "no recovery, and accuracy may have collapsed. For a budget of 0 steps use\n"
        "    GSMMomentum.for_budget(0, compression=4, learning_rate=0.1, momentum=0.9, "
        "nesterov=True, weight_decay=0.0001)\n"
        "(every weight trains for the first tenth, the active count ramps to the target by "
        "half-way, passive weights decay fast, and the learning rate warms up then follows a "
        "cosine: a peak of 2-5x the constant rate plain SGD would use works best).")


@pytest.mark.parametrize("ramp_steps, passive_decay", [(1000, None), (0, 0.5), (1000, 0.5)])
def test_destructive_cut_message_with_a_ramp_or_a_passive_decay(ramp_steps, passive_decay):
    opt = ksm.GSMMomentum(0.05, momentum=0.9, compression=4, ramp_steps=ramp_steps,
                          passive_decay=passive_decay)
    (warning,) = _cut_directly(opt, _random_kernels())
    assert (f": the ramp (to step {ramp_steps:,}) or the passive decay did not finish within "
            "the 0 steps run, so the cut was") in str(warning.message)


def test_a_cut_exactly_at_the_threshold_does_not_warn_and_compression_one_does_not_cut():
    opt = ksm.GSMMomentum(0.05, momentum=0.9, compression=2)
    # The zeroed median over the kept median is 1 / 1000, the threshold itself.
    assert _cut_directly(opt, [[[1000.0, 1000.0, 1000.0], [1.0, 1.0, 1.0]]]) == []
    assert opt.final_cut.scale == gsm.DESTRUCTIVE_CUT
    whole = ksm.GSMMomentum(0.05, momentum=0.9, compression=1)
    assert _cut_directly(whole, _random_kernels()) == [] and whole.final_cut is None


@pytest.mark.parametrize("optimizer, call", [
    (lambda: ksm.GSMMomentum(0.05, momentum=0.9, sparsity=0.75),
     "GSMMomentum.for_budget(40, sparsity=0.75, learning_rate=0.05, momentum=0.9, "
     "nesterov=True)"),
    (lambda: ksm.GSMMomentum(0.02, momentum=0.95, weight_decay=0.0, compression=3),
     "GSMMomentum.for_budget(40, compression=3, learning_rate=0.04, momentum=0.9, "
     "nesterov=True, weight_decay=0)"),
    (lambda: ksm.GSMMomentum.for_budget(500, compression=8, learning_rate=0.3, momentum=0.9),
     "GSMMomentum.for_budget(40, compression=8, learning_rate=0.3, momentum=0.9, "
     "nesterov=True)"),
    (lambda: ksm.GSMMomentum(keras.optimizers.schedules.ExponentialDecay(0.04, 10, 0.5),
                             momentum=0.9, compression=2),
     "GSMMomentum.for_budget(40, compression=2, learning_rate=0.04, momentum=0.9, "
     "nesterov=True)"),
    (lambda: ksm.GSMMomentum(
        keras.optimizers.schedules.PiecewiseConstantDecay([0], [0.3, 0.1]), momentum=0.9,
        compression=2),
     "GSMMomentum.for_budget(40, compression=2, learning_rate=0.3, momentum=0.9, "
     "nesterov=True)"),
])
def test_suggested_call_keeps_the_ratio_the_decay_and_the_effective_peak(optimizer, call):
    """A momentum above 0.9 comes down to 0.9 at the same lr / (1 - momentum); a
    schedule's peak is its warmup target, else its value at step 0."""
    assert optimizer().suggested_call(40) == call


def test_divergence_names_the_first_five_variables_word_for_word():
    variables = [keras.Variable(np.full((2, 2), np.nan, "float32"), name=f"kernel{i}")
                 for i in range(6)]
    opt = ksm.GSMMomentum(0.05, momentum=0.9, compression=2, prunable=lambda v: True)
    opt.build(variables)
    with pytest.raises(ValueError) as raised:
        opt.finalize_variable_values(variables)
    paths = [v.path for v in variables]
    assert str(raised.value) == (
        f"GSMMomentum: training diverged, the variables {paths[:5]} hold NaN or Inf, so the "
        "model cannot be compressed. Lower `learning_rate` (the effective step is "
        "learning_rate / (1 - momentum)) or set `clipnorm`.")


@tensorflow_only("float64 variables: JAX runs without x64")
def test_passive_decay_in_float64_with_and_without_coupled_weight_decay():
    """One step on float64 kernels against numpy in float64: active weights get their
    gradient plus the coupled decay (none where excluded), passive ones only
    `passive_decay * w`, computed in float64."""
    rng = np.random.default_rng(7)
    values = [rng.standard_normal((5, 4)), rng.standard_normal((4, 3))]
    grads = [rng.standard_normal(v.shape) for v in values]
    variables = [keras.Variable(v, dtype="float64", name="kernel") for v in values]
    lr, decay, passive = 0.125, 1 / 64, 1.7  # lr is a float32 variable: exact in binary
    opt = ksm.GSMMomentum(lr, momentum=0.0, weight_decay=decay, compression=4,
                          passive_decay=passive, importance="magnitude")
    opt.exclude_from_weight_decay(var_list=[variables[1]])
    opt.apply_gradients(zip([keras.ops.convert_to_tensor(g) for g in grads], variables))
    keep = math.ceil(32 / 4)
    for i, (value, grad, mask) in enumerate(zip(values, grads,
                                                top_magnitude_masks(values, keep))):
        coupled = decay if i == 0 else 0.0
        expected = value - lr * np.where(mask, grad + coupled * value, passive * value)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(variables[i]), expected,
                                   rtol=1e-14, atol=0)
