"""CentripetalSGD: the update against numpy, geometric convergence, finalize, XLA, config."""

import json
import math
import re
import warnings

import keras
import numpy as np
import pytest

import architectures
import keras_sparse_momentum as ksm
from keras_sparse_momentum.optimizers import centripetal_sgd
from keras_sparse_momentum.surgery.strip import max_relative_error
from support import tensorflow_only


def _small_model(dtype="float32"):
    inputs = keras.Input((3,), dtype=dtype)
    x = keras.layers.Dense(4, name="d1", dtype=dtype)(inputs)
    x = keras.layers.BatchNormalization(name="bn", dtype=dtype)(x)
    return keras.Model(inputs, keras.layers.Dense(2, name="d2", dtype=dtype)(x))


def _numpy_csgd(values, kinds, steps, lr, momentum, wd, eps, nesterov=True, vector_eps=None):
    """The paper's rule per filter, then Keras's (Nesterov) momentum."""
    vector_eps = 0.1 * eps if vector_eps is None else vector_eps
    clusters = [[0, 1], [2, 3]]
    w = [np.array(v, np.float64) for v in values]
    vel = [np.zeros_like(v) for v in w]
    for grads in steps:
        for i, g in enumerate(grads):
            g = np.array(g, np.float64)
            kind = kinds[i]
            if kind in ("kernel", "vector"):
                strength = eps if kind == "kernel" else vector_eps
                merged = g.copy()
                for c in clusters:
                    mean_g = g[..., c].mean(axis=-1, keepdims=True)
                    mean_w = w[i][..., c].mean(axis=-1, keepdims=True)
                    merged[..., c] = mean_g + strength * (w[i][..., c] - mean_w)
                g = merged
            if w[i].ndim >= 2:
                g = g + wd * w[i]
            vel[i] = momentum * vel[i] - lr * g
            w[i] = w[i] + (momentum * vel[i] - lr * g if nesterov else vel[i])
    return w


def _randomise(variables, rng):
    """Zero biases and unit BatchNorm scales start with identical clusters, which hides
    the strength they are pulled with: start every variable at random values."""
    for variable in variables:
        variable.assign(rng.standard_normal(variable.shape).astype(variable.dtype))


@pytest.mark.parametrize("nesterov", [True, False])
def test_steps_match_the_numpy_reference(nesterov):
    model = _small_model()
    plan = ksm.ClusterPlan.from_model(model, keep_ratio=0.5, method="even")
    variables = model.trainable_variables  # d1 kernel, bias; bn gamma, beta; d2 kernel, bias
    kinds = ["kernel", "vector", "vector", "vector", None, None]
    rng = np.random.default_rng(0)
    _randomise(variables, rng)  # biases and BatchNorm start with unequal clusters too
    start = [keras.ops.convert_to_numpy(v) for v in variables]
    steps = [[rng.standard_normal(v.shape).astype("float32") for v in variables] for _ in range(3)]
    opt = ksm.CentripetalSGD(plan, 0.1, momentum=0.9, weight_decay=0.01,
                             centripetal_strength=0.2, nesterov=nesterov)
    for grads in steps:
        opt.apply(grads, variables)
    expected = _numpy_csgd(start, kinds, steps, 0.1, 0.9, 0.01, 0.2, nesterov)
    for variable, reference in zip(variables, expected):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(variable), reference,
                                   rtol=1e-5, atol=1e-6)


def test_variables_after_an_unplanned_one_are_merged_too():
    inputs = keras.Input((3,))
    x = keras.layers.Dense(4, name="d0")(inputs)  # not in the plan, and first
    x = keras.layers.Dense(4, name="d1")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="d2")(x))
    plan = ksm.ClusterPlan.from_model(model, keep_ratio=0.5, method="even", layers=["d1"])
    variables = model.trainable_variables  # d0 kernel, bias; d1 kernel, bias; d2 kernel, bias
    kinds = [None, None, "kernel", "vector", None, None]
    rng = np.random.default_rng(0)
    _randomise(variables, rng)
    start = [keras.ops.convert_to_numpy(v) for v in variables]
    steps = [[rng.standard_normal(v.shape).astype("float32") for v in variables]]
    opt = ksm.CentripetalSGD(plan, 0.1, weight_decay=0.01, centripetal_strength=0.2)
    opt.apply(steps[0], variables)
    expected = _numpy_csgd(start, kinds, steps, 0.1, 0.9, 0.01, 0.2)
    for variable, reference in zip(variables, expected):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(variable), reference,
                                   rtol=1e-5, atol=1e-6)


@tensorflow_only("float64 variables (JAX runs without jax_enable_x64: Keras makes them float32)")
def test_float64_steps_match_the_numpy_reference_in_float64():
    """Gradients, weights and cluster means stay in the variable's dtype. The hyperparameters
    are float32 numbers, as in Keras's SGD (a float32 learning-rate variable; `ops.cast` of a
    Python float goes through a float32 tensor); clusters of two make 1 / size exact. A
    float32 rounding of the gradient or of the cluster means shows at 1e-9."""
    model = _small_model("float64")
    plan = ksm.ClusterPlan.from_model(model, keep_ratio=0.5, method="even")
    variables = model.trainable_variables
    kinds = ["kernel", "vector", "vector", "vector", None, None]
    rng = np.random.default_rng(0)
    _randomise(variables, rng)
    start = [keras.ops.convert_to_numpy(v) for v in variables]
    steps = [[rng.standard_normal(v.shape) for v in variables] for _ in range(2)]
    opt = ksm.CentripetalSGD(plan, 0.1, momentum=0.9, weight_decay=0.01,
                             centripetal_strength=0.2)
    for grads in steps:
        opt.apply([keras.ops.convert_to_tensor(g, "float64") for g in grads], variables)
    f32 = lambda h: float(np.float32(h))  # noqa: E731
    expected = _numpy_csgd(start, kinds, steps, f32(0.1), f32(0.9), f32(0.01), f32(0.2),
                           vector_eps=f32(0.1 * 0.2))
    for variable, reference in zip(variables, expected):
        assert variable.dtype == "float64"
        np.testing.assert_allclose(keras.ops.convert_to_numpy(variable), reference,
                                   rtol=0, atol=1e-13)


def test_zero_strength_and_singletons_are_keras_nesterov_sgd_with_coupled_decay():
    model, reference = _small_model(), _small_model()
    reference.set_weights(model.get_weights())
    plan = ksm.ClusterPlan.from_model(model, keep_ratio=1.0)
    assert all(len(c) == 1 for g in plan.groups for c in g.clusters)
    rng = np.random.default_rng(1)
    opt = ksm.CentripetalSGD(plan, 0.05, weight_decay=0.0)
    sgd = keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True)
    for _ in range(3):
        grads = [rng.standard_normal(v.shape).astype("float32") for v in model.trainable_variables]
        opt.apply(grads, model.trainable_variables)
        sgd.apply(grads, reference.trainable_variables)
    for a, b in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def _differences_shrink_by(steps, lr, momentum, k):
    """Scalar factor of w_i - w_j after `steps` Nesterov steps with gradient k * (w_i - w_j)."""
    x, v = 1.0, 0.0
    for _ in range(steps):
        g = k * x
        v = momentum * v - lr * g
        x = x + momentum * v - lr * g
    return x


def test_cluster_differences_decay_geometrically_whatever_the_data():
    keras.utils.set_random_seed(0)
    model = architectures.mlp()
    plan = ksm.ClusterPlan.from_model(model, keep_ratio=0.5, method="even")
    kernel = model.get_layer("hidden0").kernel
    before = keras.ops.convert_to_numpy(kernel)
    opt = ksm.CentripetalSGD(plan, 0.05, weight_decay=1e-3, centripetal_strength=0.5)
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).standard_normal((64, 12)).astype("float32")
    y = np.arange(64) % 4
    model.train_on_batch(x[:32], y[:32])  # builds; a train step without finalize
    for _ in range(9):
        model.train_on_batch(x[32:], y[32:])
    after = keras.ops.convert_to_numpy(kernel)
    factor = _differences_shrink_by(10, 0.05, 0.9, 1e-3 + 0.5)
    np.testing.assert_allclose(after[:, 0] - after[:, 1], factor * (before[:, 0] - before[:, 1]),
                               rtol=1e-3, atol=1e-6)
    assert abs(factor) < 0.2


@pytest.mark.filterwarnings("ignore:.*not converged")
def test_fit_ends_with_identical_clusters_and_a_lossless_strip():
    keras.utils.set_random_seed(0)
    model = architectures.cnn_flatten()
    plan = ksm.ClusterPlan.from_model(model, keep_ratio=0.5)
    start = plan.cluster_distance(model)
    opt = ksm.CentripetalSGD(plan, 0.1, centripetal_strength=3.0)
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8, 8, 2)).astype("float32")
    model.fit(x, np.arange(64) % 3, batch_size=16, epochs=6, verbose=0)  # 24 steps
    assert 0 < opt.last_cluster_distance < 0.3 * start  # vectors: 0.1 * eps
    assert plan.cluster_distance(model) == 0.0
    bn = next(layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))
    mean = keras.ops.convert_to_numpy(bn.moving_mean)
    for cluster in next(g for g in plan.groups if g.producers == ["conv"]).clusters:
        assert np.all(mean[cluster] == mean[cluster[0]])
    stripped = ksm.strip(model, plan)
    assert max_relative_error(model, stripped, x[:4]) <= 1e-4


@pytest.mark.filterwarnings("ignore:.*not converged")
def test_xla_matches_eager():
    def train(jit):
        keras.utils.set_random_seed(0)
        model = architectures.mlp()
        plan = ksm.ClusterPlan.from_model(model, keep_ratio=0.5)
        model.compile(optimizer=ksm.CentripetalSGD(plan, 0.05, centripetal_strength=0.1),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      jit_compile=jit)
        x = np.random.default_rng(0).standard_normal((64, 12)).astype("float32")
        model.fit(x, np.arange(64) % 4, batch_size=16, epochs=2, shuffle=False, verbose=0)
        return model.get_weights()

    for a, b in zip(train(False), train(True)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_config_round_trip():
    model = architectures.resnet(blocks=1)
    plan = ksm.ClusterPlan.from_model(model, keep_ratio=0.5)
    opt = ksm.CentripetalSGD(plan, 0.02, momentum=0.8, weight_decay=5e-4,
                             centripetal_strength=0.05, nesterov=False, clipnorm=1.0)
    config = json.loads(json.dumps(opt.get_config()))
    restored = ksm.CentripetalSGD.from_config(config)
    assert restored.plan == plan and restored.centripetal_strength == 0.05
    assert restored.weight_decay == 5e-4 and not restored.nesterov and restored.clipnorm == 1.0
    again = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(again, ksm.CentripetalSGD) and again.plan == plan


def test_defaults_are_the_papers_and_arguments_reach_the_config():
    plan = ksm.ClusterPlan.from_model(architectures.mlp(), keep_ratio=0.5, method="even")
    opt = ksm.CentripetalSGD(plan)
    config = opt.get_config()
    assert config["learning_rate"] == pytest.approx(0.01, rel=1e-7)  # a float32 variable
    assert (config["momentum"], config["nesterov"]) == (0.9, True)
    assert (opt.weight_decay, opt.centripetal_strength) == (1e-4, 3e-3)
    assert config["centripetal_strength"] == 3e-3 and config["prunable"] is None
    assert opt.last_cluster_distance is None
    named = ksm.CentripetalSGD(plan.to_dict(), name="csgd", prunable=_kernels_only)
    assert named.plan == plan and named.name == "csgd"
    assert named.get_config()["prunable"]["config"] == "_kernels_only"


def _kernels_only(variable):
    return variable.name == "kernel"


def test_bad_arguments():
    plan = ksm.ClusterPlan.from_model(architectures.mlp(), keep_ratio=0.5, method="even")
    with pytest.raises(ValueError) as caught:
        ksm.CentripetalSGD([1, 2])
    assert str(caught.value) == (
        "CentripetalSGD: `plan` must be a ksm.ClusterPlan (ClusterPlan.from_model(model, "
        "keep_ratio)) or its to_dict(). Received: plan=[1, 2]")
    with pytest.raises(ValueError) as caught:
        ksm.CentripetalSGD(plan, centripetal_strength=float("inf"))
    assert str(caught.value) == ("CentripetalSGD: `centripetal_strength` must be a finite "
                                 "number >= 0. Received: centripetal_strength=inf")
    with pytest.raises(ValueError, match=r"CentripetalSGD: `momentum` must be a number in \[0, 1\)"):
        ksm.CentripetalSGD(plan, momentum=1.0)
    wide = ksm.ClusterPlan.from_model(architectures.resnet(blocks=1), keep_ratio=0.5,
                                      method="even")
    trained = sorted(m.path for m in wide.merges if m.kind != "statistic")
    assert len(trained) > 6
    with pytest.raises(ValueError) as caught:
        ksm.CentripetalSGD(wide).build(architectures.mlp().trainable_variables)
    assert str(caught.value) == (
        f"CentripetalSGD: the plan merges variables the model does not train: {trained[:6]}. "
        "Make the plan from this model (and keep the clustered layers trainable).")


def _fit_plan_and_learning_rate_only(**strength):
    keras.utils.set_random_seed(0)
    model = architectures.cnn_flatten()
    plan = ksm.ClusterPlan.from_model(model, keep_ratio=0.5)
    opt = ksm.CentripetalSGD(plan, learning_rate=0.05, **strength)
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).standard_normal((480, 8, 8, 2)).astype("float32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, np.arange(480) % 3, batch_size=16, epochs=4, verbose=0)  # 120 steps
    return opt, [str(w.message) for w in caught if "not converged" in str(w.message)]


def test_plan_and_learning_rate_only_warn_with_a_strength_that_converges():
    """The paper's strength (3e-3) on a short budget (120 steps, as 30 epochs of a small
    data set): the warning gives the strength for this budget, and that strength does
    close the clusters (no warning)."""
    opt, messages = _fit_plan_and_learning_rate_only()
    assert opt.last_cluster_distance > 0.05 and len(messages) == 1
    found = re.search(r"For this budget \(120 steps\) use centripetal_strength=([\d.e-]+) "
                      r"instead of 0\.003", messages[0])
    assert found, messages[0]
    # Differences shrink by lr * eps / (1 - momentum) per step: the extra strength takes
    # the distance reached down to 0.01 over 120 steps at lr 0.05, momentum 0.9.
    needed = 0.003 + math.log(opt.last_cluster_distance / 0.01) / (120 * 0.05 / (1 - 0.9))
    assert found.group(1) == f"{needed:.2g}"
    opt, messages = _fit_plan_and_learning_rate_only(centripetal_strength=float(found.group(1)))
    assert opt.last_cluster_distance < 0.05 and messages == []


# -- the end-of-fit report: log, warning threshold, suggested strength ----------------


def _finalize_unconverged(monkeypatch, caplog, just_below=False):
    """finalize on an untrained MLP with `_UNCONVERGED` set to the distance its clusters have
    (or to the float just below): returns (distance before, log lines, warnings)."""
    model = architectures.mlp()
    plan = ksm.ClusterPlan.from_model(model, keep_ratio=0.5, method="even")
    distance = plan.cluster_distance(model)
    threshold = np.nextafter(distance, 0) if just_below else distance
    monkeypatch.setattr(centripetal_sgd, "_UNCONVERGED", threshold)
    opt = ksm.CentripetalSGD(plan, centripetal_strength=0.0)
    opt.build(model.trainable_variables)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(
            "INFO", logger="keras_sparse_momentum"):
        warnings.simplefilter("always")
        opt.finalize_variable_values(model.trainable_variables)
    assert opt.last_cluster_distance == distance and plan.cluster_distance(model) == 0.0
    return (distance, [r.getMessage() for r in caplog.records],
            [w for w in caught if "CentripetalSGD" in str(w.message)])


def test_finalize_logs_the_distance_and_warns_only_above_the_threshold(monkeypatch, caplog):
    distance, logged, caught = _finalize_unconverged(monkeypatch, caplog)
    message = ("CentripetalSGD: largest relative intra-cluster distance before the final "
               f"merge: {distance:.3g}")
    assert logged == [message]
    assert caught == []  # at the threshold: converged enough

    caplog.clear()
    distance, _, caught = _finalize_unconverged(monkeypatch, caplog, just_below=True)
    (warning,) = caught
    assert str(warning.message) == (
        "CentripetalSGD: largest relative intra-cluster distance before the final merge: "
        f"{distance:.3g}; the clusters had not converged, so merging them changes the model. "
        "Train longer or raise `centripetal_strength`.")  # no step taken yet
    assert warning.filename != centripetal_sgd.__file__  # points at a caller, not inside


@pytest.mark.filterwarnings("ignore:.*not converged")
def test_finalize_merges_the_ema_weights_it_swaps_in():
    model = architectures.mlp()
    plan = ksm.ClusterPlan.from_model(model, keep_ratio=0.5, method="even")
    variables = model.trainable_variables
    opt = ksm.CentripetalSGD(plan, 0.1, centripetal_strength=0.0, use_ema=True, ema_momentum=0.5)
    rng = np.random.default_rng(0)
    for _ in range(2):
        opt.apply([rng.standard_normal(v.shape).astype("float32") for v in variables], variables)
    averages = [keras.ops.convert_to_numpy(a) for a in opt._model_variables_moving_average]
    merges = {m.path: m for m in plan.merges}
    expected = [merges[v.path].equalize(a) if v.path in merges else a
                for v, a in zip(variables, averages)]
    assert any(not np.array_equal(keras.ops.convert_to_numpy(v), a)
               for v, a in zip(variables, averages))
    opt.finalize_variable_values(variables)
    for variable, value in zip(variables, expected):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), value)


def _unbound_plan_warnings(model):
    """The 'not bound' warnings of finalizing C-SGD with `model`'s plan restored from its config."""
    unbound = ksm.ClusterPlan.from_dict(ksm.ClusterPlan.from_model(model, 0.5, method="even")
                                        .to_dict())
    opt = ksm.CentripetalSGD(unbound, centripetal_strength=0.0)
    opt.build(model.trainable_variables)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt.finalize_variable_values(model.trainable_variables)
    return [w for w in caught if "not bound" in str(w.message)]


def test_unbound_plan_warns_only_when_it_has_moving_statistics():
    bound = _unbound_plan_warnings(architectures.cnn_flatten())
    assert [str(w.message) for w in bound] == [
        "CentripetalSGD: the plan is not bound to a model, so BatchNorm moving statistics "
        "were not equalised; call `plan.bind(model)` before `fit` (plans restored from a "
        "config are unbound)."]
    assert bound[0].filename != centripetal_sgd.__file__

    assert not _unbound_plan_warnings(architectures.mlp())  # no BatchNorm: nothing to warn about


class _Spike(keras.optimizers.schedules.LearningRateSchedule):
    """1 at step 0, 0 after: the sampled mean rate is 1 / (number of samples)."""

    def __call__(self, step):
        return 1.0 if step == 0 else 0.0


class _Ramp(keras.optimizers.schedules.LearningRateSchedule):
    """The step itself: the sampled mean rate shows which steps were sampled."""

    def __call__(self, step):
        return float(step)


def _suggestion(learning_rate, steps, distance, strength=3e-3):
    model = architectures.mlp()
    plan = ksm.ClusterPlan.from_model(model, keep_ratio=0.5, method="even")
    opt = ksm.CentripetalSGD(plan, learning_rate, momentum=0.9, centripetal_strength=strength)
    opt.iterations.assign(steps)
    opt.last_cluster_distance = distance
    return opt._suggestion()


@pytest.mark.parametrize("learning_rate, steps, distance, strength, needed", [
    # eps + log(d / 0.01) / (T * mean lr / (1 - momentum))
    (0.05, 1200, 0.4, 3e-3, 3e-3 + math.log(40) / (1200 * 0.05 / 0.1)),
    # a reach below 1 (a short, slow run) still gets a strength, only 0 does not
    (0.001, 50, 0.4, 3e-3, 3e-3 + math.log(40) / (50 * 0.001 / 0.1)),
    # 64 samples of the schedule (not 65): mean 1/64, and e = d / 0.01 makes the log 1.
    (_Spike(), 100, 0.01 * math.e, 0.0, 0.064),
    # samples at steps 0, 1, 2 of 3 (not up to 3 or 1): mean 1.
    (_Ramp(), 3, 0.01 * math.e, 0.0, 1 / 30),
])
def test_suggested_strength_closes_the_clusters_in_the_steps_run(learning_rate, steps, distance,
                                                                strength, needed):
    assert _suggestion(learning_rate, steps, distance, strength) == (
        f"For this budget ({steps:,} steps) use centripetal_strength={needed:.2g} instead of "
        f"{strength:g} (estimated to close the clusters to 0.01), or train longer.")


def test_no_steps_or_no_learning_rate_suggests_training_longer():
    for learning_rate, steps in [(0.05, 0), (_Spike(), 0), (_Ramp(), 1)]:
        assert _suggestion(learning_rate, steps, 0.4) == (
            "Train longer or raise `centripetal_strength`.")
