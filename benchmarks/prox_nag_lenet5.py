"""ProxNAG + PruneToRatio vs gradual magnitude pruning vs dense: LeNet-5 on mnist10k.

Starting from one trained LeNet-5, every method gets the same epoch budget:
- dense: Keras Nesterov SGD, no pruning;
- gmp: `PruneToRatio(sparsity=s, schedule="polynomial")` with Nesterov SGD
  (Zhu & Gupta, the schedule of tfmot's `prune_low_magnitude`);
- prox: `ProxNAG` + `PruneToRatio(sparsity=s)` (the paper's iterative algorithm);
- tfmot: tfmot's `prune_low_magnitude` + `PolynomialDecay` on the tf_keras twin,
  with the gmp row's optimizer, end step and frequency, in a subprocess with
  `TF_USE_LEGACY_KERAS=1` (benchmarks/tfmot_prox_worker.py; importing tfmot
  here would flip Keras to legacy mode). tfmot prunes every layer to the same
  sparsity; gmp and prox rank all kernels globally.
It prints test accuracy and reached sparsity per target, then the step time of
ProxNAG over Keras `SGD(momentum, nesterov=True)`, both with XLA, measured
side by side in this process.

    python benchmarks/prox_nag_lenet5.py [--quick]

`run(quick)` returns the rows (dicts) for `benchmarks/run.py`.
"""

import argparse
import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_sparse_momentum as ksm  # noqa: E402
from keras_sparse_momentum.data import find_mnist10k, load_mnist10k  # noqa: E402

LR, MOMENTUM, BATCH = 0.02, 0.9, 64
FREQUENCY = 100  # steps between mask updates, gmp and tfmot (tfmot's default)
REPO = pathlib.Path(__file__).resolve().parent.parent


def load_data():
    """mnist10k as (x_train, y_train, x_test, y_test), images (n, 28, 28, 1)."""
    (x_train, y_train), (x_test, y_test) = load_mnist10k()
    return x_train[..., None], y_train, x_test[..., None], y_test


def lenet5():
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(6, 5, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(16, 5, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(120, activation="relu"),
        keras.layers.Dense(84, activation="relu"),
        keras.layers.Dense(10),
    ], name="lenet5")


def _compile(model, optimizer):
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], jit_compile=True)
    return model


def pretrain(data, epochs):
    x, y, _, _ = data
    keras.utils.set_random_seed(0)
    model = _compile(lenet5(), keras.optimizers.SGD(LR, momentum=MOMENTUM, nesterov=True))
    model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0)
    return model.get_weights()


def gmp_end_step(data, epochs):
    """Step at which gmp and tfmot reach the target: 75 % of the fit's steps."""
    return max(1, int(0.75 * math.ceil(len(data[0]) / BATCH) * epochs))


def prune(method, sparsity, weights, data, epochs):
    """Fine-tune the trained weights for `epochs` with `method`; returns a row."""
    x, y, x_test, y_test = data
    keras.utils.set_random_seed(1)
    model = lenet5()
    model.set_weights(weights)
    callbacks = []
    if method == "prox":
        optimizer = ksm.ProxNAG(LR, momentum=MOMENTUM)
        callbacks.append(ksm.PruneToRatio(sparsity=sparsity, schedule="auto"))
    else:
        optimizer = keras.optimizers.SGD(LR, momentum=MOMENTUM, nesterov=True)
        if method == "gmp":
            callbacks.append(ksm.PruneToRatio(
                sparsity=sparsity, schedule="polynomial",
                end_step=gmp_end_step(data, epochs), frequency=FREQUENCY))
    _compile(model, optimizer)
    start = time.perf_counter()
    model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0, callbacks=callbacks)
    seconds = time.perf_counter() - start
    accuracy = float(model.evaluate(x_test, y_test, verbose=0)[1])
    report = ksm.sparsity_report(model)
    row = {"method": method, "target": sparsity, "epochs": epochs, "accuracy": accuracy,
           "sparsity": float(report.total_sparsity), "fit_s": round(seconds, 1)}
    if method == "prox":
        row["rounds"] = callbacks[0]._driver.rounds
    return row


def prune_tfmot(targets, weights, data, epochs):
    """tfmot rows, all targets in one `TF_USE_LEGACY_KERAS=1` subprocess."""
    with tempfile.TemporaryDirectory() as tmp:
        weights_path = os.path.join(tmp, "lenet5_weights.npz")
        np.savez(weights_path, *weights)
        job = {"data": str(find_mnist10k()), "weights": weights_path,
               "targets": list(targets), "epochs": epochs, "batch": BATCH,
               "learning_rate": LR, "momentum": MOMENTUM,
               "end_step": gmp_end_step(data, epochs), "frequency": FREQUENCY, "seed": 1}
        env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3",
                   PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.tfmot_prox_worker", json.dumps(job)],
            cwd=REPO, env=env, capture_output=True, text=True,
        )
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULTS ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"tfmot worker failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return [{"method": "tfmot", "target": r["target"], "epochs": epochs,
             "accuracy": r["accuracy"], "sparsity": r["sparsity"], "fit_s": r["fit_s"]}
            for r in json.loads(lines[-1][len("RESULTS "):])]


def step_times(data, steps, repeats):
    """Median seconds per XLA train step: ProxNAG and Keras Nesterov SGD, interleaved."""
    x, y, _, _ = data
    batches = [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, BATCH * steps, BATCH)]
    models = {}
    for name, optimizer in (("prox", ksm.ProxNAG(LR, momentum=MOMENTUM, l1=1e-4)),
                            ("sgd", keras.optimizers.SGD(LR, momentum=MOMENTUM, nesterov=True))):
        keras.utils.set_random_seed(0)
        models[name] = _compile(lenet5(), optimizer)
        models[name].train_on_batch(*batches[0])  # compile
    times = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            start = time.perf_counter()
            for batch in batches:
                model.train_on_batch(*batch)
            times[name].append((time.perf_counter() - start) / steps)
    return {name: float(np.median(t)) for name, t in times.items()}


def run(quick=False, epochs=None):
    """All rows: accuracy per method and target, then the step-time ratio.

    `quick`: one target (90 %) and a short budget; `epochs` overrides the budget.
    """
    data = load_data()
    pre_epochs, default_epochs = (2, 4) if quick else (4, 10)
    epochs = epochs or default_epochs
    targets = (0.9,) if quick else (0.5, 0.7, 0.9)
    weights = pretrain(data, pre_epochs)
    rows = [prune("dense", 0.0, weights, data, epochs)]
    tfmot_rows = prune_tfmot(targets, weights, data, epochs)
    for sparsity, tfmot_row in zip(targets, tfmot_rows):
        for method in ("gmp", "prox"):
            rows.append(prune(method, sparsity, weights, data, epochs))
        rows.append(tfmot_row)
    times = step_times(data, steps=20 if quick else 50, repeats=3 if quick else 7)
    rows.append({"method": "step_time", "prox_s": times["prox"], "sgd_s": times["sgd"],
                 "ratio": times["prox"] / times["sgd"]})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one target, short budget")
    parser.add_argument("--epochs", type=int, default=None, help="pruning budget in epochs")
    args = parser.parse_args()
    rows = run(args.quick, args.epochs)
    print(f"{'method':<8}{'target':>8}{'epochs':>8}{'accuracy':>10}{'sparsity':>10}{'fit s':>8}")
    for row in rows:
        if row["method"] == "step_time":
            print(f"\nstep time with XLA: ProxNAG {row['prox_s'] * 1e3:.2f} ms, Keras Nesterov "
                  f"SGD {row['sgd_s'] * 1e3:.2f} ms, ratio {row['ratio']:.3f}")
            continue
        print(f"{row['method']:<8}{row['target']:>8.2f}{row['epochs']:>8}"
              f"{row['accuracy']:>10.4f}{row['sparsity']:>10.4f}{row['fit_s']:>8}")
        for info in row.get("rounds", []):
            print(f"{'':<10}round {info['round']}: l1={info['l1']:.3g} "
                  f"sparsity={info['sparsity']:.4f} stop={info['stop']}")


if __name__ == "__main__":
    main()
