"""Every training setting of the benchmarks, in one place.

The GSM settings are single dicts so that tuning them changes every section
(accuracy, cost, layers) at once.
"""

EPOCHS = 20
BATCH = 64
SEEDS = (0, 1, 2)
COMPRESSIONS = (2, 5, 10, 30, 60, 125)
# The rows issue 2 asks for: LeNet-300-100 at 60x and LeNet-5 at 125x.
HEADLINE = (("lenet300", 60), ("lenet5", 125))

# Every method trains with the same learning rate, momentum, batch and epochs,
# except the paper-default GSM row, whose constants are the paper's.
SGD = dict(learning_rate=0.05, momentum=0.9)
# Per model, for every method but the paper-default GSM: LeNet-5 without
# BatchNorm diverges at 0.05 for some seeds (dense SGD, seed 1: 10.9 %), so it
# trains at 0.02.
LEARNING_RATE = {"lenet300": 0.05, "lenet5": 0.02}

# GSM with the short-budget options of `GSMMomentum.for_budget` (docstring:
# "Short training budgets") but not its learning-rate schedule, so that it
# shares the constant rate of every other method in the accuracy table (the
# sweep section measures the schedule): every weight trains for the first
# `ramp_begin_fraction` of the steps, the compression then ramps from 1 to C
# until `ramp_fraction` of the steps, passive weights decay with
# `passive_decay`, and weights are ranked by magnitude.
GSM_SHORT = dict(
    learning_rate=0.05, momentum=0.9, nesterov=True, passive_decay=2.0, importance="magnitude",
    ramp_begin_fraction=0.1, ramp_fraction=0.5,
)
# The paper's rule with GSMMomentum's defaults (lr 0.01, momentum 0.99,
# weight decay 5e-4, no ramp, no separate passive decay).
GSM_PAPER = dict()

# The sweep section: issue 2's headline rows, GSMMomentum.for_budget (warmup +
# cosine schedule) and dense SGD with the same schedule, at each learning rate.
SWEEP = {
    "lenet300": dict(compression=60, learning_rates=(0.05, 0.1, 0.2), seeds=5),
    "lenet5": dict(compression=125, learning_rates=(0.02, 0.05, 0.1), seeds=3),
}

# Gradual magnitude pruning (ours and tfmot's): Zhu & Gupta cubic schedule from
# 0 to the target over the first 75 % of the steps, masks updated every 100.
GMP = dict(end_fraction=0.75, frequency=100)

# L1 sparse training, magnitude cut, fine-tune (seed 003): L1 on the kernels for
# the first `l1_fraction` of the epochs, then the exact global cut and
# fine-tuning with the mask held for the rest.
L1 = dict(l1=5e-5, l1_fraction=0.7)

# Prox-NAG (seed 004) + PruneToRatio's gradual schedule; skipped if absent.
PROXNAG = dict(learning_rate=0.05, momentum=0.9, l1=1e-4)

# Quick mode (CI): a slice of the data, two short epochs, one seed, masks
# updated every 4 steps so the gradual schedules do prune within 32 steps.
QUICK = dict(epochs=2, train_limit=1024, test_limit=500, seeds=(0,), frequency=4)


def for_model(settings, model):
    """`settings` with the model's learning rate, where it has one."""
    settings = dict(settings)
    if "learning_rate" in settings and model in LEARNING_RATE:
        settings["learning_rate"] = LEARNING_RATE[model]
    return settings


def gsm_kwargs(config, total_steps):
    """GSMMomentum keyword arguments for a config dict and a training length."""
    kwargs = dict(config)
    fraction = kwargs.pop("ramp_fraction", None)
    begin = kwargs.pop("ramp_begin_fraction", None)
    if fraction:
        kwargs["ramp_steps"] = int(fraction * total_steps)
    if begin:
        kwargs["ramp_begin_step"] = int(begin * total_steps)
    return kwargs
