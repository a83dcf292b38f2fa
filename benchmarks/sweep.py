"""Issue 2's headline rows with the learning rate swept: GSM's `for_budget` recipe vs dense SGD.

The accuracy section trains every method at one constant learning rate per
model. `GSMMomentum.for_budget` schedules its learning rate (linear warmup over
the dense first tenth, cosine to 0), which wants a higher peak. So that
neither side is judged at a rate that suits the other, this section trains
dense SGD, and gradual magnitude pruning (PruneToRatio's polynomial schedule
+ SGD, as in the accuracy table), with the *same* schedule at every rate of
`config.SWEEP` and compares each method's best rate with the others'.
`--sweep-methods` and `--grid` (its models) rerun some of them; stored runs of
the others are kept.
"""

import datetime
import math

import numpy as np

from benchmarks import accuracy, config, models

NAME = "sweep"
TITLE = "Headline rows, learning rate swept: GSM for_budget vs dense (same schedule)"
LABELS = {"dense": "dense (SGD, warmup + cosine)", "gsm_budget": "GSM (for_budget)",
          "gmp": "GMP: PruneToRatio polynomial + SGD (warmup + cosine)"}


def plan(opts):
    """(model, compression, method, learning_rate, seed) jobs, seed-major."""
    quick = opts.quick
    methods = [m for m in LABELS if m in (opts.sweep_methods or LABELS)]
    chosen = {model for model, _ in opts.grid or []}
    jobs = []
    for model, settings in config.SWEEP.items():
        if chosen and model not in chosen:
            continue
        seeds = config.QUICK["seeds"] if quick else tuple(range(settings["seeds"]))
        rates = settings["learning_rates"][-1:] if quick else settings["learning_rates"]
        for seed in seeds:
            for method in methods:
                for lr in rates:
                    jobs.append(dict(
                        model=model, method=method, learning_rate=lr, seed=seed,
                        momentum=config.SGD["momentum"], batch=config.BATCH,
                        compression=1 if method == "dense" else settings["compression"],
                        epochs=config.QUICK["epochs"] if quick else config.EPOCHS,
                        frequency=config.QUICK["frequency"] if quick else config.GMP["frequency"],
                        train_limit=config.QUICK["train_limit"] if quick else None,
                        test_limit=config.QUICK["test_limit"] if quick else None))
        if quick:
            break  # one model is enough to check that every number is produced
    return jobs


def _train(job, arrays):
    import keras

    import keras_sparse_momentum as ksm
    from keras_sparse_momentum.schedules import warmup_cosine

    x, y = arrays[:2]
    steps = math.ceil(len(x) / config.BATCH) * job["epochs"]
    keras.utils.set_random_seed(job["seed"])
    model = models.build(keras, job["model"])
    momentum = job["momentum"]
    callbacks = []
    if job["method"] in ("dense", "gmp"):
        optimizer = keras.optimizers.SGD(warmup_cosine(job["learning_rate"], steps),
                                         momentum=momentum)
        if job["method"] == "gmp":
            callbacks.append(ksm.PruneToRatio(
                compression=job["compression"], schedule="polynomial",
                end_step=max(1, int(config.GMP["end_fraction"] * steps)),
                frequency=job["frequency"]))
    else:
        optimizer = ksm.GSMMomentum.for_budget(
            steps, compression=job["compression"], learning_rate=job["learning_rate"],
            momentum=momentum, nesterov=True)
    accuracy._fit(model, optimizer, x, y, job["epochs"], callbacks)
    return model


def run(opts, previous=None):
    from benchmarks import data

    jobs = plan(opts)
    arrays = data.load_mnist(jobs[0]["train_limit"], jobs[0]["test_limit"])
    stored = [r for r in (previous or {}).get("records", [])
              if r["train_limit"] == jobs[0]["train_limit"]]
    if getattr(opts, "resume", False):  # keep every stored run, run only the missing ones
        done = {_key(r) for r in stored}
        jobs = [j for j in jobs if _key(j) not in done]
    planned = {_key(j) for j in jobs}
    records = [r for r in stored if _key(r) not in planned]
    for job in jobs:
        result = accuracy.run_keras_job(job, arrays, train=_train)
        result["measured"] = datetime.datetime.now().isoformat(timespec="minutes")
        records.append({**job, **result, "images": [len(arrays[0]), len(arrays[2])]})
        print(f"  {job['model']:9s} {job['method']:10s} lr {job['learning_rate']:<5} "
              f"seed {job['seed']}: {100 * result['test_acc']:.2f} %", flush=True)
        opts.checkpoint({"records": records})
    return {"records": records}


def _key(job):
    return job["model"], job["method"], job["learning_rate"], job["seed"]


def drop_rows(previous, stale_rows):
    """`previous` without the stale runs (`--stale-only` reruns them with `resume`)."""
    stale = {_key(r) for r in stale_rows}
    return {**previous, "records": [r for r in previous["records"] if _key(r) not in stale]}


def summarize(records):
    """Mean, std, n and divergences per (model, method, learning rate)."""
    groups = {}
    for r in records:
        groups.setdefault((r["model"], r["method"], r["learning_rate"]), []).append(r)
    rows = []
    for (model, method, lr), rs in groups.items():
        acc = np.array([r["test_acc"] for r in rs]) * 100
        rows.append(dict(model=model, method=method, learning_rate=lr,
                         compression=rs[0]["compression"], n=len(rs), mean=float(acc.mean()),
                         std=float(acc.std(ddof=1)) if len(rs) > 1 else 0.0,
                         diverged=sum(bool(r.get("diverged")) for r in rs),
                         epochs=rs[0]["epochs"], momentum=rs[0].get("momentum"),
                         batch=rs[0].get("batch"),
                         stale=sorted({r["stale"] for r in rs if r.get("stale")})))
    order = list(LABELS)
    return sorted(rows, key=lambda r: (list(config.SWEEP).index(r["model"]),
                                       order.index(r["method"]), r["learning_rate"]))


def _best(rows, model):
    """The best-rate row of each method for `model`."""
    return {m: max(found, key=lambda r: r["mean"]) for m in LABELS
            if (found := [r for r in rows if r["model"] == model and r["method"] == m])}


def render(results, out):
    rows = summarize(results["records"])
    epochs = sorted({r["epochs"] for r in rows})
    momentum = sorted({str(r["momentum"]) for r in rows})
    batches = "/".join(sorted({str(r["batch"]) for r in rows}))
    lines = [
        f"Same data as the accuracy section, {batches}-image batches, "
        f"{'/'.join(map(str, epochs))} epochs; momentum {'/'.join(momentum)} (GSM with "
        "Nesterov); every method: learning rate rising linearly from 0 over the first tenth "
        "of the steps, then a cosine to 0. Mean ± sample std over n seeds; a diverged run "
        "counts at 10 %.",
        "",
        "| model | method | compression | learning rate | n | diverged | test acc % | stale |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {models.TITLES[r['model']]} | {LABELS[r['method']]} | "
                     f"{r['compression']}x | {r['learning_rate']} | {r['n']} | {r['diverged']} "
                     f"| {r['mean']:.2f} ± {r['std']:.2f} | {'; '.join(r['stale'])} |")
    dates = [r["measured"] for r in results["records"]]
    lines += ["", f"Runs measured {min(dates)} to {max(dates)} (rows can be rerun alone with "
              "`--sweep-methods` and `--grid`, so the section's date is that of the last part).",
              "", "Best rate against best rate:", ""]
    for model in dict.fromkeys(r["model"] for r in rows):
        best = _best(rows, model)
        if not {"gsm_budget", "dense"} <= set(best):
            continue
        gsm, dense = best["gsm_budget"], best["dense"]
        gmp = (f"; GMP {best['gmp']['mean']:.2f} % (lr {best['gmp']['learning_rate']})"
               if "gmp" in best else "")
        lines.append(
            f"- {models.TITLES[model]} at {gsm['compression']}x: GSM {gsm['mean']:.2f} % "
            f"(lr {gsm['learning_rate']}) vs dense {dense['mean']:.2f} % "
            f"(lr {dense['learning_rate']}): {gsm['mean'] - dense['mean']:+.2f} points{gmp}.")
    return "\n".join(lines)


README_TITLE = "The headline rows with for_budget's learning-rate schedule"
SHORT = {"dense": "dense (SGD)", "gsm_budget": "GSM `for_budget`", "gmp": "GMP `PruneToRatio` + SGD"}


def readme(results):
    rows = summarize(results["records"])
    lines = [
        f"**{README_TITLE}** (`--only sweep`: linear warmup over the first tenth, then a cosine "
        "to 0, given to every method alike; each method at its best of the peak learning "
        "rates tried; test accuracy %, mean ± std):",
        "",
        "| model @ compression | seeds | " + " | ".join(SHORT.values()) + " | GSM - dense |",
        "|---|---|" + "---|" * (len(SHORT) + 1),
    ]
    sentences, largest = [], []
    for model in dict.fromkeys(r["model"] for r in rows):
        best = _best(rows, model)
        top = max(best.values(), key=lambda r: r["mean"] if r["method"] != "dense" else -1)
        cells = [(f"**{best[m]['mean']:.2f} ± {best[m]['std']:.2f}**" if best[m] is top
                  else f"{best[m]['mean']:.2f} ± {best[m]['std']:.2f}")
                 + f" (lr {best[m]['learning_rate']})" if m in best else "" for m in SHORT]
        compression = max(r["compression"] for r in best.values())
        diff = (f"{best['gsm_budget']['mean'] - best['dense']['mean']:+.2f}"
                if {"gsm_budget", "dense"} <= set(best) else "")
        seeds = "/".join(map(str, sorted({r["n"] for r in best.values()})))
        lines.append(f"| {models.TITLES[model]} @ {compression}x | {seeds} | " + " | ".join(cells)
                     + f" | {diff} |")
        if {"gsm_budget", "dense"} <= set(best):
            gsm, dense = best["gsm_budget"], best["dense"]
            d = gsm["mean"] - dense["mean"]
            text = (f"{models.TITLES[model]}: GSM is {abs(d):.2f} points "
                    f"{'below' if d < 0 else 'above'} the best dense run, "
                    f"{'inside' if abs(d) <= gsm['std'] else 'outside'} its seed spread "
                    f"(± {gsm['std']:.2f})")
            if "gmp" in best:
                g = gsm["mean"] - best["gmp"]["mean"]
                text += (f", and {abs(g):.2f} points {'ahead of' if g > 0 else 'behind'} "
                         "gradual magnitude pruning given the same schedule")
            sentences.append(text + ".")
        for m, r in best.items():
            tried = sorted({x["learning_rate"] for x in rows if x["model"] == model
                            and x["method"] == m})
            if len(tried) > 1 and r["learning_rate"] == tried[-1]:
                largest.append(f"{SHORT[m]} on {models.TITLES[model]} ({r['learning_rate']})")
    lines += ["", " ".join(sentences)] if sentences else []
    if largest:
        lines += ["", "Best at the largest peak tried, so a larger one may do better: "
                  + ", ".join(largest) + "."]
    return "\n".join(lines)
