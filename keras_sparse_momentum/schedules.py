"""Sparsity schedules shared by the optimizers and callbacks."""


def polynomial_sparsity(progress, initial, final, power=3):
    """Zhu & Gupta's gradual schedule (tfmot's `PolynomialDecay`).

    `s = final + (initial - final) * (1 - progress) ** power` for `progress`
    in [0, 1]; callers clip `progress`. Works on Python floats and on tensors.
    """
    return final + (initial - final) * (1 - progress) ** power
