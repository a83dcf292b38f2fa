"""strip(model, plan): one filter per cluster, consumers' channels summed, same function."""

import keras
import numpy as np
import pytest

import architectures
import keras_sparse_momentum as ksm
from keras_sparse_momentum.surgery.strip import max_relative_error


def _randomise_batchnorm(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = (w.shape for w in layer.weights)
            layer.set_weights([
                rng.uniform(0.5, 1.5, gamma).astype("float32"),
                rng.normal(0, 0.3, beta).astype("float32"),
                rng.normal(0, 0.3, mean).astype("float32"),
                rng.uniform(0.5, 2.0, variance).astype("float32"),
            ])


def _widths(model):
    return {
        layer.name: (layer.filters if hasattr(layer, "filters") else layer.units)
        for layer in model.layers
        if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D,
                              keras.layers.SeparableConv2D))
    }


def _inputs(model, n=4, seed=1):
    shape = (n, *model.input_shape[1:])
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


ARCHITECTURES = {
    "resnet": architectures.resnet,
    "densenet": architectures.densenet_block,
    "mobilenet": architectures.mobilenet_block,
    "cnn_flatten": architectures.cnn_flatten,
    "mlp": architectures.mlp,
}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_stripped_model_computes_the_clustered_models_outputs(name):
    model = ARCHITECTURES[name]()
    _randomise_batchnorm(model)
    plan = ksm.ClusterPlan.from_model(model, keep_ratio=0.5)
    before = plan.equalize(model)
    assert before > 0.1 and plan.cluster_distance(model) == 0.0
    stripped = ksm.strip(model, plan)
    assert max_relative_error(model, stripped, _inputs(model)) <= 1e-4
    widths, new_widths = _widths(model), _widths(stripped)
    kept = {name: g.kept for g in plan.groups for name in g.producers}
    assert new_widths == {layer: kept.get(layer, width) for layer, width in widths.items()}
    assert stripped.count_params() < 0.5 * model.count_params()


def test_unmerged_clusters_are_caught_by_verification():
    model = architectures.resnet(blocks=1)
    _randomise_batchnorm(model)
    plan = ksm.ClusterPlan.from_model(model, keep_ratio=0.5)
    with pytest.raises(RuntimeError, match="changed the function"):
        ksm.strip(model, plan)


def test_flatten_dense_rows_of_a_cluster_are_summed():
    model = architectures.cnn_flatten()
    plan = ksm.ClusterPlan.from_model(model, keep_ratio=0.5, method="even", layers=["conv"])
    plan.equalize(model)
    stripped = ksm.strip(model, plan)
    old = keras.ops.convert_to_numpy(model.get_layer("hidden").kernel)  # (4*4*6, 10)
    new = keras.ops.convert_to_numpy(stripped.get_layer("hidden").kernel)  # (4*4*3, 10)
    expected = old.reshape(16, 3, 2, 10).sum(axis=2).reshape(48, 10)  # clusters (0,1), (2,3), (4,5)
    np.testing.assert_allclose(new, expected, rtol=1e-6)


def test_clusters_and_dead_units_are_removed_together():
    model = architectures.mlp()
    plan = ksm.ClusterPlan.from_model(model, keep_ratio=0.5, method="even")
    kernel = keras.ops.convert_to_numpy(model.get_layer("hidden0").kernel)
    kernel[:, :2] = 0.0  # the first cluster of hidden0 is dead: it carries relu(bias)
    model.get_layer("hidden0").kernel.assign(kernel)
    model.get_layer("hidden0").bias.assign(np.linspace(0.1, 0.5, 16).astype("float32"))
    plan.equalize(model)
    stripped = ksm.strip(model, plan)
    assert _widths(stripped)["hidden0"] == 8 - 1
    assert max_relative_error(model, stripped, _inputs(model)) <= 1e-4


def test_stripped_model_of_a_csgd_model_comes_back_uncompiled():
    model = architectures.mlp()
    plan = ksm.ClusterPlan.from_model(model, keep_ratio=0.5)
    model.compile(optimizer=ksm.CentripetalSGD(plan), loss="mse")
    model.optimizer.build(model.trainable_variables)
    plan.equalize(model)
    stripped = ksm.strip(model, plan)
    assert not stripped.compiled and model.compiled
    model.compile(optimizer=keras.optimizers.SGD(), loss="mse")
    assert ksm.strip(model, plan).compiled


def _conv1d_bn(seed=0):
    """Issue 16's composability model: Conv1D -> BN -> Conv1D('same') -> global max pool -> Dense."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((64, 8))
    x = keras.layers.Conv1D(32, 5, activation="relu", name="c1")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Conv1D(32, 3, activation="relu", padding="same", name="c2")(x)
    x = keras.layers.GlobalMaxPooling1D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="head")(x))


@pytest.mark.parametrize("pruner", ["gsm", "prune_to_ratio"])
def test_pruned_then_centripetal_then_strip_keeps_the_function(pruner):
    model = _conv1d_bn()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 64, 8)).astype("float32")
    y = rng.integers(0, 10, 64)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if pruner == "gsm":
        model.compile(optimizer=ksm.GSMMomentum.for_budget(4, compression=10), loss=loss,
                      jit_compile=False)
        model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    else:
        model.compile(optimizer=keras.optimizers.Adam(0.01), loss=loss, jit_compile=False)
        model.fit(x, y, batch_size=16, epochs=1, verbose=0,
                  callbacks=[ksm.PruneToRatio(compression=40, scope="global")])
    kernel = keras.ops.convert_to_numpy(model.get_layer("c1").kernel).reshape(-1, 32)
    assert not np.all(np.any(kernel != 0, axis=0))  # some filters of the first conv are dead
    plan = ksm.ClusterPlan.from_model(model, keep_ratio=0.5)
    model.compile(optimizer=ksm.CentripetalSGD(plan, learning_rate=0.05,
                                               centripetal_strength=0.5), loss=loss,
                  jit_compile=False)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    stripped = ksm.strip(model, plan)
    assert max_relative_error(model, stripped, x[:16]) <= 1e-4
    assert stripped.get_layer("c1").filters <= 16 and stripped.get_layer("c2").filters <= 16


def test_unmerged_statistics_are_named_and_a_plan_bound_elsewhere_is_refused():
    model = _conv1d_bn()
    plan = ksm.ClusterPlan.from_model(model, keep_ratio=0.5, method="even")
    plan.equalize(model)
    bn = next(l for l in model.layers if isinstance(l, keras.layers.BatchNormalization))
    mean = keras.ops.convert_to_numpy(bn.moving_mean).copy()
    mean[1] += 0.5  # channels 0 and 1 share a cluster: their statistics now differ
    bn.moving_mean.assign(mean)
    with pytest.raises(RuntimeError, match=f"not identical in {bn.name}/moving_mean"):
        ksm.strip(model, plan)
    # C-SGD merges the statistics of the model its plan is bound to: a copy is refused.
    copy = keras.models.clone_model(model)
    copy.compile(optimizer=ksm.CentripetalSGD(plan), loss="mse")
    with pytest.raises(ValueError, match="bound to model .*plan.bind"):
        copy.optimizer.build(copy.trainable_variables)
    plan.bind(copy)
    copy.optimizer.build(copy.trainable_variables)
