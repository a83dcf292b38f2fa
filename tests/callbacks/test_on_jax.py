"""The callbacks on the JAX backend, where `fit` jit-compiles a stateless train step.

Run with `KERAS_BACKEND=jax` (`.ci/run` runs tests/callbacks on both backends).
The masks must reach the step as optimizer variables: a plain variable would be
a constant of the compiled step and pruned weights would grow back, which the
per-step checks below would see.
"""

import math

import keras
import numpy as np
import pytest

import keras_sparse_momentum as ksm
from keras_sparse_momentum.surgery.strip import max_relative_error
from support import classification_data, compile_for_test, kernels, mlp, nonzeros

on_jax = pytest.mark.skipif(keras.backend.backend() != "jax", reason="needs KERAS_BACKEND=jax")


def _optimizer(name):
    return {"sgd": keras.optimizers.SGD(0.05, momentum=0.9),
            "adam": keras.optimizers.Adam(1e-2)}[name]


def _size(variables):
    return sum(int(np.prod(v.shape)) for v in variables)


class _Steps(keras.callbacks.Callback):
    """After every step: the kernels' nonzeros and which weights are zero."""

    def __init__(self):
        super().__init__()
        self.counts, self.zeros = [], []

    def on_train_batch_end(self, batch, logs=None):
        values = [keras.ops.convert_to_numpy(v) for v in kernels(self.model)]
        self.counts.append(sum(int(np.count_nonzero(v)) for v in values))
        self.zeros.append(np.concatenate([v.ravel() == 0 for v in values]))


@on_jax
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_end_schedule_exact_count(optimizer):
    model = compile_for_test(mlp(), _optimizer(optimizer), jit_compile=True)
    x, y = classification_data()
    prune = ksm.PruneToRatio(compression=17)
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[prune])
    assert model.jit_compile  # the default on JAX
    n = _size(kernels(model))
    assert nonzeros(kernels(model)) == math.ceil(n / 17) == prune.kept


@on_jax
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_polynomial_masks_are_held_inside_the_compiled_step(optimizer):
    model = compile_for_test(mlp(), _optimizer(optimizer), jit_compile=True)
    x, y = classification_data()
    prune = ksm.PruneToRatio(compression=10, schedule="polynomial", frequency=3, end_step=18)
    steps = _Steps()
    model.fit(x, y, batch_size=32, epochs=3, verbose=0, callbacks=[prune, steps])
    n = _size(kernels(model))
    for step, count in enumerate(steps.counts):
        scheduled = prune.sparsity_at(min(step - step % 3, 18))  # masks move every 3 steps
        assert count == math.ceil(round(n * (1 - scheduled), 6))
    for before, after in zip(steps.zeros, steps.zeros[1:]):
        assert np.all(after[before])  # a pruned weight stays exactly zero
    assert nonzeros(kernels(model)) == math.ceil(n / 10) == prune.kept
    # After fit the masks leave the optimizer and the constraints the variables.
    assert not any("prune_mask" in v.name for v in model.optimizer.variables)
    assert all(v.constraint is None for v in kernels(model))


@on_jax
def test_polynomial_resumes_from_a_backup(tmp_path):
    import test_resume

    def build():
        keras.utils.set_random_seed(0)
        model = compile_for_test(mlp(), keras.optimizers.SGD(0.05, momentum=0.9), True)
        return model, [ksm.PruneToRatio(sparsity=0.9, schedule="polynomial", frequency=3)]

    whole, crashed, resumed = test_resume.crash_and_resume(
        build, classification_data(n=128), 2, tmp_path / "backup", epochs=4)
    assert any("prune_mask" in v.name for v in crashed[0].optimizer.variables)
    assert test_resume.max_difference(whole[0], resumed[0]) == 0.0


def _cnn():
    x = inputs = keras.Input((8, 8, 1))
    for i, filters in enumerate((8, 12)):
        x = keras.layers.Conv2D(filters, 3, padding="same", name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(4)(x))


def _images(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 8, 8, 1)).astype("float32")
    y = (x[:, :4].mean(axis=(1, 2, 3)) > 0) * 2 + (x[:, :, :4].mean(axis=(1, 2, 3)) > 0)
    return x, y.astype("int32")


class _HeldChannels(keras.callbacks.Callback):
    """After every step: are the pruned channels' kernel, bias, gamma and beta all zero?"""

    def __init__(self, aofp):
        super().__init__()
        self.aofp, self.checked, self.ok = aofp, 0, True

    def on_train_batch_end(self, batch, logs=None):
        for i, search in enumerate(self.aofp._searches):
            if not search.pruned:
                continue
            conv, bn = self.model.get_layer(f"conv{i}"), self.model.get_layer(f"bn{i}")
            for variable in (conv.kernel, conv.bias, bn.gamma, bn.beta):
                value = keras.ops.convert_to_numpy(variable)[..., search.pruned]
                self.ok &= not np.any(value)
            self.checked += 1


@on_jax
def test_aofp_reaches_its_target_with_held_masks_and_strips_exactly():
    keras.utils.set_random_seed(0)
    model = compile_for_test(_cnn(), _optimizer("sgd"), jit_compile=True)
    x, y = _images(256, 0)
    aofp = ksm.AOFP(0.4, probe_data=_images(64, 1)[0], thresh=0.05, iters_per_half=3,
                    measure_every=1, seed=0, thresh_growth=2.0)
    held = _HeldChannels(aofp)
    model.fit(x, y, batch_size=32, epochs=3, verbose=0, callbacks=[aofp, held])
    assert aofp.target_reached and aofp.flops_ratio <= 0.4
    assert held.checked > 3 and held.ok
    slim = ksm.strip(model)
    assert max_relative_error(model, slim, x[:32]) < 1e-5
    assert [l.filters for l in slim.layers if isinstance(l, keras.layers.Conv2D)] == [
        aofp.widths["conv0"], aofp.widths["conv1"]]


# -- ProxNAG's support masks and the iterative rounds ------------------------------


@on_jax
def test_iterative_rounds_reach_the_exact_target_with_the_support_held():
    keras.utils.set_random_seed(0)
    model = compile_for_test(mlp(), ksm.ProxNAG(0.05, momentum=0.9, l1=1e-4), jit_compile=True)
    x, y = classification_data(n=128)
    prune = ksm.PruneToRatio(sparsity=0.8, schedule="auto")
    model.fit(x, y, batch_size=32, epochs=12, verbose=0, callbacks=[prune])
    driver = prune._driver
    n = _size(kernels(model))
    assert nonzeros(kernels(model)) == math.ceil(n * 0.2 - 1e-9) == prune.kept
    assert driver.rounds[-1]["stop"] == "target"
    sparsities = [r["sparsity"] for r in driver.rounds]
    assert sparsities == sorted(sparsities)


@on_jax
def test_held_support_is_read_by_the_compiled_step():
    keras.utils.set_random_seed(0)
    opt = ksm.ProxNAG(0.05, momentum=0.9, l1=0.0)
    model = compile_for_test(mlp(), opt, jit_compile=True)
    x, y = classification_data(n=64)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    first = kernels(model)[0]
    mask = np.ones(first.shape, "float32")
    mask[:, ::2] = 0
    opt.set_support(first, mask)
    model.fit(x, y, batch_size=32, epochs=2, verbose=0)
    iterate = keras.ops.convert_to_numpy(opt.sparse_iterate(first))
    assert not np.any(iterate[:, ::2]) and np.all(iterate[:, 1::2] != 0)
