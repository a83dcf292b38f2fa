"""ClusterPlan: residual ties, k-means, validation, reports and serialisation."""

import json

import keras
import numpy as np
import pytest

import architectures
import keras_sparse_momentum as ksm
from keras_sparse_momentum.surgery import graph as graph_lib
from keras_sparse_momentum.surgery.kmeans import even_blocks, kmeans


def _producer_sets(plan):
    return sorted(tuple(sorted(g.producers)) for g in plan.groups)


def test_resnet_residual_ties_share_one_clustering():
    plan = ksm.ClusterPlan.from_model(architectures.resnet(), keep_ratio=0.5)
    tied = [tuple(sorted(g.producers)) for g in plan.groups if len(g.producers) > 1]
    assert sorted(tied) == [
        ("s0b0_b", "s0b1_b", "s0b2_b", "stem"),
        ("s1b0_b", "s1b0_proj", "s1b1_b", "s1b2_b"),
        ("s2b0_b", "s2b0_proj", "s2b1_b", "s2b2_b"),
    ]
    assert len(plan.groups) == 3 + 9  # three stage spaces, nine inner block convs
    for group in plan.groups:
        assert group.kept == group.width // 2
        assert sorted(i for c in group.clusters for i in c) == list(range(group.width))
    assert plan.skipped == [(["logits"], "model output")]


def test_merges_cover_kernels_biases_and_every_batchnorm_variable():
    model = architectures.cnn_flatten()
    plan = ksm.ClusterPlan.from_model(model, keep_ratio=0.5, method="even")
    kinds = {m.path: (m.kind, m.axis) for m in plan.merges}
    bn = next(layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))
    assert kinds == {
        "conv/kernel": ("kernel", -1),
        "conv/bias": ("vector", 0),
        f"{bn.name}/gamma": ("vector", -1),
        f"{bn.name}/beta": ("vector", -1),
        f"{bn.name}/moving_mean": ("statistic", -1),
        f"{bn.name}/moving_variance": ("statistic", -1),
        "hidden/kernel": ("kernel", -1),
        "hidden/bias": ("vector", 0),
    }


def test_mobilenet_depthwise_and_separable_kernels_follow_their_input_clusters():
    model = architectures.mobilenet_block()
    plan = ksm.ClusterPlan.from_model(model, keep_ratio=0.5, method="even")
    assert ("project", "pw1") in _producer_sets(plan)
    by_path = {m.path: m for m in plan.merges}
    depthwise = [m for m in plan.merges if m.axis == -2]
    # two DepthwiseConv2D kernels + the SeparableConv's depthwise half
    assert len(depthwise) == 3 and "sep/depthwise_kernel" in by_path
    tied = next(g for g in plan.groups if "pw1" in g.producers)
    assert by_path["sep/depthwise_kernel"].clusters == tied.clusters


def test_densenet_batchnorm_on_a_concatenation_uses_offset_clusters():
    model = architectures.densenet_block()
    plan = ksm.ClusterPlan.from_model(model, keep_ratio=0.5, method="even")
    clusters = {tuple(g.producers): g.clusters for g in plan.groups}
    assert clusters[("stem",)] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert clusters[("grow0",)] == [[0, 1], [2, 3]]
    # the BN before grow1 reads concat(stem, grow0): grow0's clusters shifted by 8
    widths = {m.path: m for m in plan.merges if m.path.endswith("/gamma")}
    concat_merges = [m for m in widths.values() if [8, 9] in m.clusters]
    assert concat_merges and all([0, 1] in m.clusters for m in concat_merges)


def test_kmeans_recovers_separated_clusters_deterministically():
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((3, 5)) * 10
    labels = np.array([2, 0, 1, 1, 2, 0, 0, 2, 1, 1])
    points = centres[labels] + 0.01 * rng.standard_normal((10, 5))
    clusters = kmeans(points, 3, seed=4)
    assert clusters == [[0, 4, 7], [1, 5, 6], [2, 3, 8, 9]]
    assert kmeans(points, 3, seed=4) == clusters
    # duplicates only: still exactly k non-empty clusters
    assert sorted(len(c) for c in kmeans(np.zeros((6, 2)), 4)) == [1, 1, 1, 3]
    assert even_blocks(7, 3) == [[0, 1, 2], [3, 4], [5, 6]]


def test_plan_is_deterministic_and_round_trips_through_json():
    model = architectures.resnet(blocks=1)
    plan = ksm.ClusterPlan.from_model(model, keep_ratio=0.3, seed=3)
    assert plan == ksm.ClusterPlan.from_model(model, keep_ratio=0.3, seed=3)
    restored = ksm.ClusterPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert restored == plan and restored.model is None and plan.model is model
    assert [g.kept for g in plan.groups] == [2, 2, 3, 3, 5, 5]  # ceil(0.3 * width)


def test_summary_lists_ties_and_what_is_left_unpruned():
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, name="c1")(inputs)
    x = keras.layers.Lambda(lambda t: t * 2.0, name="doubler")(x)
    x = keras.layers.Conv2D(6, 3, name="c2")(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="out")(x))
    plan = ksm.ClusterPlan.from_model(model, keep_ratio=0.5)
    assert [g.producers for g in plan.groups] == [["c2"]]
    text = str(plan)
    assert "c2" in text and "unpruned c1:" in text and "Lambda" in text
    assert "unpruned out: model output" in text


def test_layers_argument_selects_spaces_and_explains_refusals():
    model = architectures.resnet(blocks=1)
    plan = ksm.ClusterPlan.from_model(model, keep_ratio=0.5, layers=["s1b0_proj", "s0b0_a"])
    assert _producer_sets(plan) == [("s0b0_a",), ("s1b0_b", "s1b0_proj")]
    with pytest.raises(ValueError, match="model output"):
        ksm.ClusterPlan.from_model(model, keep_ratio=0.5, layers=["logits"])
    with pytest.raises(ValueError, match="nope"):
        ksm.ClusterPlan.from_model(model, keep_ratio=0.5, layers=["nope"])


@pytest.mark.parametrize("keep_ratio", [0, -0.5, 1.5, "half", True, None])
def test_invalid_keep_ratio(keep_ratio):
    with pytest.raises(ValueError, match=r"keep_ratio.*\(0, 1\]"):
        ksm.ClusterPlan.from_model(architectures.mlp(), keep_ratio=keep_ratio)


def test_unsupported_graphs_give_clear_errors():
    with pytest.raises(ValueError, match="method"):
        ksm.ClusterPlan.from_model(architectures.mlp(), 0.5, method="random")

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3)

        def call(self, x):
            return self.dense(x)

    subclassed = Subclassed()
    subclassed(np.zeros((1, 4), "float32"))
    with pytest.raises(ValueError, match="functional or Sequential"):
        ksm.ClusterPlan.from_model(subclassed, 0.5)
    single = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="nothing .* can be clustered.*model output"):
        ksm.ClusterPlan.from_model(single, 0.5)


def test_plan_from_another_model_is_refused():
    plan = ksm.ClusterPlan.from_model(architectures.mlp(), 0.5)
    other = architectures.mlp(hidden=(20, 10))
    with pytest.raises(ValueError, match="does not match"):
        plan.channel_maps(graph_lib.ChannelGraph(other))


def test_shared_batchnorm_with_positive_axis_is_classified_per_call():
    inputs = keras.Input((4, 4, 3))
    conv = keras.layers.Conv2D(6, 1, name="conv")
    bn = keras.layers.BatchNormalization(axis=3)
    a = keras.layers.ReLU()(bn(conv(inputs)))
    b = bn(conv(keras.layers.ReLU()(inputs)))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Add()([a, b]))
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    channel_graph = graph_lib.ChannelGraph(model)
    assert channel_graph.layer_roles[bn] == graph_lib.TRANSFORMER
    plan = ksm.ClusterPlan.from_model(model, 0.5)
    assert [g.producers for g in plan.groups] == [["conv"]]
