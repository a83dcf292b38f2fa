"""`PruneToRatio(sparsity=0.9)` with no schedule, from a trained LeNet-300-100: what the default does.

For each seed a LeNet-300-100 is trained densely (SGD, the accuracy section's
learning rate and momentum); then, from those same weights and for the same
budget, each optimizer fine-tunes with `PruneToRatio(sparsity=0.9)`:
- with no `schedule` (the default, "auto"),
- with the schedule "auto" resolves to, spelled out ("polynomial" next to SGD,
  "prox_iterative" next to ProxNAG): same seed, so the runs must be identical,
- with `schedule="end"` (the default before issue 14: one cut at the end of
  `fit`, no recovery),
and dense SGD continues for the same budget as the reference.

    python -m benchmarks.run --only prune_default [--quick] [--seeds N]
"""

import time

import numpy as np

from benchmarks import config, models
from benchmarks import data as bench_data

NAME = "prune_default"
TITLE = "PruneToRatio's default schedule from a trained LeNet-300-100"
SPARSITY = 0.9
FULL = dict(pretrain_epochs=10, epochs=config.EPOCHS, train_limit=None, test_limit=None,
            frequency=config.GMP["frequency"])
QUICK = dict(pretrain_epochs=1, epochs=2, train_limit=1024, test_limit=500, frequency=4)
# (optimizer, schedule); schedule None = no `schedule` argument (the default).
RUNS = (("sgd", "dense"), ("sgd", None), ("sgd", "polynomial"), ("sgd", "end"),
        ("proxnag", None), ("proxnag", "prox_iterative"), ("proxnag", "end"))
EXPLICIT = {"sgd": "polynomial", "proxnag": "prox_iterative"}
LABELS = {"sgd": "SGD", "proxnag": "ProxNAG"}


def _optimizer(name, keras, ksm):
    settings = config.for_model(config.SGD, "lenet300")
    if name == "sgd":
        return keras.optimizers.SGD(**settings)
    return ksm.ProxNAG(**settings)


def _compile(model, optimizer):
    import keras

    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def pretrain(arrays, seed, epochs):
    """The dense starting point: weights after `epochs` of SGD."""
    import keras

    import keras_sparse_momentum as ksm

    keras.utils.set_random_seed(seed)
    model = _compile(models.build(keras, "lenet300"), _optimizer("sgd", keras, ksm))
    model.fit(*arrays[:2], batch_size=config.BATCH, epochs=epochs, verbose=0)
    return model.get_weights()


def fine_tune(optimizer, schedule, weights, arrays, job):
    """One run from `weights`; returns its record and final weights."""
    import keras

    import keras_sparse_momentum as ksm

    keras.utils.set_random_seed(job["seed"] + 1000)
    model = models.build(keras, "lenet300")
    model.set_weights(weights)
    _compile(model, _optimizer(optimizer, keras, ksm))
    callbacks = []
    if schedule != "dense":
        kwargs = {} if schedule is None else {"schedule": schedule}
        callbacks.append(ksm.PruneToRatio(sparsity=SPARSITY, frequency=job["frequency"],
                                          **kwargs))
    start = time.perf_counter()
    model.fit(*arrays[:2], batch_size=config.BATCH, epochs=job["epochs"], verbose=0,
              callbacks=callbacks)
    seconds = time.perf_counter() - start
    accuracy = float(model.evaluate(*arrays[2:], verbose=0, return_dict=True)["accuracy"])
    layers = models.layer_densities(model)
    sparsity = 1.0 - sum(r[2] for r in layers) / sum(r[1] for r in layers)
    record = {**job, "optimizer": optimizer, "schedule": schedule or "default",
              "resolved": callbacks[0]._active if callbacks else "dense",
              "accuracy": accuracy, "sparsity": sparsity, "seconds": seconds}
    return record, model.get_weights()


def run(opts, previous=None):
    """Every seed: pretrain once, then every (optimizer, schedule) of RUNS from those weights."""
    settings = QUICK if opts.quick else FULL
    seeds = (0,) if opts.quick else tuple(range(opts.seeds))
    arrays = bench_data.load_mnist(settings["train_limit"], settings["test_limit"])
    records = []
    for seed in seeds:
        job = {"seed": seed, **settings}
        start = pretrain(arrays, seed, settings["pretrain_epochs"])
        done = {run: fine_tune(*run, start, arrays, job) for run in RUNS}
        for optimizer, explicit in EXPLICIT.items():
            record, weights = done[optimizer, None]
            differences = [np.max(np.abs(a - b)) for a, b in
                           zip(weights, done[optimizer, explicit][1])]
            record["max_weight_difference"] = float(max(differences))
            record["identical_to_explicit"] = record["max_weight_difference"] == 0.0
        for record, _ in done.values():
            records.append(record)
            print(f"  seed {seed} {record['optimizer']:8s} {record['schedule']:15s} "
                  f"({record['resolved']:14s}): {100 * record['accuracy']:.2f} %  sparsity "
                  f"{100 * record['sparsity']:.2f} %"
                  + (f"  identical to explicit: {record['identical_to_explicit']}"
                     if "identical_to_explicit" in record else ""), flush=True)
        if getattr(opts, "checkpoint", None):
            opts.checkpoint({"records": records})
    return {"records": records}


def summarize(records):
    """Mean, spread and counts per (optimizer, schedule), in RUNS order."""
    groups = {}
    for r in records:
        groups.setdefault((r["optimizer"], r["schedule"]), []).append(r)
    rows = []
    for (optimizer, schedule), rs in groups.items():
        acc = np.array([r["accuracy"] for r in rs]) * 100
        rows.append(dict(
            optimizer=optimizer, schedule=schedule, resolved=rs[0]["resolved"], n=len(rs),
            mean=float(acc.mean()), std=float(acc.std(ddof=1)) if len(rs) > 1 else 0.0,
            lo=float(acc.min()), hi=float(acc.max()),
            sparsity=float(np.mean([r["sparsity"] for r in rs]) * 100),
            identical=(sum(bool(r["identical_to_explicit"]) for r in rs)
                       if "identical_to_explicit" in rs[0] else None),
            difference=max((r.get("max_weight_difference", 0.0) for r in rs), default=0.0),
            epochs=rs[0]["epochs"], pretrain_epochs=rs[0]["pretrain_epochs"],
            train_limit=rs[0]["train_limit"]))
    order = [(o, s or "default") for o, s in RUNS]
    return sorted(rows, key=lambda r: order.index((r["optimizer"], r["schedule"])))


def render(results, out):
    rows = summarize(results["records"])
    if not rows:
        return "No runs stored."
    first = rows[0]
    images = f"{first['train_limit']:,}" if first["train_limit"] else "8,000"
    settings = config.for_model(config.SGD, "lenet300")
    lines = [
        f"Each seed trains LeNet-300-100 densely for {first['pretrain_epochs']} epochs (SGD, "
        f"lr {settings['learning_rate']}, momentum {settings['momentum']}, batch "
        f"{config.BATCH}, {images} training images); every row then trains those same "
        f"weights for {first['epochs']} more epochs with `PruneToRatio(sparsity={SPARSITY})` "
        "(masks updated every "
        f"{FULL['frequency'] if not first['train_limit'] else QUICK['frequency']} steps) and "
        "the same optimizer settings; 'default' passes no `schedule`. 'identical' counts "
        "seeds whose default run ended with exactly the weights of the explicit run. Mean ± "
        "sample std over n seeds [min, max]; 'vs end' is the difference from the same "
        "optimizer with `schedule=\"end\"`, the default before issue 14.",
        "",
        "| optimizer | schedule | resolves to | n | test acc % | [min, max] | sparsity % "
        "| identical to explicit | vs end |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        end = next((e for e in rows if e["optimizer"] == r["optimizer"]
                    and e["schedule"] == "end"), None)
        vs = (f"{r['mean'] - end['mean']:+.2f}" if end and r["schedule"] not in ("end", "dense")
              else "")
        identical = "" if r["identical"] is None else f"{r['identical']}/{r['n']}"
        schedule = "dense, no pruning" if r["schedule"] == "dense" else r["schedule"]
        lines.append(
            f"| {LABELS[r['optimizer']]} | {schedule} | {r['resolved']} | {r['n']} "
            f"| {r['mean']:.2f} ± {r['std']:.2f} | [{r['lo']:.2f}, {r['hi']:.2f}] "
            f"| {r['sparsity']:.2f} | {identical} | {vs} |")
    return "\n".join(lines)
