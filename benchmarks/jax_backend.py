"""Keras 3 on JAX: step time against Keras SGD, one GSM fit on JAX and TensorFlow, accuracy.

The Keras backend is fixed per process, so every measurement runs in a child
process with `KERAS_BACKEND` set (`python -m benchmarks.jax_backend '<task>'`
prints one line `RESULTS <json>`):

- steps: `cost.step_times` in a JAX process (jit on, JAX's default; JAX
  without jit runs op by op): GSM with `for_budget`'s options and with the
  paper's constants, and ProxNAG, each timed in blocks interleaved with Keras
  SGD on the same model; LeNet-5 and ResNet-20 in one run.
- fit: the same GSM fit (the accuracy table's `gsm_short` at LeNet-300-100
  60x, batch 64) in a TensorFlow process (Keras's CPU default, XLA off), a
  TensorFlow process with `jit_compile=True` and a JAX process, in turn,
  `rounds` times: milliseconds per step of `model.fit` over the timed epochs,
  after one epoch that compiles.
- accuracy: the accuracy table's `gsm_short` row at LeNet-300-100 60x
  (`accuracy.run_keras_job`, the same jobs and seeds) on each backend.
"""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import config, models

NAME = "jax_backend"
TITLE = "Keras 3 on JAX"
REPO = Path(__file__).resolve().parents[1]
ROW = ("lenet300", 60)  # the accuracy table's headline row for LeNet-300-100
FULL = dict(rounds=3, timed_epochs=2, cost=dict(
    rounds=9, steps={"lenet5": 10, "resnet20": 2}))
QUICK = dict(rounds=1, timed_epochs=1, train_limit=1024, cost=dict(
    rounds=2, steps={"lenet5": 3, "resnet20": 1}))
TABLE_SEEDS = 3  # the accuracy table's seeds: range(3), benchmarks.run's --seeds default
FIT_BACKENDS = (("tensorflow", False), ("tensorflow", True), ("jax", True))
FIT_LABELS = {"tensorflow/False": "TensorFlow (XLA off, Keras's CPU default)",
              "tensorflow/True": "TensorFlow (jit_compile=True)",
              "jax/True": "JAX (jit, the default)"}


def _child(backend, task):
    """Run `task` in a child process on `backend`; its `RESULTS` line, parsed."""
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.jax_backend", json.dumps(task)],
                          cwd=REPO, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{backend} child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULTS "):])


# -- what the child processes run -------------------------------------------------


def _gsm_fit_ms(task):
    """ms per step of `fit` with the accuracy table's gsm_short at LeNet-300-100 60x."""
    import keras

    import keras_sparse_momentum as ksm
    from benchmarks import data

    x, y = data.load_mnist(task["train_limit"], 1)[:2]
    epochs = 1 + task["timed_epochs"]
    steps_per_epoch = math.ceil(len(x) / config.BATCH)
    settings = config.for_model(config.GSM_SHORT, ROW[0])
    keras.utils.set_random_seed(0)
    model = models.build(keras, ROW[0])
    model.compile(
        optimizer=ksm.GSMMomentum(compression=ROW[1], **config.gsm_kwargs(
            settings, epochs * steps_per_epoch)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=task["xla"])
    model.fit(x, y, batch_size=config.BATCH, epochs=1, verbose=0)  # compiles
    start = time.perf_counter()
    model.fit(x, y, batch_size=config.BATCH, epochs=epochs, initial_epoch=1, verbose=0)
    return 1e3 * (time.perf_counter() - start) / (task["timed_epochs"] * steps_per_epoch)


def _accuracy_records(task):
    from benchmarks import accuracy, data

    arrays = data.load_mnist(task["jobs"][0]["train_limit"], task["jobs"][0]["test_limit"])
    return [{**job, **accuracy.run_keras_job(job, arrays)} for job in task["jobs"]]


def child_main(task):
    import keras

    if task["kind"] == "steps":
        from benchmarks import cost

        result = []
        for name in task["models"]:
            result += cost.step_times(name, task["settings"], xla_settings=(True,))
    elif task["kind"] == "fit":
        result = _gsm_fit_ms(task)
    else:
        result = _accuracy_records(task)
    print("RESULTS " + json.dumps({"backend": keras.backend.backend(), "result": result}))


# -- the section ----------------------------------------------------------------------


def run(opts, previous=None):
    settings = QUICK if opts.quick else FULL
    steps = _child("jax", dict(kind="steps", models=["lenet5", "resnet20"],
                               settings=settings["cost"]))["result"]
    print("  JAX step time / Keras SGD: " + ", ".join(
        f"{r['model']} {r['optimizer']} {r['ratio']:.3f}" for r in steps
        if r["optimizer"] != "sgd"), flush=True)
    fits = []
    for round_ in range(settings["rounds"]):
        row = {}
        for backend, xla in FIT_BACKENDS[:: 1 if round_ % 2 == 0 else -1]:
            row[f"{backend}/{xla}"] = _child(backend, dict(
                kind="fit", xla=xla, timed_epochs=settings["timed_epochs"],
                train_limit=settings.get("train_limit")))["result"]
        fits.append(row)
        print("  GSM fit ms/step: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()),
              flush=True)
    seeds = config.QUICK["seeds"] if opts.quick else tuple(range(opts.seeds))
    jobs = [dict(model=ROW[0], method="gsm_short", compression=ROW[1], seed=seed,
                 epochs=config.QUICK["epochs"] if opts.quick else config.EPOCHS,
                 train_limit=config.QUICK["train_limit"] if opts.quick else None,
                 test_limit=config.QUICK["test_limit"] if opts.quick else None,
                 frequency=config.QUICK["frequency"] if opts.quick else config.GMP["frequency"])
            for seed in seeds]
    accuracy = {}
    for backend in ("tensorflow", "jax"):
        accuracy[backend] = _child(backend, dict(kind="accuracy", jobs=jobs))["result"]
        print(f"  {backend} gsm_short: " + ", ".join(
            f"{100 * r['test_acc']:.2f} %" for r in accuracy[backend]), flush=True)
    return {"steps": steps, "fit": fits, "accuracy": accuracy, "notes": []}


def _stats(values):
    values = np.asarray(values, float)
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return float(values.mean()), std, float(values.min()), float(values.max())


def _verdict(accuracy, seeds):
    """JAX's mean against the TensorFlow row's mean ± its seed standard deviation."""
    chosen = {b: [100 * r["test_acc"] for r in records if seeds is None or r["seed"] < seeds]
              for b, records in accuracy.items()}
    (jax_mean, *_), (tf_mean, tf_std, *_) = _stats(chosen["jax"]), _stats(chosen["tensorflow"])
    inside = abs(jax_mean - tf_mean) <= tf_std
    which = (f"seeds 0-{seeds - 1} (the accuracy table's)" if seeds is not None
             else f"{len(chosen['jax'])} seeds")
    return (f"{which}: {jax_mean - tf_mean:+.2f} points, {'inside' if inside else 'outside'} "
            f"the TensorFlow row's seed spread (± {tf_std:.2f})")


def render(results, out):
    lines = [
        "### Train-step time on JAX relative to Keras SGD on JAX (jit on, batch "
        f"{config.BATCH}, median over interleaved rounds)",
        "",
        "`cost.step_times` in one JAX process: `train_on_batch` on one fixed batch; ratio = "
        "optimizer block time / the SGD block timed right next to it.",
        "",
        "| model | optimizer | step ms | ratio to SGD | [q1, q3] | rounds x steps |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["steps"]:
        lines.append(
            f"| {models.TITLES[r['model']]} | {r['optimizer']} | {r['step_ms']:.2f} "
            f"| {r['ratio']:.3f} | [{r['ratio_q1']:.3f}, {r['ratio_q3']:.3f}] "
            f"| {r['rounds']} x {r['steps_per_block']} |")
    fits = results["fit"]
    keys = list(FIT_LABELS)
    medians = {k: float(np.median([f[k] for f in fits])) for k in keys}
    ratios = [f["jax/True"] / f["tensorflow/False"] for f in fits]
    ratios_xla = [f["jax/True"] / f["tensorflow/True"] for f in fits]
    lines += [
        "",
        f"### One GSM fit on each backend ({models.TITLES[ROW[0]]} at {ROW[1]}x, "
        "the accuracy table's `gsm_short`, one process per backend, in turn)",
        "",
        "| backend | ms per step (median) | per round |",
        "|---|---|---|",
    ]
    for k in keys:
        lines.append(f"| {FIT_LABELS[k]} | {medians[k]:.2f} "
                     f"| {', '.join(f'{f[k]:.2f}' for f in fits)} |")
    lines += [
        "",
        f"JAX / TensorFlow per round: {', '.join(f'{r:.2f}' for r in ratios)} (XLA off), "
        f"{', '.join(f'{r:.2f}' for r in ratios_xla)} (XLA on); median "
        f"{np.median(ratios):.2f} and {np.median(ratios_xla):.2f}.",
        "",
        f"### GSM accuracy on each backend ({models.TITLES[ROW[0]]} at {ROW[1]}x, "
        "the accuracy table's `gsm_short` row, same seeds)",
        "",
        "| backend | n | test acc % | [min, max] | sparsity % | train s |",
        "|---|---|---|---|---|---|",
    ]
    for backend, records in results["accuracy"].items():
        mean, std, lo, hi = _stats([100 * r["test_acc"] for r in records])
        sparsity = 100 * float(np.mean([r["sparsity"] for r in records]))
        seconds = float(np.mean([r["seconds"] for r in records]))
        lines.append(f"| {backend} | {len(records)} | {mean:.2f} ± {std:.2f} "
                     f"| [{lo:.2f}, {hi:.2f}] | {sparsity:.2f} | {seconds:.0f} |")
    verdicts = [_verdict(results["accuracy"], None)]
    if any(r["seed"] >= TABLE_SEEDS for r in results["accuracy"]["jax"]):
        verdicts.insert(0, _verdict(results["accuracy"], TABLE_SEEDS))
    lines += ["", "JAX − TensorFlow: " + "; ".join(verdicts) + ". A seed fixes each "
              "backend's own random streams (initial weights, shuffling), not the same draws, "
              "so the rows are independent samples, compared through their spread."]
    for note in results.get("notes", []):
        lines += ["", f"Note: {note}"]
    return "\n".join(lines)


if __name__ == "__main__":
    child_main(json.loads(sys.argv[1]))
