"""ProxNAG: Nesterov golden equality, the soft threshold, exact zeros, and the Keras feature matrix."""

import math

import keras
import numpy as np
import pytest

import keras_sparse_momentum as ksm
from keras_sparse_momentum.optimizers.prox_nag import soft_threshold
from support import (Trajectory, classification_data, compile_for_test, kernels, mlp, nonzeros,
                     tensorflow_only)


def _train(optimizer, epochs=2, jit_compile="auto", model=None, n=128, **fit_kwargs):
    keras.utils.set_random_seed(0)
    model = model or mlp()
    x, y = classification_data(n=n)
    compile_for_test(model, optimizer, jit_compile=jit_compile)
    trajectory = Trajectory()  # the extrapolated point `w` for ProxNAG
    model.fit(x, y, batch_size=32, epochs=epochs, shuffle=False, verbose=0,
              callbacks=[trajectory], **fit_kwargs)
    return model, trajectory.steps


def _numpy(variables):
    return [keras.ops.convert_to_numpy(v) for v in variables]


# -- golden equalities ----------------------------------------------------------


def test_l1_zero_is_keras_nesterov_sgd_at_every_step():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.05, 4, 0.9)
    prox, prox_steps = _train(ksm.ProxNAG(schedule, momentum=0.9, l1=0.0))
    sgd_opt = keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True)
    sgd, sgd_steps = _train(sgd_opt)
    assert len(prox_steps) == 8
    for step_a, step_b in zip(prox_steps, sgd_steps):  # training holds the Nesterov point
        for a, b in zip(step_a, step_b):
            np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    # At the end the kernels receive w~ = Keras's w - momentum * velocity.
    for variable, prox_kernel in zip(kernels(sgd), kernels(prox)):
        velocity = sgd_opt.momentums[sgd_opt._get_variable_index(variable)]
        expected = variable.numpy() - 0.9 * velocity.numpy()
        np.testing.assert_allclose(prox_kernel.numpy(), expected, atol=1e-6, rtol=0)


def test_soft_threshold_matches_numpy():
    x = np.random.default_rng(0).standard_normal(1000).astype("float32")
    x[:5] = [0.3, -0.3, 0.0, 0.2999, -0.3001]
    expected = np.sign(x) * np.maximum(np.abs(x) - 0.3, 0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(soft_threshold(x, 0.3)), expected)


def _numpy_prox_nag(weights, grads_per_step, lr, momentum, l1, weight_decay=0.0):
    """The paper's Algorithm 1, with kernels (ndim >= 2) prunable and biases Nesterov;
    `weight_decay` adds the coupled L2 gradient to the kernels (elastic net)."""
    w = [np.array(v, np.float64) for v in weights]
    tilde = [v.copy() for v in w]
    vel = [np.zeros_like(v) for v in w]
    for grads in grads_per_step:
        for i, g in enumerate(grads):
            if w[i].ndim >= 2:
                hat = w[i] - lr * (g + weight_decay * w[i])
                new = np.sign(hat) * np.maximum(np.abs(hat) - lr * l1, 0)
                w[i] = new + momentum * (new - tilde[i])
                tilde[i] = new
            else:
                vel[i] = momentum * vel[i] - lr * g
                w[i] = w[i] + momentum * vel[i] - lr * g
    return w, tilde


def test_steps_match_the_numpy_reference_and_finalize_writes_the_sparse_iterate():
    rng = np.random.default_rng(0)
    shapes = [(6, 5), (5,)]
    values = [rng.standard_normal(s).astype("float32") * 0.3 for s in shapes]
    variables = [keras.Variable(v, name=n) for v, n in zip(values, ["kernel", "bias"])]
    steps = [[rng.standard_normal(s).astype("float32") for s in shapes] for _ in range(4)]
    opt = ksm.ProxNAG(0.1, momentum=0.9, l1=1.0)
    for grads in steps:
        opt.apply(grads, variables)
    w, tilde = _numpy_prox_nag(values, steps, 0.1, 0.9, 1.0)
    np.testing.assert_allclose(variables[0].numpy(), w[0], atol=1e-6)
    np.testing.assert_allclose(variables[1].numpy(), w[1], atol=1e-6)
    np.testing.assert_allclose(opt.sparse_iterate(variables[0]).numpy(), tilde[0], atol=1e-6)
    opt.finalize_variable_values(variables)
    assert np.count_nonzero(tilde[0]) < tilde[0].size  # the threshold produced zeros
    np.testing.assert_array_equal(variables[0].numpy() == 0, tilde[0] == 0)
    np.testing.assert_allclose(variables[1].numpy(), w[1], atol=1e-6)  # biases keep w


# -- exact zeros ------------------------------------------------------------------


@pytest.mark.parametrize("jit_compile", [False, True])
def test_fit_leaves_the_sparse_iterate_with_exact_zeros(jit_compile):
    opt = ksm.ProxNAG(0.05, momentum=0.9, l1=0.2)
    model, steps = _train(opt, epochs=3, jit_compile=jit_compile)
    for variable in kernels(model):
        np.testing.assert_array_equal(variable.numpy(), opt.sparse_iterate(variable).numpy())
    total = sum(v.numpy().size for v in kernels(model))
    assert 0.2 * total < total - nonzeros(kernels(model)) < total
    # During training the model held the extrapolated point, which is not sparse.
    assert sum(np.count_nonzero(w) for w in steps[-1][::2]) > nonzeros(kernels(model))
    biases = [v for v in model.trainable_variables if v.name == "bias"]
    assert nonzeros(biases) > 0.9 * sum(v.numpy().size for v in biases)


def test_l1_schedule_and_assignment():
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([6], [0.0, 0.5])
    opt = ksm.ProxNAG(0.05, l1=schedule)
    model, _ = _train(opt, epochs=3)
    assert float(keras.ops.convert_to_numpy(opt.l1)) == 0.5
    assert nonzeros(kernels(model)) < sum(v.numpy().size for v in kernels(model))
    with pytest.raises(TypeError, match="schedule"):
        opt.l1 = 0.1
    fixed = ksm.ProxNAG(l1=0.1)
    fixed.l1 = 0.2
    assert fixed.get_config()["l1"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="`l1` must be a finite number >= 0"):
        fixed.l1 = -1.0


def test_only_non_prunable_variables_get_a_momentum_slot():
    opt = ksm.ProxNAG(0.05)
    model, _ = _train(opt, epochs=1)
    slots = [v for v in opt.variables if v.name.endswith(("_momentum", "_sparse_iterate"))]
    assert len(slots) == len(model.trainable_variables) == 6
    assert sum(v.name.endswith("_sparse_iterate") for v in slots) == 3


# -- the Keras feature matrix -----------------------------------------------------


def test_ema_averages_the_sparse_iterate_on_its_support():
    opt = ksm.ProxNAG(0.05, momentum=0.9, l1=0.05, use_ema=True, ema_momentum=0.5)
    model, _ = _train(opt, epochs=3)
    for variable in kernels(model):
        index = opt._get_variable_index(variable)
        iterate = opt.sparse_iterate(variable).numpy()
        average = opt._model_variables_moving_average[index].numpy()
        np.testing.assert_array_equal(variable.numpy(), np.where(iterate != 0, average, 0))
        assert not np.array_equal(variable.numpy(), iterate)


def test_mixed_precision_and_gradient_accumulation():
    keras.config.set_dtype_policy("mixed_float16")
    opt = ksm.ProxNAG(0.05, l1=0.05, gradient_accumulation_steps=2)
    model, _ = _train(opt, epochs=2)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    for variable in kernels(model):
        np.testing.assert_array_equal(variable.numpy(), opt.sparse_iterate(variable).numpy())
    assert nonzeros(kernels(model)) < sum(v.numpy().size for v in kernels(model))


@tensorflow_only("tf.distribute.MirroredStrategy (JAX: test_jax_backend.py's DataParallel tests)")
@pytest.mark.parametrize("iterative", [False, True])
def test_mirrored_strategy_on_two_cpus_equals_one_device(iterative):
    """Replicas see all-reduced gradients and agree bit for bit, with and without the rounds."""
    import tensorflow as tf

    x, y = classification_data()

    def run(strategy):
        with strategy.scope():
            keras.utils.set_random_seed(0)
            model = compile_for_test(mlp(), ksm.ProxNAG(0.05, momentum=0.9, l1=0.03))
        callbacks = [ksm.PruneToRatio(sparsity=0.8, schedule="auto")] if iterative else []
        model.fit(x, y, batch_size=32, epochs=6, shuffle=False, verbose=0, callbacks=callbacks)
        return model

    mirrored = run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    single = run(tf.distribute.get_strategy())
    for variable in mirrored.weights:
        copies = [c.numpy() for c in variable.value.values]
        for copy in copies[1:]:
            np.testing.assert_array_equal(copy, copies[0])
    for a, b in zip(_numpy(mirrored.weights), _numpy(single.weights)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    assert nonzeros(kernels(mirrored)) == nonzeros(kernels(single))
    if iterative:
        n = sum(v.numpy().size for v in kernels(single))
        assert nonzeros(kernels(mirrored)) == math.ceil(n * 0.2 - 1e-9)
    else:
        assert nonzeros(kernels(mirrored)) < sum(v.numpy().size for v in kernels(single))


def test_config_round_trip():
    opt = ksm.ProxNAG(keras.optimizers.schedules.CosineDecay(0.1, 100), momentum=0.95,
                      l1=keras.optimizers.schedules.PolynomialDecay(0.0, 100, 1e-3), clipnorm=1.0)
    config = opt.get_config()
    assert "nesterov" not in config
    clone = ksm.ProxNAG.from_config(config)
    assert clone.get_config() == config
    assert keras.optimizers.deserialize(keras.optimizers.serialize(opt)).get_config() == config
    plain = ksm.ProxNAG(l1=3e-4, momentum=0.8)
    assert ksm.ProxNAG.from_config(plain.get_config()).get_config() == plain.get_config()


def test_save_load_and_resume_equal_uninterrupted(tmp_path):
    x, y = classification_data()
    path = tmp_path / "checkpoint.keras"

    def fresh():
        keras.utils.set_random_seed(0)
        return compile_for_test(mlp(), ksm.ProxNAG(0.05, momentum=0.9, l1=0.03))

    uninterrupted = fresh()
    uninterrupted.fit(x, y, batch_size=32, epochs=4, shuffle=False, verbose=0)
    interrupted = fresh()
    checkpoint = keras.callbacks.ModelCheckpoint(str(path))  # mid-training: w and w~ both saved
    interrupted.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0, callbacks=[checkpoint])
    resumed = keras.saving.load_model(str(path))  # no custom_objects
    assert isinstance(resumed.optimizer, ksm.ProxNAG)
    resumed.fit(x, y, batch_size=32, epochs=4, initial_epoch=2, shuffle=False, verbose=0)
    for a, b in zip(_numpy(resumed.weights), _numpy(uninterrupted.weights)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    assert nonzeros(kernels(resumed)) == nonzeros(kernels(uninterrupted))


# -- bad input ------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"l1": -1e-3}, "ProxNAG: `l1` must be a finite number >= 0. Received: l1=-0.001"),
        ({"l1": float("inf")}, "ProxNAG: `l1` must be a finite number >= 0"),
        ({"l1": "big"}, "ProxNAG: `l1` must be a finite number >= 0. Received: l1='big'"),
        ({"momentum": 1.0}, r"`momentum` must be a number in \[0, 1\)"),
        ({"momentum": -0.1}, r"`momentum` must be a number in \[0, 1\)"),
        ({"prunable": "kernel"}, "`prunable` must be None"),
    ],
)
def test_invalid_arguments_are_rejected_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ksm.ProxNAG(**kwargs)


def test_defaults_are_the_documented_ones():
    config = ksm.ProxNAG().get_config()
    assert (config["learning_rate"], config["momentum"], config["l1"]) == pytest.approx(
        (0.01, 0.9, 1e-5))
    assert config["prunable"] is None and config["weight_decay"] == 0


def test_nothing_to_prune_is_a_clear_error():
    with pytest.raises(ValueError, match="found nothing to prune"):
        _train(ksm.ProxNAG(prunable=lambda v: False), epochs=1)


# -- state the callbacks drive: supports, sync, finalize ------------------------


def _kernel_and_bias(seed=0, dtype="float32"):
    rng = np.random.default_rng(seed)
    values = [(rng.standard_normal(s) * 0.3).astype(dtype) for s in [(6, 5), (5,)]]
    variables = [keras.Variable(v, name=n, dtype=dtype) for v, n in zip(values, ["kernel", "bias"])]
    steps = [[rng.standard_normal(v.shape).astype(dtype) for v in values] for _ in range(4)]
    return values, variables, steps


def test_held_support_zeroes_the_iterate_until_released():
    values, variables, steps = _kernel_and_bias()
    opt = ksm.ProxNAG(0.1, momentum=0.9, l1=0.0)
    opt.build(variables)
    mask = np.ones((6, 5), "float32")
    mask[:, ::2] = 0  # a 0/1 mask, as ProxIterative passes
    opt.set_support(variables[0], mask)
    for grads in steps[:2]:
        opt.apply(grads, variables)
    # With l1 = 0 the iterate is Nesterov's w - momentum * v: the reference's, masked.
    tilde_1 = (values[0] - 0.1 * steps[0][0]) * mask
    w_1 = tilde_1 + 0.9 * (tilde_1 - values[0])
    tilde_2 = (w_1 - 0.1 * steps[1][0]) * mask
    w_2 = tilde_2 + 0.9 * (tilde_2 - tilde_1)
    np.testing.assert_allclose(opt.sparse_iterate(variables[0]).numpy(), tilde_2, atol=1e-6)
    np.testing.assert_allclose(variables[0].numpy(), w_2, atol=1e-6)
    opt.release_support()
    opt.apply(steps[2], variables)
    tilde_3 = opt.sparse_iterate(variables[0]).numpy()
    assert np.all(tilde_3 != 0)  # the released coordinates move again
    np.testing.assert_allclose(tilde_3, w_2 - 0.1 * steps[2][0], atol=1e-6)


def test_sync_iterates_restarts_the_sparse_iterate_at_assigned_values():
    values, variables, steps = _kernel_and_bias()
    opt = ksm.ProxNAG(0.1, momentum=0.9, l1=1.0)
    for grads in steps[:2]:
        opt.apply(grads, variables)
    bias_momentum = opt.momentums[1].numpy()
    fresh = np.arange(30, dtype="float32").reshape(6, 5) / 30
    variables[0].assign(fresh)
    opt.sync_iterates(variables)
    np.testing.assert_array_equal(opt.sparse_iterate(variables[0]).numpy(), fresh)
    np.testing.assert_array_equal(opt.momentums[1].numpy(), bias_momentum)  # biases untouched
    # The next step extrapolates from the new values: w = w~_new + momentum * (w~_new - fresh).
    opt.apply(steps[2], variables)
    hat = fresh - 0.1 * steps[2][0]
    new = np.sign(hat) * np.maximum(np.abs(hat) - 0.1, 0)
    np.testing.assert_allclose(variables[0].numpy(), new + 0.9 * (new - fresh), atol=1e-6)


def test_finalize_before_any_step_keeps_the_variables_and_after_one_writes_the_iterate():
    values, variables, steps = _kernel_and_bias()
    opt = ksm.ProxNAG(0.1, momentum=0.9, l1=1.0)
    opt.build(variables)
    opt.finalize_variable_values(variables)  # w~ is still the zero-initialised slot
    for variable, value in zip(variables, values):
        np.testing.assert_array_equal(variable.numpy(), value)
    opt.apply(steps[0], variables)
    w, tilde = _numpy_prox_nag(values, steps[:1], 0.1, 0.9, 1.0)
    assert not np.allclose(variables[0].numpy(), tilde[0], atol=1e-3)  # w is extrapolated
    opt.finalize_variable_values(variables)
    np.testing.assert_allclose(variables[0].numpy(), tilde[0], atol=1e-6)
    np.testing.assert_allclose(variables[1].numpy(), w[1], atol=1e-6)


def test_callable_l1_is_read_at_every_step():
    values, variables, steps = _kernel_and_bias()
    seen = []

    def l1(step):
        seen.append(step)
        return 1.0

    opt = ksm.ProxNAG(0.1, momentum=0.9, l1=l1)
    assert opt.l1_is_schedule and not ksm.ProxNAG(l1=1.0).l1_is_schedule
    for grads in steps:
        opt.apply(grads, variables)
    w, tilde = _numpy_prox_nag(values, steps, 0.1, 0.9, 1.0)
    np.testing.assert_allclose(variables[0].numpy(), w[0], atol=1e-6)
    np.testing.assert_allclose(opt.sparse_iterate(variables[0]).numpy(), tilde[0], atol=1e-6)
    assert len(seen) >= len(steps)


@tensorflow_only("float64 variables (JAX runs without jax_enable_x64: Keras makes them float32)")
def test_float64_variables_step_in_float64():
    """No float32 rounding of the gradients or the iterates on float64 variables.

    The hyperparameters are exact in float32: Keras keeps the learning rate in a
    float32 variable and TensorFlow casts Python floats through float32.
    """
    values, variables, steps = _kernel_and_bias(dtype="float64")
    opt = ksm.ProxNAG(0.125, momentum=0.5, l1=0.5)
    for grads in steps:
        opt.apply(grads, variables)
    w, tilde = _numpy_prox_nag(values, steps, 0.125, 0.5, 0.5)
    assert variables[0].dtype == "float64"
    np.testing.assert_allclose(variables[0].numpy(), w[0], atol=1e-13, rtol=0)
    np.testing.assert_allclose(opt.sparse_iterate(variables[0]).numpy(), tilde[0], atol=1e-13, rtol=0)
    np.testing.assert_allclose(variables[1].numpy(), w[1], atol=1e-13, rtol=0)


def test_zero_momentum_keeps_no_momentum_slot_and_is_the_proximal_gradient():
    values, variables, steps = _kernel_and_bias()
    opt = ksm.ProxNAG(0.1, momentum=0.0, l1=1.0)
    for grads in steps:
        opt.apply(grads, variables)
    assert not [v for v in opt.variables if v.name.endswith("_momentum")]
    sgd = keras.optimizers.SGD(0.1, momentum=0.0)
    sgd.build(variables)
    assert opt.momentums == sgd.momentums == []  # Keras's SGD attribute, as SGD has it
    w, tilde = _numpy_prox_nag(values, steps, 0.1, 0.0, 1.0)
    np.testing.assert_allclose(variables[0].numpy(), tilde[0], atol=1e-6)
    np.testing.assert_allclose(variables[1].numpy(), w[1], atol=1e-6)


@tensorflow_only("a TensorLayout without a device mesh (JAX refuses to make its sharding)")
def test_optimizer_state_is_named_and_laid_out_like_keras_slots_and_not_trainable():
    with keras.name_scope("dense"):
        kernel = keras.Variable(np.ones((6, 5), "float32"), name="kernel")
        bias = keras.Variable(np.ones((5,), "float32"), name="bias")
    # A distribution's sharding of the kernel (keras.distribution, used on JAX): its
    # optimizer state must be sharded the same way, as add_variable_from_reference does.
    kernel._layout = keras.distribution.TensorLayout(axes=(None, "model"))
    opt = ksm.ProxNAG(0.1, l1=1.0, name="prox")
    opt.apply([np.ones((6, 5), "float32"), np.ones((5,), "float32")], [kernel, bias])
    names = sorted(v.name for v in opt.variables)
    assert names == sorted(["iteration", "learning_rate", "l1", "dense_bias_momentum",
                            "dense_kernel_sparse_iterate", "dense_kernel_support"])
    assert all(v.path == f"prox/{v.name}" for v in opt.variables)
    assert not any(v.trainable for v in opt.variables)
    assert opt._supports[0].dtype == "bool"  # a quarter of w~'s memory
    assert opt._supports[0]._layout is opt.sparse_iterate(kernel)._layout is kernel._layout
    # l1 is a hyperparameter like the learning rate: one value, taken from the first replica.
    assert opt._l1.aggregation == opt._learning_rate.aggregation == "only_first_replica"


class _Halving(keras.optimizers.schedules.LearningRateSchedule):
    """An unregistered schedule: deserialising it needs custom_objects."""

    def __init__(self, start):
        self.start = start

    def __call__(self, step):
        return self.start / 2.0

    def get_config(self):
        return {"start": self.start}


def test_from_config_passes_custom_objects_to_both_schedules():
    config = ksm.ProxNAG(learning_rate=_Halving(0.5), l1=_Halving(0.25)).get_config()
    clone = ksm.ProxNAG.from_config(config, custom_objects={"_Halving": _Halving})
    assert isinstance(clone._l1, _Halving) and clone._l1.start == 0.25
    assert float(keras.ops.convert_to_numpy(clone.l1)) == 0.125
    assert float(keras.ops.convert_to_numpy(clone.learning_rate)) == 0.25


def test_ema_follows_the_sparse_iterate_step_by_step():
    values, variables, steps = _kernel_and_bias()
    opt = ksm.ProxNAG(0.1, momentum=0.9, l1=1.0, use_ema=True, ema_momentum=0.5)
    for grads in steps:
        opt.apply(grads, variables)
    # Keras's EMA: the first step copies, later ones average with ema_momentum; on
    # prunable variables it averages w~, elsewhere the variable itself.
    averages = None
    for k in range(1, len(steps) + 1):
        w, tilde = _numpy_prox_nag(values, steps[:k], 0.1, 0.9, 1.0)
        tracked = [tilde[0], w[1]]
        averages = tracked if averages is None else [0.5 * a + 0.5 * t
                                                     for a, t in zip(averages, tracked)]
    for variable, average in zip(variables, averages):
        moving = opt._model_variables_moving_average[opt._get_variable_index(variable)]
        np.testing.assert_allclose(moving.numpy(), average, atol=1e-6)
    opt.finalize_variable_values(variables)
    np.testing.assert_allclose(variables[0].numpy(), np.where(tilde[0] != 0, averages[0], 0),
                               atol=1e-6)
    np.testing.assert_array_equal(variables[0].numpy() == 0, tilde[0] == 0)
    np.testing.assert_allclose(variables[1].numpy(), averages[1], atol=1e-6)


def test_weight_decay_is_the_coupled_l2_of_an_elastic_net_on_kernels():
    values, variables, steps = _kernel_and_bias()
    opt = ksm.ProxNAG(0.1, momentum=0.9, l1=1.0, weight_decay=0.5)
    for grads in steps:
        opt.apply(grads, variables)
    w, tilde = _numpy_prox_nag(values, steps, 0.1, 0.9, 1.0, weight_decay=0.5)
    np.testing.assert_allclose(variables[0].numpy(), w[0], atol=1e-6)
    np.testing.assert_allclose(opt.sparse_iterate(variables[0]).numpy(), tilde[0], atol=1e-6)
    np.testing.assert_allclose(variables[1].numpy(), w[1], atol=1e-6)  # biases: no decay
