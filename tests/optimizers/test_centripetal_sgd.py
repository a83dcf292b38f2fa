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
from keras_sparse_momentum.surgery.strip import max_relative_error


def _small_model():
    inputs = keras.Input((3,))
    x = keras.layers.Dense(4, name="d1")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    return keras.Model(inputs, keras.layers.Dense(2, name="d2")(x))


def _numpy_csgd(values, kinds, steps, lr, momentum, wd, eps, nesterov=True):
    """The paper's rule per filter, then Keras's (Nesterov) momentum."""
    clusters = [[0, 1], [2, 3]]
    w = [np.array(v, np.float64) for v in values]
    vel = [np.zeros_like(v) for v in w]
    for grads in steps:
        for i, g in enumerate(grads):
            g = np.array(g, np.float64)
            kind = kinds[i]
            if kind in ("kernel", "vector"):
                strength = eps if kind == "kernel" else 0.1 * eps
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


@pytest.mark.parametrize("nesterov", [True, False])
def test_steps_match_the_numpy_reference(nesterov):
    model = _small_model()
    plan = ksm.ClusterPlan.from_model(model, keep_ratio=0.5, method="even")
    variables = model.trainable_variables  # d1 kernel, bias; bn gamma, beta; d2 kernel, bias
    kinds = ["kernel", "vector", "vector", "vector", None, None]
    rng = np.random.default_rng(0)
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


def test_unconverged_clusters_warn_and_unbound_plans_warn():
    model = architectures.mlp()
    plan = ksm.ClusterPlan.from_model(model, keep_ratio=0.5)
    opt = ksm.CentripetalSGD(plan, centripetal_strength=0.0)
    opt.build(model.trainable_variables)
    with pytest.warns(UserWarning, match="not converged"):
        opt.finalize_variable_values(model.trainable_variables)
    assert opt.last_cluster_distance > 0.05 and plan.cluster_distance(model) == 0.0

    cnn = architectures.cnn_flatten()
    unbound = ksm.ClusterPlan.from_dict(ksm.ClusterPlan.from_model(cnn, 0.5).to_dict())
    opt = ksm.CentripetalSGD(unbound)
    opt.build(cnn.trainable_variables)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt.finalize_variable_values(cnn.trainable_variables)
    assert any("not bound" in str(w.message) for w in caught)


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


def test_bad_arguments():
    plan = ksm.ClusterPlan.from_model(architectures.mlp(), keep_ratio=0.5)
    with pytest.raises(ValueError, match="plan"):
        ksm.CentripetalSGD(None)
    with pytest.raises(ValueError, match="centripetal_strength"):
        ksm.CentripetalSGD(plan, centripetal_strength=-1.0)
    with pytest.raises(ValueError, match="momentum"):
        ksm.CentripetalSGD(plan, momentum=1.0)
    other = architectures.cnn_flatten()
    with pytest.raises(ValueError, match="does not train"):
        ksm.CentripetalSGD(plan).build(other.trainable_variables)


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
