"""Sparsity targets from a trained LeNet-5: ProxNAG vs magnitude pruning vs tfmot vs dense.

For each seed a LeNet-5 (classic 6-16-120-84, with or without BatchNorm) is
trained for a few epochs, then every method fine-tunes those same weights for
the same budget:
- dense: Keras Nesterov SGD, no pruning;
- gmp: `PruneToRatio(sparsity=s, schedule="polynomial")` with Nesterov SGD
  (Zhu & Gupta, the schedule of tfmot's `prune_low_magnitude`);
- prox: `ProxNAG` + `PruneToRatio(sparsity=s)` (the paper's iterative
  algorithm, l1 calibrated by the callback, never set by hand);
- tfmot: tfmot's `prune_low_magnitude` + `PolynomialDecay` on the tf_keras twin,
  with the gmp row's optimizer, end step and frequency, in a subprocess with
  `TF_USE_LEGACY_KERAS=1` (benchmarks/tfmot_prox_worker.py; importing tfmot
  here would flip Keras to legacy mode). tfmot prunes every layer to the same
  sparsity; gmp and prox rank all kernels globally.
Then the step time of ProxNAG over Keras `SGD(momentum, nesterov=True)`, both
with XLA, measured side by side in this process.

    python -m benchmarks.run --only prox_nag_lenet5 [--quick] [--seeds N]
"""

import math
import os
import tempfile
import time

import numpy as np

from benchmarks import data as bench_data
from benchmarks.legacy_worker import run_legacy_worker

NAME = "prox_nag_lenet5"
TITLE = "Sparsity targets from a trained LeNet-5: ProxNAG vs magnitude pruning"
LR, MOMENTUM, BATCH = 0.02, 0.9, 64
FREQUENCY = 100  # steps between mask updates, gmp and tfmot (tfmot's default)
TARGETS = (0.5, 0.7, 0.9)
VARIANTS = {"plain": "LeNet-5", "bn": "LeNet-5 + BatchNorm"}
FULL = dict(pretrain_epochs=4, epochs=10, train_limit=None, test_limit=None, targets=TARGETS,
            frequency=FREQUENCY, step_batches=50, step_repeats=7)
QUICK = dict(pretrain_epochs=1, epochs=3, train_limit=1024, test_limit=500, targets=(0.9,),
             frequency=4, step_batches=10, step_repeats=3)
LABELS = {"dense": "dense (Nesterov SGD)", "gmp": "GMP: PruneToRatio polynomial + SGD",
          "prox": "ProxNAG + PruneToRatio (iterative)", "tfmot": "tfmot prune_low_magnitude"}
# Why a row loses (more than 0.3 points below the best pruned method of its
# target), by method or by (method, variant).
REASONS = {
    ("prox", "plain"): "without normalisation the L1 pull shrinks every kept weight too, and "
    "the network's output scale with it; behind BatchNorm (the paper's ResNet-20 setting) "
    "a layer is scale-invariant and only the relative sizes matter.",
    ("prox", "bn"): "the L1 phases also shrink the weights that stay, and at this budget the "
    "fine-tune phases are short.",
    "gmp": "the same magnitude schedule as tfmot, ranked globally; within seed noise of it.",
    "tfmot": "uniform per-layer sparsity prunes the small layers as hard as the big ones.",
}


def lenet5(keras, batch_norm):
    """The classic LeNet-5; with `batch_norm`, BatchNorm before each ReLU and no biases there."""
    layers = keras.layers

    def block(layer):
        if not batch_norm:
            return [layer]
        return [layer, layers.BatchNormalization(), layers.ReLU()]

    def conv(filters, **kwargs):
        return layers.Conv2D(filters, 5, use_bias=not batch_norm,
                                   activation=None if batch_norm else "relu", **kwargs)

    def dense(units):
        return layers.Dense(units, use_bias=not batch_norm,
                                  activation=None if batch_norm else "relu")

    return keras.Sequential(
        [keras.Input((28, 28, 1))]
        + block(conv(6, padding="same")) + [layers.MaxPooling2D()]
        + block(conv(16)) + [layers.MaxPooling2D(), layers.Flatten()]
        + block(dense(120)) + block(dense(84)) + [layers.Dense(10)],
        name="lenet5_bn" if batch_norm else "lenet5",
    )


def _compile(model, optimizer):
    import keras

    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], jit_compile=True)
    return model


def pretrain(arrays, variant, seed, epochs):
    """`get_weights()` of a LeNet-5 trained from scratch with Nesterov SGD."""
    import keras

    keras.utils.set_random_seed(seed)
    model = _compile(lenet5(keras, variant == "bn"),
                     keras.optimizers.SGD(LR, momentum=MOMENTUM, nesterov=True))
    model.fit(arrays[0], arrays[1], batch_size=BATCH, epochs=epochs, verbose=0)
    return model.get_weights()


def _end_step(arrays, epochs):
    """Step at which gmp and tfmot reach the target: 75 % of the fit's steps."""
    return max(1, int(0.75 * math.ceil(len(arrays[0]) / BATCH) * epochs))


def prune(method, target, weights, arrays, job):
    """Fine-tune the trained weights for the job's epochs with `method`; returns a record."""
    import keras

    import keras_sparse_momentum as ksm

    x, y, x_test, y_test = arrays
    keras.utils.set_random_seed(job["seed"] + 1000)
    model = lenet5(keras, job["variant"] == "bn")
    model.set_weights(weights)
    callbacks = []
    if method == "prox":
        optimizer = ksm.ProxNAG(LR, momentum=MOMENTUM)
        callbacks.append(ksm.PruneToRatio(sparsity=target, schedule="auto"))
    else:
        optimizer = keras.optimizers.SGD(LR, momentum=MOMENTUM, nesterov=True)
        if method == "gmp":
            callbacks.append(ksm.PruneToRatio(
                sparsity=target, schedule="polynomial",
                end_step=_end_step(arrays, job["epochs"]), frequency=job["frequency"]))
    _compile(model, optimizer)
    start = time.perf_counter()
    model.fit(x, y, batch_size=BATCH, epochs=job["epochs"], verbose=0, callbacks=callbacks)
    seconds = time.perf_counter() - start
    record = {**job, "method": method, "target": target,
              "accuracy": float(model.evaluate(x_test, y_test, verbose=0)[1]),
              "sparsity": float(ksm.sparsity_report(model).total_sparsity), "fit_s": seconds}
    if method == "prox":
        rounds = callbacks[0]._driver.rounds
        record["rounds"] = rounds
        record["rounds_reached"] = bool(rounds) and rounds[-1]["stop"] == "target"
    return record


def prune_tfmot(targets, weights, job):
    """tfmot records, all targets in one `TF_USE_LEGACY_KERAS=1` subprocess."""
    with tempfile.TemporaryDirectory() as tmp:
        weights_path = os.path.join(tmp, "lenet5_weights.npz")
        np.savez(weights_path, *weights)
        payload = {"data": str(bench_data.data_path()), "weights": weights_path,
                   "targets": list(targets), "epochs": job["epochs"], "batch": BATCH,
                   "learning_rate": LR, "momentum": MOMENTUM, "end_step": job["end_step"],
                   "frequency": job["frequency"], "seed": job["seed"] + 1000,
                   "batch_norm": job["variant"] == "bn", "train_limit": job["train_limit"],
                   "test_limit": job["test_limit"]}
        results = run_legacy_worker("benchmarks.tfmot_prox_worker", payload)
    return [{**job, "method": "tfmot", "target": r["target"], "accuracy": r["accuracy"],
             "sparsity": r["sparsity"], "fit_s": r["fit_s"]}
            for r in results]


def step_times(arrays, batches, repeats):
    """Median seconds per XLA train step: ProxNAG and Keras Nesterov SGD, interleaved."""
    import keras

    import keras_sparse_momentum as ksm

    x, y = arrays[:2]
    chunks = [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, BATCH * batches, BATCH)]
    compiled = {}
    for name, optimizer in (("prox", ksm.ProxNAG(LR, momentum=MOMENTUM, l1=1e-4)),
                            ("sgd", keras.optimizers.SGD(LR, momentum=MOMENTUM, nesterov=True))):
        keras.utils.set_random_seed(0)
        compiled[name] = _compile(lenet5(keras, False), optimizer)
        compiled[name].train_on_batch(*chunks[0])  # compile
    times = {name: [] for name in compiled}
    for _ in range(repeats):
        for name, model in compiled.items():
            start = time.perf_counter()
            for chunk in chunks:
                model.train_on_batch(*chunk)
            times[name].append((time.perf_counter() - start) / batches)
    return {name: float(np.median(t)) for name, t in times.items()}


def run(opts, previous=None):
    """Every (variant, seed): pretrain once, then each method and target; then step times."""
    settings = QUICK if opts.quick else FULL
    seeds = (0,) if opts.quick else tuple(range(opts.seeds))
    arrays = bench_data.load_mnist(settings["train_limit"], settings["test_limit"])
    records = []
    for seed in seeds:
        for variant in VARIANTS:
            job = {"variant": variant, "seed": seed, "epochs": settings["epochs"],
                   "pretrain_epochs": settings["pretrain_epochs"],
                   "frequency": settings["frequency"],
                   "end_step": _end_step(arrays, settings["epochs"]),
                   "train_limit": settings["train_limit"], "test_limit": settings["test_limit"],
                   "learning_rate": LR, "momentum": MOMENTUM, "batch": BATCH,
                   "images": [len(arrays[0]), len(arrays[2])]}
            weights = pretrain(arrays, variant, seed, settings["pretrain_epochs"])
            batch = [prune("dense", 0.0, weights, arrays, job)]
            for target in settings["targets"]:
                batch += [prune(method, target, weights, arrays, job) for method in ("gmp", "prox")]
            batch += prune_tfmot(settings["targets"], weights, job)
            for r in batch:
                print(f"  {VARIANTS[variant]:20s} seed {seed} {r['method']:6s} {r['target']:.2f}: "
                      f"{100 * r['accuracy']:.2f} %  sparsity {100 * r['sparsity']:.2f} %",
                      flush=True)
            records += batch
            if getattr(opts, "checkpoint", None):
                opts.checkpoint({"records": records})
    times = step_times(arrays, settings["step_batches"], settings["step_repeats"])
    return {"records": records, "step_time": {**times, "ratio": times["prox"] / times["sgd"]}}


def summarize(records):
    """Mean, spread and counts per (variant, target, method)."""
    groups = {}
    for r in records:
        groups.setdefault((r["variant"], r["target"], r["method"]), []).append(r)
    rows = []
    for (variant, target, method), rs in groups.items():
        acc = np.array([r["accuracy"] for r in rs]) * 100
        sparsity = np.array([r["sparsity"] for r in rs]) * 100
        rows.append(dict(
            variant=variant, target=target, method=method, n=len(rs), mean=float(acc.mean()),
            std=float(acc.std(ddof=1)) if len(rs) > 1 else 0.0, lo=float(acc.min()),
            hi=float(acc.max()), sparsity_lo=float(sparsity.min()),
            sparsity_hi=float(sparsity.max()),
            reached=(sum(r["rounds_reached"] for r in rs) if method == "prox" else None),
            epochs=rs[0]["epochs"], pretrain_epochs=rs[0]["pretrain_epochs"],
            train_limit=rs[0]["train_limit"], settings=rs[0],
            stale=sorted({r["stale"] for r in rs if r.get("stale")})))
    order = {m: i for i, m in enumerate(LABELS)}
    return sorted(rows, key=lambda r: (list(VARIANTS).index(r["variant"]), r["target"],
                                       order[r["method"]]))


def _reason(row):
    return REASONS.get((row["method"], row["variant"]), REASONS.get(row["method"], ""))


def render(results, out):
    rows = summarize(results["records"])
    if not rows:
        return "No runs stored."
    first = rows[0]["settings"]
    lines = [
        f"Each seed trains a LeNet-5 from scratch for {first['pretrain_epochs']} epochs "
        f"(Nesterov SGD, lr {first['learning_rate']}, momentum {first['momentum']}, batch "
        f"{first['batch']}, {first['images'][0]:,} training images); every method then fine-tunes "
        f"those same weights for {first['epochs']} epochs with the same optimizer settings "
        f"(tested on {first['images'][1]:,} images). ProxNAG's l1 is set by the callback "
        "(never by hand); 'L1 rounds reached' counts runs whose L1 rounds met the target "
        "before the final trim to exactly the target. Mean ± sample std over n seeds "
        "[min, max]; 'vs GMP' is the difference from magnitude pruning at the same target. "
        "A row more than 0.3 points below the best pruned method keeps its place with a reason.",
        "",
        "| model | target sparsity | method | n | test acc % | [min, max] | reached sparsity % "
        "| L1 rounds reached | vs GMP | why it loses | stale |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        gmp = next((g for g in rows if g["variant"] == r["variant"]
                    and g["target"] == r["target"] and g["method"] == "gmp"), None)
        peers = [p["mean"] for p in rows if p["variant"] == r["variant"]
                 and p["target"] == r["target"] and p["method"] != "dense"]
        loses = r["method"] != "dense" and r["mean"] < max(peers) - 0.3
        vs = f"{r['mean'] - gmp['mean']:+.2f}" if gmp and r["method"] not in ("dense", "gmp") else ""
        reached = f"{r['reached']}/{r['n']}" if r["reached"] is not None else ""
        sparsity = (f"{r['sparsity_lo']:.2f}" if abs(r["sparsity_hi"] - r["sparsity_lo"]) < 0.005
                    else f"{r['sparsity_lo']:.2f}-{r['sparsity_hi']:.2f}")
        target = "-" if r["method"] == "dense" else f"{100 * r['target']:.0f} %"
        lines.append(
            f"| {VARIANTS[r['variant']]} | {target} | {LABELS[r['method']]} | {r['n']} "
            f"| {r['mean']:.2f} ± {r['std']:.2f} | [{r['lo']:.2f}, {r['hi']:.2f}] | {sparsity} "
            f"| {reached} | {vs} | {_reason(r) if loses else ''} | {'; '.join(r['stale'])} |")
    step = results.get("step_time")
    if step:
        lines += ["", f"Step time with XLA on the plain LeNet-5, interleaved: ProxNAG "
                  f"{step['prox'] * 1e3:.2f} ms, Keras Nesterov SGD {step['sgd'] * 1e3:.2f} ms, "
                  f"ratio {step['ratio']:.3f}."]
    return "\n".join(lines)


README_TITLE = "ProxNAG from a trained LeNet-5"


def readme(results):
    """Targets reached, and ProxNAG against GMP and tfmot per variant, from the stored runs."""
    rows = summarize(results["records"])
    if not rows:
        return f"**{README_TITLE}**: no runs stored."
    first = rows[0]["settings"]
    prox = [r for r in results["records"] if r["method"] == "prox"]
    exact = sum(abs(r["sparsity"] - r["target"]) < 5e-5 for r in prox)
    rounds = sum(bool(r.get("rounds_reached")) for r in prox)
    targets = sorted({r["target"] for r in prox})
    lines = [
        f"**{README_TITLE}** (`--only prox_nag_lenet5`: {first['pretrain_epochs']} epochs of "
        f"training, then {first['epochs']} epochs for every method, "
        f"{max(r['n'] for r in rows)} seeds): `PruneToRatio` with ProxNAG reached exactly "
        + " / ".join(f"{100 * t:.0f}" for t in targets) + f" % in {exact} of {len(prox)} runs "
        f"without anyone setting `l1`, its L1 rounds meeting the target by themselves in "
        f"{rounds} of {len(prox)}."
    ]
    for variant, title in VARIANTS.items():
        found = [r for r in rows if r["variant"] == variant]
        if not found:
            continue

        def means(method, found=found):
            return " / ".join(f"{r['mean']:.2f}" for r in found if r["method"] == method)

        wins = [r for r in found if r["method"] == "prox" and r["mean"] >= max(
            p["mean"] for p in found if p["method"] != "dense" and p["target"] == r["target"])]
        dense = next((r for r in found if r["method"] == "dense"), None)
        lines.append(
            f"{title}: ProxNAG {means('prox')} % against GMP {means('gmp')} and tfmot "
            f"{means('tfmot')}" + (f" (dense {dense['mean']:.2f})" if dense else "")
            + f"; ProxNAG is the best method at {len(wins)} of "
            f"{sum(r['method'] == 'prox' for r in found)} targets.")
    step = results.get("step_time")
    if step:
        lines.append(f"ProxNAG's step costs {step['ratio']:.2f}x Keras's Nesterov SGD (XLA).")
    return " ".join(lines)
