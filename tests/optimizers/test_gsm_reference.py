"""GSMMomentum.for_budget inside `model.fit`, step by step against an independent numpy reference.

The reference below re-derives, in float64 numpy, everything `for_budget` sets up:
the learning rate (linear warmup over the dense first tenth, then a cosine to
0), the active count (every weight active until `total_steps // 10`, then
Zhu & Gupta's cubic ramp to `Q = ceil(N / C)` by `total_steps // 2`), the
magnitude ranking over all kernels together, the passive decay (2.0) on the
weights outside the top, the coupled weight decay on the others, Nesterov
momentum in Keras's velocity form, and the final global magnitude cut to
exactly `Q` weights. The model is a two-layer MLP with an MSE loss, so its
gradients are written out by hand. The Keras features that sit between the
gradients and the update (gradient accumulation, `clipnorm`, mixed precision
with loss scaling) run at a real compression, where the pruning code is not
bypassed, and are checked against the same reference.
"""

import math

import keras
import numpy as np
import pytest

import keras_sparse_momentum as ksm
from support import Trajectory, top_magnitude_masks

STEPS_PER_EPOCH, EPOCHS, BATCH = 4, 5, 16
TOTAL = STEPS_PER_EPOCH * EPOCHS  # micro-batches: Keras counts each one as an iteration
COMPRESSION, PEAK, MOMENTUM, WEIGHT_DECAY, PASSIVE_DECAY = 6, 0.1, 0.9, 5e-4, 2.0


def _data():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((STEPS_PER_EPOCH * BATCH, 6)).astype("float32")
    y = rng.standard_normal((STEPS_PER_EPOCH * BATCH, 3)).astype("float32")
    return x, y


def _model():
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                             keras.layers.Dense(3)])


def _learning_rate(step):
    """Linear warmup from 0 to PEAK over TOTAL // 10 steps, then a cosine to 0 at TOTAL."""
    warmup = TOTAL // 10
    if step < warmup:
        return PEAK * step / warmup
    done = min(step - warmup, TOTAL - warmup) / (TOTAL - warmup)
    return PEAK * 0.5 * (1 + math.cos(math.pi * done))


def _active_count(step, total, kept):
    """All weights until TOTAL // 10, then the cubic ramp to `kept` at TOTAL // 2."""
    begin, end = TOTAL // 10, TOTAL // 2
    progress = min(max((step - begin) / (end - begin), 0.0), 1.0)
    if progress >= 1:
        return kept
    sparsity = (1 - kept / total) * (1 - (1 - progress) ** 3)
    return math.ceil(total * (1 - sparsity))


def _gradients(w, x, y):
    """d mean((relu(x W1 + b1) W2 + b2 - y)^2) / d (W1, b1, W2, b2)."""
    w1, b1, w2, b2 = w
    pre = x @ w1 + b1
    hidden = np.maximum(pre, 0)
    d_out = 2 * (hidden @ w2 + b2 - y) / y.size
    d_pre = (d_out @ w2.T) * (pre > 0)
    return [x.T @ d_pre, d_pre.sum(0), hidden.T @ d_out, d_out.sum(0)]


def _reference(weights, x, y, accumulation=1, clipnorm=None):
    """Weights after every micro-batch, after the final cut (float64), and the smallest
    relative gap between the last active and the first passive magnitude."""
    w = [np.array(v, np.float64) for v in weights]
    velocity = [np.zeros_like(v) for v in w]
    kernels = [0, 2]
    total = sum(w[i].size for i in kernels)
    kept = math.ceil(total / COMPRESSION)
    accumulated = [np.zeros_like(v) for v in w]
    trajectory, gaps = [], []
    for step in range(TOTAL):
        batch = slice((step % STEPS_PER_EPOCH) * BATCH, (step % STEPS_PER_EPOCH + 1) * BATCH)
        grads = _gradients(w, x[batch].astype(np.float64), y[batch].astype(np.float64))
        accumulated = [a + g for a, g in zip(accumulated, grads)]
        if (step + 1) % accumulation == 0:
            grads = [a / accumulation for a in accumulated]
            accumulated = [np.zeros_like(v) for v in w]
            if clipnorm is not None:  # every tensor by its own norm, before the selection
                grads = [g * clipnorm / max(np.linalg.norm(g), clipnorm) for g in grads]
            ranked = np.sort(np.concatenate([np.abs(w[i]).ravel() for i in kernels]))[::-1]
            count = _active_count(step, total, kept)
            threshold = ranked[count - 1]
            if count < total:
                gaps.append((threshold - ranked[count]) / threshold)
            lr = _learning_rate(step)
            for i in range(len(w)):
                g = grads[i]
                if i in kernels:
                    active = np.abs(w[i]) >= threshold
                    g = np.where(active, g + WEIGHT_DECAY * w[i], PASSIVE_DECAY * w[i])
                velocity[i] = MOMENTUM * velocity[i] - lr * g
                w[i] = w[i] + MOMENTUM * velocity[i] - lr * g
        trajectory.append([v.copy() for v in w])
    ranked = np.sort(np.concatenate([np.abs(w[i]).ravel() for i in kernels]))[::-1]
    gaps.append((ranked[kept - 1] - ranked[kept]) / ranked[kept - 1])
    masks = top_magnitude_masks([w[i] for i in kernels], kept)
    final = [v.copy() for v in w]
    for i, mask in zip(kernels, masks):
        final[i] = np.where(mask, w[i], 0.0)
    return trajectory, final, min(gaps)


def _fit(policy="float32", **options):
    keras.config.set_dtype_policy(policy)
    keras.utils.set_random_seed(0)
    model = _model()
    start = model.get_weights()
    optimizer = ksm.GSMMomentum.for_budget(TOTAL, compression=COMPRESSION, learning_rate=PEAK,
                                           momentum=MOMENTUM, nesterov=True, **options)
    if policy == "mixed_float16":
        # A fixed, moderate loss scale: no float16 overflow, so no step is skipped.
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=2.0**6,
                                                        dynamic_growth_steps=10_000)
    model.compile(optimizer=optimizer, loss="mse")
    trajectory = Trajectory()
    x, y = _data()
    model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0,
              callbacks=[trajectory])
    return model, start, trajectory.steps


@pytest.mark.parametrize("case, options, tolerance", [
    ("plain", {}, 1e-5),
    ("gradient accumulation", {"gradient_accumulation_steps": 2}, 1e-5),
    ("clipnorm", {"clipnorm": 0.05}, 1e-5),
    ("mixed precision", {}, 1e-3),
])
def test_for_budget_in_fit_follows_the_numpy_reference_step_by_step(case, options, tolerance):
    model, start, steps = _fit("mixed_float16" if case == "mixed precision" else "float32",
                               **options)
    x, y = _data()
    expected, final, _ = _reference(start, x, y, options.get("gradient_accumulation_steps", 1),
                                 options.get("clipnorm"))
    assert len(steps) == TOTAL
    for step, (got, want) in enumerate(zip(steps, expected)):
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=tolerance, atol=tolerance,
                                       err_msg=f"{case}, step {step}")
    # The final cut: exactly ceil(N / C) kernel weights, the ones the reference keeps.
    for got, want in zip(model.get_weights(), final):
        np.testing.assert_array_equal(got != 0, want != 0, err_msg=case)
        np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance, err_msg=case)
    kept = sum(int(np.count_nonzero(w)) for w in model.get_weights()[::2])
    assert kept == math.ceil((6 * 8 + 8 * 3) / COMPRESSION)


def test_the_reference_is_not_trivial():
    """Guards the reference itself: the ramp, the decay and the cut all do something here,
    and no ranking is so close that float16 rounding (mixed precision) could flip it."""
    x, y = _data()
    keras.utils.set_random_seed(0)
    trajectory, final, gap = _reference(_model().get_weights(), x, y)
    assert gap > 5e-3
    counts = [_active_count(step, 72, 12) for step in range(TOTAL)]
    assert counts[:3] == [72, 72, 72] and counts[-1] == 12 and len(set(counts)) > 5
    last = trajectory[-1]
    masks = top_magnitude_masks([last[0], last[2]], 12)

    def passive_mean(weights):
        return np.mean(np.concatenate([np.abs(weights[i][~m]) for i, m in zip((0, 2), masks)]))

    # The weights the cut removes shrank to under 40 % of their size at the ramp's start.
    assert passive_mean(last) < 0.4 * passive_mean(trajectory[TOTAL // 10])
    assert sum(int(np.count_nonzero(final[i])) for i in (0, 2)) == 12
