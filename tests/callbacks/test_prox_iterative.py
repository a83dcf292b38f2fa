"""PruneToRatio's Prox-NAG iterative algorithm: exact target, held masks, rounds, budget, errors."""

import functools
import math

import keras
import numpy as np
import pytest

import keras_sparse_momentum as ksm
from keras_sparse_momentum.callbacks.prox_iterative import ProxIterative
from support import classification_data, compile_for_test, kernels, mlp, nonzeros


class _IterateSparsity(keras.callbacks.Callback):
    """Sparsity of ProxNAG's sparse iterate after every step."""

    def __init__(self):
        super().__init__()
        self.values = []

    def on_train_batch_end(self, batch, logs=None):
        opt = self.model.optimizer
        counts = [np.count_nonzero(opt.sparse_iterate(v).numpy()) for v in kernels(self.model)]
        self.values.append(1 - sum(counts) / sum(v.numpy().size for v in kernels(self.model)))


def _pretrained(jit_compile=False):
    keras.utils.set_random_seed(0)
    x, y = classification_data(n=256)
    model = compile_for_test(mlp(), keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True))
    model.fit(x, y, batch_size=32, epochs=3, verbose=0)
    weights = model.get_weights()
    model = mlp()
    model.set_weights(weights)
    return compile_for_test(model, ksm.ProxNAG(0.05, momentum=0.9, l1=1e-4),
                            jit_compile=jit_compile, metrics=["accuracy"]), x, y


@pytest.mark.parametrize("jit_compile", [False, True])
def test_reaches_exactly_the_target_with_monotone_rounds(jit_compile):
    model, x, y = _pretrained(jit_compile)
    prune = ksm.PruneToRatio(sparsity=0.5, schedule="auto")
    trace = _IterateSparsity()
    history = model.fit(x, y, batch_size=32, epochs=12, verbose=0, callbacks=[prune, trace])
    driver = prune._driver
    n = sum(v.numpy().size for v in kernels(model))
    assert nonzeros(kernels(model)) == math.ceil(n * 0.5 - 1e-9) == prune.kept
    # The rounds raised l1 linearly and never lost sparsity; the target was met by a round.
    assert driver.rounds[-1]["stop"] == "target"
    sparsities = [r["sparsity"] for r in driver.rounds]
    assert sparsities == sorted(sparsities) and len(sparsities) >= 2
    l1s = [r["l1"] for r in driver.rounds]
    np.testing.assert_allclose(np.diff(l1s), l1s[0], rtol=1e-6)
    # Once the first mask is held, the sparse iterate never regains weights.
    first_hold = next(i for i, s in enumerate(trace.values) if s >= sparsities[0] - 1e-12)
    held = trace.values[first_hold:]
    assert min(held) >= sparsities[0] - 1e-12
    assert trace.values[-1] == pytest.approx(0.5, abs=1 / n)
    # Every epoch logs phase, round, l1 and the sparse iterate's sparsity.
    for key in ("sparsity", "l1", "prox_round", "prox_phase"):
        assert len(history.history[key]) == 12
    assert history.history["prox_phase"][-1] == 2 and history.history["l1"][-1] == 0.0
    assert [r["phase"] for r in driver.epoch_log][-1] == "final"
    # After fit: l1 restored, masks released, w~ equals the model.
    assert float(model.optimizer.l1.numpy()) == pytest.approx(1e-4)
    supports = [v for v in model.optimizer.variables if v.name.endswith("_support")]
    assert len(supports) == len(kernels(model)) and all(np.all(v.numpy() == 1) for v in supports)
    for v in kernels(model):
        np.testing.assert_array_equal(model.optimizer.sparse_iterate(v).numpy(), v.numpy())


def test_short_budget_warns_and_still_trims_to_the_target(monkeypatch):
    # A deliberately weak l1 (1 % of the calibrated step) cannot reach 95 % in
    # one epoch: the driver must say so and still leave exactly the target.
    weak = functools.partialmethod(ProxIterative.__init__, shrink_fraction=0.02)
    monkeypatch.setattr(ProxIterative, "__init__", weak)
    model, x, y = _pretrained()
    prune = ksm.PruneToRatio(sparsity=0.95, schedule="prox_iterative")
    with pytest.warns(UserWarning, match="below the target 0.9500"):
        model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[prune])
    n = sum(v.numpy().size for v in kernels(model))
    assert nonzeros(kernels(model)) == math.ceil(n * 0.05 - 1e-9)


def test_auto_picks_the_iterative_algorithm_only_for_prox_nag():
    model, x, y = _pretrained()
    sgd = compile_for_test(mlp(), keras.optimizers.SGD(0.05))
    auto = ksm.PruneToRatio(sparsity=0.5, schedule="auto")
    sgd.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[auto])
    assert auto._active == "polynomial" and auto._driver is None


@pytest.mark.parametrize(
    "optimizer, kwargs, match",
    [
        (lambda: keras.optimizers.SGD(0.05), {}, "needs the ProxNAG optimizer"),
        (lambda: ksm.ProxNAG(l1=keras.optimizers.schedules.CosineDecay(1e-3, 10)), {},
         "construct ProxNAG with a float `l1`"),
        (lambda: ksm.ProxNAG(), {"scope": "layer"},
         r"^PruneToRatio\(schedule='prox_iterative'\) needs scope='global'\.$"),
    ],
)
def test_invalid_combinations_are_clear_errors(optimizer, kwargs, match):
    x, y = classification_data(n=64)
    model = compile_for_test(mlp(), optimizer())
    prune = ksm.PruneToRatio(sparsity=0.5, schedule="prox_iterative", **kwargs)
    with pytest.raises(ValueError, match=match):
        model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[prune])


def test_unknown_schedule_name_is_rejected():
    with pytest.raises(ValueError, match="prox_iterative"):
        ksm.PruneToRatio(sparsity=0.5, schedule="prox")


def test_prunable_reaches_the_rounds_and_no_callback_state_stays_on_the_optimizer():
    model, x, y = _pretrained()
    last = model.layers[-1].kernel
    only_last = lambda v: v.path == last.path  # noqa: E731 -- ProxNAG and PruneToRatio alike
    compile_for_test(model, ksm.ProxNAG(0.05, momentum=0.9, l1=1e-4, prunable=only_last))
    prune = ksm.PruneToRatio(sparsity=0.5, schedule="prox_iterative", prunable=only_last)
    model.fit(x, y, batch_size=32, epochs=4, verbose=0, callbacks=[prune])
    assert np.count_nonzero(last.numpy()) == math.ceil(last.numpy().size * 0.5)
    others = [v for v in kernels(model) if v.path != last.path]
    assert nonzeros(others) == sum(v.numpy().size for v in others)
    assert [name for name in vars(model.optimizer) if name.startswith("_ksm_state_")] == []
