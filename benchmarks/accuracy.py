"""Accuracy vs compression: every method, same model, data, epochs, batch and lr.

Methods (all on mnist10k, test accuracy on its 2,000 test images):
- dense: `keras.optimizers.SGD` (config.SGD), no pruning;
- gsm_short: `ksm.GSMMomentum` with the short-budget options (config.GSM_SHORT);
- gsm_paper: `ksm.GSMMomentum` with its defaults, the paper's rule (config.GSM_PAPER);
- gmp: gradual magnitude pruning, `ksm.PruneToRatio(schedule="polynomial")` + SGD;
- tfmot: `prune_low_magnitude` + `PolynomialDecay` on the tf_keras twin, in a
  separate process (benchmarks/tfmot_worker.py);
- l1: L1 sparse training, exact global magnitude cut, fine-tune with the mask held;
- proxnag: `ksm.ProxNAG` + PruneToRatio's gradual schedule (skipped if absent).
"""

import datetime
import math
import time

import numpy as np

from benchmarks import config, models, plots
from benchmarks.legacy_worker import run_legacy_worker

NAME = "accuracy"
TITLE = "Accuracy vs compression"
METHODS = ("dense", "gsm_short", "gsm_paper", "gmp", "tfmot", "l1", "proxnag")
LABELS = {
    "dense": "dense (SGD)",
    "gsm_short": "GSM (short-budget options)",
    "gsm_paper": "GSM (paper defaults)",
    "gmp": "GMP: ksm.PruneToRatio polynomial + SGD",
    "tfmot": "tfmot prune_low_magnitude (tf_keras)",
    "l1": "L1 training + cut + fine-tune",
    "proxnag": "ProxNAG + PruneToRatio",
}
# Why a method can lose, shown next to a row that does (more than 0.3 points
# below the best pruned method at that compression).
REASONS = {
    "gsm_short": "passive weights get no gradient, so unlike GMP's masked weights they "
    "cannot win their place back once they decay; the ramp ends at half the budget "
    "(GMP's at 75 %).",
    "gsm_paper": "paper constants need a far longer run: passive weights shrink by "
    "lr*alpha/(1-beta) = 5e-4 of themselves per step, keep ~29 % of their size after 2,500 "
    "steps, and the final cut removes live signal.",
    "gmp": "same magnitude schedule as the best rows; the gap is seed noise or the global "
    "(vs per-layer) ranking.",
    "tfmot": "per-layer uniform sparsity: small layers (the 10-way output) are pruned as "
    "hard as the big ones.",
    "l1": "one-shot cut of 98-99 % of the weights after L1 training; 30 % of the epochs "
    "to fine-tune is not enough to recover.",
    "proxnag": "the L1 pull also shrinks the weights that stay, and these models have no "
    "BatchNorm to undo it (see the ProxNAG section); l1 = 1e-4 is not tuned.",
}


def _loss():
    import keras

    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _evaluate(model, x_test, y_test):
    model.compile(loss=_loss(), metrics=["accuracy"])
    return float(model.evaluate(x_test, y_test, verbose=0)[1])


def _fit(model, optimizer, x, y, epochs, callbacks=()):
    model.compile(optimizer=optimizer, loss=_loss())
    model.fit(x, y, batch_size=config.BATCH, epochs=epochs, verbose=0,
              callbacks=list(callbacks))


def _train_keras(job, data_arrays):
    """One in-process run; returns the trained model."""
    import keras

    import keras_sparse_momentum as ksm

    x, y = data_arrays[:2]
    method, compression, epochs = job["method"], job["compression"], job["epochs"]
    steps = math.ceil(len(x) / config.BATCH) * epochs
    keras.utils.set_random_seed(job["seed"])
    sgd = config.for_model(config.SGD, job["model"])
    if method == "l1":
        l1_epochs = max(1, min(epochs - 1, round(config.L1["l1_fraction"] * epochs)))
        model = models.build(keras, job["model"], l1=config.L1["l1"])
        _fit(model, keras.optimizers.SGD(**sgd), x, y, l1_epochs)
        tuned = models.build(keras, job["model"])
        tuned.set_weights(model.get_weights())
        target = 1.0 - 1.0 / compression
        # initial_sparsity == target: one exact cut at the first step, mask held after.
        hold = ksm.PruneToRatio(compression=compression, schedule="polynomial",
                                initial_sparsity=target, end_step=1, frequency=1)
        _fit(tuned, keras.optimizers.SGD(**sgd), x, y, epochs - l1_epochs, [hold])
        return tuned
    model = models.build(keras, job["model"])
    callbacks = []
    if method == "dense":
        optimizer = keras.optimizers.SGD(**sgd)
    elif method in ("gsm_short", "gsm_paper"):
        settings = (config.for_model(config.GSM_SHORT, job["model"]) if method == "gsm_short"
                    else config.GSM_PAPER)
        optimizer = ksm.GSMMomentum(compression=compression,
                                    **config.gsm_kwargs(settings, steps))
    elif method in ("gmp", "proxnag"):
        optimizer = (keras.optimizers.SGD(**sgd) if method == "gmp"
                     else ksm.ProxNAG(**config.for_model(config.PROXNAG, job["model"])))
        callbacks.append(ksm.PruneToRatio(
            compression=compression, schedule="polynomial",
            end_step=max(1, int(config.GMP["end_fraction"] * steps)),
            frequency=job["frequency"]))
    else:
        raise ValueError(f"unknown method {method!r}")
    _fit(model, optimizer, x, y, epochs, callbacks)
    return model


def run_keras_job(job, data_arrays, train=None):
    """Train (`train(job, data_arrays)`, default this section's) and evaluate.

    A run that diverges is recorded at chance accuracy: GSMMomentum raises,
    Keras's SGD trains on through NaN and leaves non-finite weights.
    """
    start = time.perf_counter()
    diverged = {"test_acc": 0.1, "sparsity": float("nan"), "layers": [], "diverged": True}
    try:
        model = (train or _train_keras)(job, data_arrays)
    except ValueError as error:  # GSMMomentum refuses to compress NaN weights
        if "diverged" not in str(error):
            raise
        return {**diverged, "seconds": time.perf_counter() - start}
    seconds = time.perf_counter() - start
    if not all(np.isfinite(w).all() for w in model.get_weights()):
        return {**diverged, "seconds": seconds}
    layers = models.layer_densities(model)
    size, nonzeros = sum(r[1] for r in layers), sum(r[2] for r in layers)
    # GSMMomentum's final cut: what it zeroed relative to what it kept (read
    # before `_evaluate` recompiles the model with another optimizer).
    cut = getattr(model.optimizer, "final_cut", None)
    return {
        "test_acc": _evaluate(model, *data_arrays[2:]),
        "sparsity": 1.0 - nonzeros / size,
        "layers": layers,
        "seconds": seconds,
        **({"final_cut_scale": cut.scale, "final_cut_norm_share": cut.norm_share}
           if cut is not None else {}),
    }


def run_tfmot_jobs(jobs):
    """All tfmot jobs in one subprocess with TF_USE_LEGACY_KERAS=1."""
    payload = [
        dict(model=j["model"], compression=j["compression"], seed=j["seed"],
             epochs=j["epochs"], batch=config.BATCH,
             learning_rate=config.for_model(config.SGD, j["model"])["learning_rate"],
             momentum=config.SGD["momentum"], end_fraction=config.GMP["end_fraction"],
             frequency=j["frequency"], train_limit=j["train_limit"],
             test_limit=j["test_limit"])
        for j in jobs
    ]
    return run_legacy_worker("benchmarks.tfmot_worker", payload)


def plan(opts):
    """The (model, method, compression, seed) jobs of this run."""
    quick = opts.quick
    seeds = config.QUICK["seeds"] if quick else tuple(range(opts.seeds))
    grid = opts.grid or [(m, c) for m in models.BUILDERS for c in config.COMPRESSIONS]
    methods = opts.methods or METHODS
    epochs = config.QUICK["epochs"] if quick else config.EPOCHS
    limits = dict(train_limit=config.QUICK["train_limit"] if quick else None,
                  test_limit=config.QUICK["test_limit"] if quick else None,
                  frequency=config.QUICK["frequency"] if quick else config.GMP["frequency"])
    jobs = []
    # Seed-major order: every row gets its first seed before any gets a second.
    for seed in seeds:
        for model in dict.fromkeys(m for m, _ in grid):
            if "dense" in methods:
                jobs.append(dict(model=model, method="dense", compression=1, seed=seed,
                                 epochs=epochs, **limits))
            for method in methods:
                for m, compression in grid:
                    if m == model and method != "dense":
                        jobs.append(dict(model=model, method=method, compression=compression,
                                         seed=seed, epochs=epochs, **limits))
    return jobs


def _key(record):
    return (record["model"], record["method"], record["compression"], record["seed"],
            record["epochs"], record["train_limit"])


def run(opts, previous=None):
    """Train every planned job; merge with `previous` records (same key replaced)."""
    import keras_sparse_momentum as ksm
    from benchmarks import data

    notes = []
    jobs = plan(opts)
    if not hasattr(ksm, "ProxNAG") and any(j["method"] == "proxnag" for j in jobs):
        jobs = [j for j in jobs if j["method"] != "proxnag"]
        notes.append("ProxNAG + PruneToRatio: skipped, `ksm.ProxNAG` is not in this build yet.")
    limits = (jobs[0]["train_limit"], jobs[0]["test_limit"]) if jobs else (None, None)
    arrays = data.load_mnist(*limits)
    merged = {_key(r): r for r in (previous or {}).get("records", [])}
    if getattr(opts, "resume", False):
        jobs = [j for j in jobs if _key(j) not in merged]

    def add(job, result):
        measured = datetime.datetime.now().isoformat(timespec="minutes")
        merged[_key(job)] = {**job, **result, "measured": measured}
        print(f"  {job['model']:9s} {job['method']:10s} {job['compression']:>4}x "
              f"seed {job['seed']}: {100 * result['test_acc']:.2f} %  "
              f"sparsity {100 * result['sparsity']:.2f} %  {result['seconds']:.0f} s", flush=True)
        checkpoint = getattr(opts, "checkpoint", None)
        if checkpoint:
            checkpoint({"records": list(merged.values()), "notes": notes})

    for seed in dict.fromkeys(j["seed"] for j in jobs):
        batch = [j for j in jobs if j["seed"] == seed]
        for job in batch:
            if job["method"] != "tfmot":
                add(job, run_keras_job(job, arrays))
        tfmot_jobs = [j for j in batch if j["method"] == "tfmot"]
        if tfmot_jobs:
            for job, result in zip(tfmot_jobs, run_tfmot_jobs(tfmot_jobs)):
                add(job, result)
    return {"records": list(merged.values()), "notes": notes}


def summarize(records):
    """Mean, spread and count per (model, method, compression) for the latest budget."""
    groups = {}
    for r in records:
        groups.setdefault((r["model"], r["method"], r["compression"], r["epochs"],
                           r["train_limit"]), []).append(r)
    rows = []
    for (model, method, compression, epochs, limit), rs in groups.items():
        acc = np.array([r["test_acc"] for r in rs]) * 100
        rows.append(dict(
            model=model, method=method, compression=compression, epochs=epochs,
            train_limit=limit, n=len(rs), seeds=sorted(r["seed"] for r in rs),
            mean=float(acc.mean()), std=float(acc.std(ddof=1)) if len(rs) > 1 else 0.0,
            lo=float(acc.min()), hi=float(acc.max()),
            sparsity=float(np.nanmean([r["sparsity"] for r in rs]) * 100)
            if any(not r.get("diverged") for r in rs) else float("nan"),
            diverged=sum(bool(r.get("diverged")) for r in rs),
            seconds=float(np.mean([r["seconds"] for r in rs])),
            cut=[r["final_cut_scale"] for r in rs if "final_cut_scale" in r],
        ))
    order = {m: i for i, m in enumerate(METHODS)}
    rows.sort(key=lambda r: (list(models.BUILDERS).index(r["model"]), r["compression"],
                             order[r["method"]]))
    return rows


def _threshold():
    from keras_sparse_momentum.optimizers.gsm import DESTRUCTIVE_CUT

    return DESTRUCTIVE_CUT


def _cut(scales):
    """GSMMomentum's final cut: median zeroed / median kept magnitude, [min, max] over seeds."""
    if not scales:
        return ""
    low, high = (f"{x:.2g}" if x >= 1e-6 else "<1e-6" for x in (min(scales), max(scales)))
    return low if low == high else f"{low}-{high}"


def _when_measured(records):
    """One sentence: the time span in which each method's stored runs were measured.

    Rows can be rerun alone (`--methods`), so the section's date is only that
    of the last run.
    """
    spans = {}
    for r in records:
        spans.setdefault(r["method"], []).append(r.get("measured", "(date not stored)"))
    parts = [f"{LABELS[m]} {min(d)}" + (f" to {max(d)}" if max(d) != min(d) else "")
             for m, d in spans.items()]
    return "Runs measured (per method): " + "; ".join(parts) + "."


def render(results, out):
    rows = summarize(results["records"])
    lines = [
        f"Test accuracy on the 2,000 mnist10k test images after training on its 8,000 "
        f"training images; batch {config.BATCH}; every method uses momentum "
        f"{config.SGD['momentum']} and the learning rate "
        + ", ".join(f"{lr} ({models.TITLES[m]})" for m, lr in config.LEARNING_RATE.items())
        + " except 'GSM (paper defaults)' (lr 0.01, momentum 0.99). Mean ± sample std over "
        "n seeds [min, max]; a diverged run counts at 10 % (chance) and is named in the "
        "'diverged' column. "
        "'vs dense' is the difference from dense training of the same model and budget. "
        "'GSM final cut' is the median size of the weights GSMMomentum's final cut "
        "zeroed over that of the weights it kept ([min, max] over seeds; it warns above "
        f"{_threshold():g}). "
        "A row that loses (more than 0.3 points below the best pruned method at that "
        "compression) keeps its place with a reason.",
        "",
        "| model | compression | method | epochs | n | diverged | test acc % | [min, max] "
        "| sparsity % | vs dense | train s | GSM final cut | why it loses |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        dense = next((d for d in rows if d["model"] == r["model"] and d["method"] == "dense"
                      and d["epochs"] == r["epochs"] and d["train_limit"] == r["train_limit"]),
                     None)
        peers = [p["mean"] for p in rows if p["model"] == r["model"]
                 and p["compression"] == r["compression"] and p["method"] != "dense"
                 and p["epochs"] == r["epochs"] and p["train_limit"] == r["train_limit"]]
        loses = r["method"] != "dense" and peers and r["mean"] < max(peers) - 0.3
        vs = f"{r['mean'] - dense['mean']:+.2f}" if dense and r["method"] != "dense" else ""
        budget = f"{r['epochs']}" + (f" ({r['train_limit']} imgs)" if r["train_limit"] else "")
        lines.append(
            f"| {models.TITLES[r['model']]} | {r['compression']}x | {LABELS[r['method']]} "
            f"| {budget} | {r['n']} | {r.get('diverged', 0)} | {r['mean']:.2f} ± {r['std']:.2f} "
            f"| [{r['lo']:.2f}, {r['hi']:.2f}] | {r['sparsity']:.2f} | {vs} "
            f"| {r['seconds']:.0f} | {_cut(r['cut'])} "
            f"| {REASONS.get(r['method'], '') if loses else ''} |"
        )
    lines += ["", _when_measured(results["records"])]
    for note in results.get("notes", []):
        lines += ["", f"Note: {note}"]
    for model in dict.fromkeys(r["model"] for r in rows):
        name = f"accuracy_{model}.png"
        if plots.accuracy_plot([r for r in rows if r["model"] == model],
                               models.TITLES[model], LABELS, out / name):
            lines += ["", f"![accuracy vs compression, {models.TITLES[model]}]({name})"]
    return "\n".join(lines)
