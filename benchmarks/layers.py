"""Per-layer sparsity: where GSM's global selection puts the kept weights vs tfmot's uniform split.

Uses the per-layer counts recorded by the accuracy section (first seed of each
headline row); runs the missing trainings itself when that section's results
for the current budget are absent.
"""

import json

from benchmarks import accuracy, config, models, plots

NAME = "layers"
TITLE = "Per-layer sparsity: GSM (global) vs tfmot (uniform)"
METHODS = ("gsm_short", "gsm_paper", "gmp", "tfmot")


def run(opts, previous=None):
    path = opts.out / "accuracy.json"
    records = json.loads(path.read_text())["records"] if path.exists() else []
    jobs = [j for j in accuracy.plan(_plan_opts(opts)) if j["method"] in METHODS]
    found, missing = [], []
    for job in jobs:
        match = [r for r in records if all(r[k] == job[k] for k in
                 ("model", "method", "compression", "epochs", "train_limit"))]
        if match:
            found.append(min(match, key=lambda r: r["seed"]))
        else:
            missing.append(job)
    if missing:
        keras_jobs = [j for j in missing if j["method"] != "tfmot"]
        if keras_jobs:
            from benchmarks import data

            arrays = data.load_mnist(keras_jobs[0]["train_limit"], keras_jobs[0]["test_limit"])
            found += [{**j, **accuracy.run_keras_job(j, arrays)} for j in keras_jobs]
        tfmot_jobs = [j for j in missing if j["method"] == "tfmot"]
        if tfmot_jobs:
            found += [{**j, **r} for j, r in zip(tfmot_jobs, accuracy.run_tfmot_jobs(tfmot_jobs))]
    # Records taken from accuracy.json keep their commit: they were measured then.
    keys = ("model", "method", "compression", "seed", "epochs", "train_limit", "layers",
            "sparsity", "commit", "dirty")
    return {"records": [{k: r[k] for k in keys if k in r} for r in found]}


def _plan_opts(opts):
    """The accuracy plan restricted to the headline rows, one seed, the GSM/tfmot methods."""
    class Plan:
        quick = opts.quick
        seeds = 1
        grid = opts.grid or list(config.HEADLINE)
        methods = METHODS

    return Plan


def render(results, out):
    lines = [
        "Weights kept per layer (nonzero %) at the same global compression. tfmot prunes "
        "every layer to the same sparsity; GSM and PruneToRatio rank all kernels together "
        "and find the split themselves.",
    ]
    records = results["records"]
    for model, compression in dict.fromkeys((r["model"], r["compression"]) for r in records):
        rs = {r["method"]: r for r in records
              if r["model"] == model and r["compression"] == compression}
        methods = [m for m in METHODS if m in rs]
        layer_rows = rs[methods[0]]["layers"]
        lines += [
            "",
            f"### {models.TITLES[model]} at {compression}x",
            "",
            "| layer | weights | " + " | ".join(accuracy.LABELS[m] for m in methods) + " |",
            "|---|---|" + "---|" * len(methods),
        ]
        series = {accuracy.LABELS[m]: [(l, 100 * nz / size) for l, size, nz in rs[m]["layers"]]
                  for m in methods}
        for i, (layer, size, _) in enumerate(layer_rows):
            cells = [f"{100 * rs[m]['layers'][i][2] / rs[m]['layers'][i][1]:.2f}"
                     for m in methods]
            lines.append(f"| {layer} | {size:,} | " + " | ".join(cells) + " |")
        lines.append("| total | " + f"{sum(s for _, s, _ in layer_rows):,} | " + " | ".join(
            f"{100 - 100 * rs[m]['sparsity']:.2f}" for m in methods) + " |")
        stale = [f"{accuracy.LABELS[m]}: {rs[m]['stale']}" for m in methods if rs[m].get("stale")]
        if stale:
            lines += ["", "Stale: " + "; ".join(stale) + "."]
        name = f"layers_{model}.png"
        plots.layer_bars(series, f"{models.TITLES[model]} at {compression}x: weights kept per layer",
                         out / name)
        lines += ["", f"![per-layer density, {models.TITLES[model]}]({name})"]
    return "\n".join(lines)


README_TITLE = "Per-layer sparsity"


def readme(results):
    """Where GSM and tfmot keep weights in the smallest layer, per stored model."""
    sentences = []
    for model, compression in dict.fromkeys((r["model"], r["compression"])
                                            for r in results["records"]):
        rs = {r["method"]: r for r in results["records"]
              if r["model"] == model and r["compression"] == compression}
        if not {"gsm_short", "tfmot"} <= set(rs) or not rs["gsm_short"]["layers"]:
            continue
        i = min(range(len(rs["gsm_short"]["layers"])), key=lambda j: rs["gsm_short"]["layers"][j][1])
        name, size, _ = rs["gsm_short"]["layers"][i]
        kept = {m: 100 * rs[m]["layers"][i][2] / size for m in ("gsm_short", "tfmot")}
        sentences.append(f"{models.TITLES[model]} at {compression}x: in its smallest layer "
                         f"({name}, {size:,} weights) GSM keeps {kept['gsm_short']:.2f} % of the "
                         f"weights, tfmot's uniform split {kept['tfmot']:.2f} %.")
    lines = [f"**{README_TITLE}** (GSM's global selection vs tfmot's uniform split): "
             + (" ".join(sentences) or "no GSM and tfmot pair stored.")]
    if any(r["model"] == "lenet300" for r in results["records"]):
        lines += ["", "![per-layer sparsity, GSM vs tfmot](benchmarks/results/layers_lenet300.png)"]
    return "\n".join(lines)
