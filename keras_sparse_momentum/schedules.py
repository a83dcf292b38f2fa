"""Sparsity and learning-rate schedules shared by the optimizers and callbacks."""

import keras


def polynomial_sparsity(progress, initial, final, power=3):
    """Zhu & Gupta's gradual schedule (tfmot's `PolynomialDecay`).

    `s = final + (initial - final) * (1 - progress) ** power` for `progress`
    in [0, 1]; callers clip `progress`. Works on Python floats and on tensors.
    """
    return final + (initial - final) * (1 - progress) ** power


def warmup_cosine(peak, total_steps):
    """The learning rate of `GSMMomentum.for_budget`: 0 to `peak`, then a cosine to 0.

    Linear warmup over the first `total_steps // 10` steps (GSM's dense first
    tenth), then cosine decay to 0 at `total_steps`; a serializable Keras
    `CosineDecay`, usable with any optimizer (the benchmarks give it to dense
    SGD to compare like with like).
    """
    warmup = total_steps // 10
    return keras.optimizers.schedules.CosineDecay(
        0.0, total_steps - warmup, warmup_target=float(peak), warmup_steps=warmup)
