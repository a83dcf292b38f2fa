"""AOFP: the halving rule on a synthetic oracle, masks held, FLOPs target, strip equality."""

import keras
import numpy as np
import pytest

import keras_sparse_momentum as ksm
from keras_sparse_momentum.callbacks.halving_search import HalvingSearch
from keras_sparse_momentum.surgery.strip import max_relative_error
from support import compile_for_test

# -- the halving rule, no model -------------------------------------------------


def _run(search, oracle, rng, decisions):
    """Feed `search` with `oracle(masked)` for a number of decisions; returns pruned lists."""
    pruned = []
    for _ in range(decisions):
        while not search.ready:
            masked = search.sample(rng)
            search.record(masked, oracle(masked))
        pruned.append(search.decide())
    return pruned


def test_samples_are_random_halves_of_the_search_space():
    search = HalvingSearch(9, iters_per_half=3, thresh=0.01)
    rng = np.random.default_rng(0)
    halves = [search.sample(rng) for _ in range(20)]
    assert all(len(h) == 4 and len(set(h)) == 4 and set(h) <= set(range(9)) for h in halves)
    assert len({tuple(h) for h in halves}) > 10


def test_no_damage_prunes_the_half_and_restarts():
    search = HalvingSearch(16, iters_per_half=4, thresh=0.01)
    rng = np.random.default_rng(0)
    (first,) = _run(search, lambda masked: 0.0, rng, 1)
    assert len(first) == 8 and search.pruned == first and search.rounds == 1
    assert search.live == sorted(set(range(16)) - set(first))
    assert search.search == search.live and search.iterations == 0
    assert all(search.counts[c] == 0 for c in search.search)


def test_too_much_damage_shrinks_the_search_space_then_restarts():
    search = HalvingSearch(16, iters_per_half=4, thresh=0.01)
    rng = np.random.default_rng(0)
    sizes, rounds = [], []
    for _ in range(5):
        _run(search, lambda masked: 1.0, rng, 1)
        sizes.append(len(search.search))
        rounds.append(search.rounds)
    assert sizes == [8, 4, 2, 16, 8]  # half=1 with no success: restart on all live
    assert rounds == [0, 0, 0, 1, 1]
    assert search.pruned == [] and search.decisions == 5


def test_candidates_are_the_lowest_mean_scores():
    search = HalvingSearch([3, 5, 7, 9], iters_per_half=2, thresh=0.5)
    search.record([3, 5], 0.9)
    search.record([7, 9], 0.2)
    search.record([3, 9], 0.3)
    # mean scores: 3 -> 0.6, 5 -> 0.9, 7 -> 0.2, 9 -> 0.25
    assert search.candidates() == [7, 9]
    assert search.decide() == [7, 9]  # mean 0.225 < 0.5
    assert search.live == [3, 5]


def test_budget_and_min_keep_limit_a_pruning():
    search = HalvingSearch(8, iters_per_half=1, thresh=0.1, min_keep=5)
    search.record([0, 1, 2, 3], 0.0)
    assert search.decide(budget=2) == [0, 1]  # 4 candidates, 2 wanted
    assert not search.finished
    search.record([2, 3, 4], 0.0)
    assert search.decide() == [2]  # 3 candidates, 1 above min_keep
    assert search.live == [3, 4, 5, 6, 7] and search.finished


def test_synthetic_oracle_prunes_exactly_the_unimportant_channels():
    important = {2, 5, 11, 13}
    weights = np.array([1.0 if c in important else 1e-4 for c in range(16)])
    oracle = lambda masked: float(weights[masked].sum() / weights.sum())  # noqa: E731
    search = HalvingSearch(16, iters_per_half=6, thresh=0.01)
    rng = np.random.default_rng(1)
    _run(search, oracle, rng, 60)
    assert set(search.live) == important
    assert sorted(search.pruned) == sorted(set(range(16)) - important)


# -- the callback on tiny models ---------------------------------------------------


def _cnn():
    x = inputs = keras.Input((8, 8, 1))
    for filters in (8, 8):
        x = keras.layers.Conv2D(filters, 3, padding="same")(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(12, 3, padding="same")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(4)(x))


def _resnet():
    x = inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", name="stem")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    for block in range(2):
        y = keras.layers.Conv2D(6, 3, padding="same", name=f"b{block}_a")(x)
        y = keras.layers.BatchNormalization()(y)
        y = keras.layers.ReLU()(y)
        y = keras.layers.Conv2D(8, 3, padding="same", name=f"b{block}_b")(y)
        y = keras.layers.BatchNormalization()(y)
        x = keras.layers.ReLU()(keras.layers.Add()([x, y]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(4, name="head")(x))


def _data(n=256, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 8, 8, 1)).astype("float32")
    y = (x[:, :4].mean(axis=(1, 2, 3)) > 0) * 2 + (x[:, :, :4].mean(axis=(1, 2, 3)) > 0)
    return x, y.astype("int32")


def _fit(model, callbacks, epochs=4):
    x, y = _data()
    compile_for_test(model, keras.optimizers.SGD(0.05, momentum=0.9))
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=callbacks)
    return x


def _aofp(target=0.5, **kwargs):
    kwargs = dict(dict(thresh=0.1, iters_per_half=3, measure_every=1, seed=0), **kwargs)
    return ksm.AOFP(target, probe_data=_data(64, seed=1)[0], **kwargs)


def _channel_params(layer, bn, channels):
    kernel = keras.ops.convert_to_numpy(layer.kernel)[..., channels]
    values = [kernel, keras.ops.convert_to_numpy(layer.bias)[channels]]
    values += [keras.ops.convert_to_numpy(v)[channels] for v in (bn.gamma, bn.beta)]
    return values


def _cnn_macs(w0, w1, w2):
    """MACs per example of `_cnn` with conv widths w0, w1, w2, counted by hand: kernel size
    x output positions (8x8 before the pooling, 4x4 after; the Dense reads 4*4*w2 values)."""
    return 8 * 8 * 3 * 3 * (1 * w0 + w0 * w1) + 4 * 4 * (3 * 3 * w1 * w2 + w2 * 4)


class _HeldMasks(keras.callbacks.Callback):
    """After every batch: are all pruned channels' parameters exactly zero?"""

    def __init__(self, aofp, pairs):
        super().__init__()
        self.aofp, self.pairs, self.checked, self.ok = aofp, pairs, 0, True

    def on_train_batch_end(self, batch, logs=None):
        self.model  # noqa: B018 -- on JAX, brings the training state back into the variables
        for (layer, bn), search in zip(self.pairs, self.aofp._searches):
            if search.pruned:
                self.checked += 1
                self.ok &= all(not np.any(v) for v in _channel_params(layer, bn, search.pruned))


def test_masks_are_held_flops_target_met_and_strip_is_exact():
    model = _cnn()
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    aofp = _aofp(0.5)
    held = _HeldMasks(aofp, list(zip(convs, bns)))
    x = _fit(model, [aofp, held])
    assert held.checked > 10 and held.ok
    assert aofp.target_reached and aofp.flops_ratio <= 0.5
    assert [e["flops_ratio"] for e in aofp.events] == sorted(
        [e["flops_ratio"] for e in aofp.events], reverse=True
    )
    # The FLOPs ratio, counted by hand; the last pruning took no more filters than needed.
    widths = [aofp.widths[c.name] for c in convs]
    assert _cnn_macs(8, 8, 12) == 56064 == ksm.sparsity_report(model).dense_macs
    assert _cnn_macs(*widths) / _cnn_macs(8, 8, 12) == pytest.approx(aofp.flops_ratio)
    one_more = list(widths)
    one_more[[c.name for c in convs].index(aofp.events[-1]["layer"])] += 1
    assert _cnn_macs(*one_more) / _cnn_macs(8, 8, 12) > 0.5
    # Constraints are gone; strip removes the pruned filters with the same outputs.
    assert all(c.kernel.constraint is None for c in convs)
    slim = ksm.strip(model)
    assert max_relative_error(model, slim, x[:32]) < 1e-5
    slim_convs = [l for l in slim.layers if isinstance(l, keras.layers.Conv2D)]
    assert [l.filters for l in slim_convs] == widths
    assert ksm.sparsity_report(slim).dense_macs == _cnn_macs(*widths)


def test_residual_ties_are_pruned_together_and_strip_is_exact():
    model = _resnet()
    aofp = _aofp(0.6)
    x = _fit(model, [aofp])
    assert set(aofp.original_widths) == {"stem+b0_b+b1_b", "b0_a", "b1_a"}
    assert aofp.flops_ratio <= 0.6
    tied = [model.get_layer(n) for n in ("stem", "b0_b", "b1_b")]
    dead = [
        set(np.flatnonzero(~keras.ops.convert_to_numpy(l.kernel).reshape(-1, 8).any(axis=0)))
        for l in tied
    ]
    assert dead[0] == dead[1] == dead[2]
    assert len(dead[0]) == 8 - aofp.widths["stem+b0_b+b1_b"]
    slim = ksm.strip(model)
    assert max_relative_error(model, slim, x[:32]) < 1e-5
    assert slim.get_layer("stem").filters == aofp.widths["stem+b0_b+b1_b"]
    assert slim.get_layer("b0_a").filters == aofp.widths["b0_a"]
    assert ksm.sparsity_report(slim).dense_macs / ksm.sparsity_report(model).dense_macs == (
        pytest.approx(aofp.flops_ratio)
    )


def test_batch_norm_statistics_are_re_estimated_on_the_probe_data_after_pruning():
    model = _resnet()
    aofp = _aofp(0.6)
    _fit(model, [aofp])
    assert aofp.events
    probe = aofp.probe_data
    for layer in [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]:
        features = keras.Model(model.inputs, layer.input)(probe, training=False)
        inputs = keras.ops.convert_to_numpy(features).reshape(-1, layer.input.shape[-1])
        np.testing.assert_allclose(layer.moving_mean.numpy(), inputs.mean(axis=0), atol=1e-5)
        np.testing.assert_allclose(layer.moving_variance.numpy(), inputs.var(axis=0),
                                   rtol=1e-4, atol=1e-6)


def test_residual_skip_and_layer_selection():
    model = _resnet()
    aofp = _aofp(0.9, residual="skip", layers=["b1_a"])
    _fit(model, [aofp], epochs=2)
    assert set(aofp.widths) == {"b1_a"}
    assert aofp.widths["b1_a"] < 6 and aofp.flops_ratio <= 0.9
    with pytest.raises(ValueError, match="residual"):
        _fit(_resnet(), [_aofp(0.5, residual="skip", layers=["stem"])], epochs=1)
    with pytest.raises(ValueError, match="model output"):
        _fit(_resnet(), [_aofp(0.5, layers=["head"])], epochs=1)
    with pytest.raises(ValueError, match="not a Dense/Conv"):
        _fit(_resnet(), [_aofp(0.5, layers=["nope"])], epochs=1)


def test_threshold_growth_reaches_the_target_from_a_tiny_threshold():
    model = _cnn()
    aofp = _aofp(0.8, thresh=1e-3, thresh_growth=10.0)
    _fit(model, [aofp])
    assert aofp.target_reached and aofp.flops_ratio <= 0.8
    assert aofp.thresh_reached >= 1e-2  # raised at least once, by factors of 10
    assert np.log10(aofp.thresh_reached / 1e-3) == pytest.approx(
        round(np.log10(aofp.thresh_reached / 1e-3))
    )


def test_measuring_does_not_touch_training():
    """With nothing pruned, training with AOFP equals training without it."""
    keras.utils.set_random_seed(3)
    plain = _cnn()
    keras.utils.set_random_seed(3)
    measured = _cnn()
    measured.set_weights(plain.get_weights())
    _fit(plain, [], epochs=2)
    aofp = _aofp(0.5, thresh=1e-12)
    keras.utils.set_random_seed(3)  # JAX's `fit` shuffles with NumPy's global generator
    with pytest.warns(UserWarning, match="not the target"):
        _fit(measured, [aofp], epochs=2)
    assert aofp.measurements == 16 and not aofp.events
    for a, b in zip(plain.get_weights(), measured.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(target_flops=0), "target_flops"),
        (dict(target_flops=1), "target_flops"),
        (dict(target_flops=1.5), "target_flops"),
        (dict(target_flops="half"), "target_flops"),
        (dict(target_flops=0.5, thresh=0), "thresh"),
        (dict(target_flops=0.5, iters_per_half=0), "iters_per_half"),
        (dict(target_flops=0.5, measure_every=0), "measure_every"),
        (dict(target_flops=0.5, residual="no"), "residual"),
        (dict(target_flops=0.5, thresh_growth=0.5), "thresh_growth"),
        (dict(target_flops=0.5, layers="conv"), "layers"),
        (dict(target_flops=0.5, probe_data=None), "probe_data"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    kwargs.setdefault("probe_data", np.zeros((4, 8, 8, 1), "float32"))
    with pytest.raises(ValueError, match=match):
        ksm.AOFP(**kwargs)


def test_required_arguments_only_on_a_short_budget_warn_with_the_change_to_make():
    """target_flops + probe_data alone, 192 steps (24 epochs of the 256 examples): the
    paper's fixed threshold (0.01) and 50 measurements per decision do not reach the
    target; the warning names the change (thresh_growth=2.0) and the current values."""
    aofp = ksm.AOFP(0.5, probe_data=_data(64, seed=1)[0])
    x, y = _data(24 * 256)
    model = compile_for_test(_cnn(), keras.optimizers.SGD(0.05, momentum=0.9))
    with pytest.warns(UserWarning, match=r"not the target 0\.5, in 192 steps: pass "
                      r"thresh_growth=2\.0 .*`thresh` \(now 0\.01\).*\(now 50\).*\(now 4\)"):
        model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[aofp])
    assert not aofp.target_reached and aofp.flops_ratio > 0.5
