"""
Title: Migrating from tfmot's prune_low_magnitude to Keras 3 with PruneToRatio
Author: keras-sparse-momentum developers
Date created: 2026/11/23
Last modified: 2026/12/02
Description: The same gradual magnitude pruning as TensorFlow Model Optimization's `prune_low_magnitude`, on Keras 3, with one callback and no layer wrappers.
Accelerator: None
"""

"""
## Introduction

`tensorflow_model_optimization` (tfmot) prunes by wrapping every layer in a
`PruneLowMagnitude` wrapper. It only works with Keras 2 (`tf_keras`, selected
with `TF_USE_LEGACY_KERAS=1`), and importing it in a Keras 3 program switches
`tf.keras` back to Keras 2 for the whole process. Keras 3 has no pruning API of
its own.

`ksm.PruneToRatio` is the Keras 3 replacement: a callback that applies the same
schedule (Zhu & Gupta's polynomial decay, the one behind tfmot's
`PolynomialDecay`) by holding magnitude masks on the kernels through variable
constraints. There is nothing to wrap and nothing to strip, and it works the
same for Sequential, functional and subclassed models, with any optimizer,
under XLA and distribution strategies.

This tutorial shows the tfmot code next to its Keras 3 translation, runs the
Keras 3 side on an MNIST sample and, with `--with-tfmot`, runs the original
tfmot code **in a separate process** (Keras 2 and Keras 3 cannot share one) to
compare the two.

Run: `python tutorials/migrate_from_tfmot.py [--quick] [--out DIR] [--with-tfmot]`.
"""

"""
## The dictionary

| tfmot (Keras 2)                                                        | keras_sparse_momentum (Keras 3)                                         |
|------------------------------------------------------------------------|-------------------------------------------------------------------------|
| `prune_low_magnitude(model, pruning_schedule=PolynomialDecay(s_i, s_f, begin_step, end_step, frequency=f))` | callback `PruneToRatio(sparsity=s_f, scope="layer", initial_sparsity=s_i, begin_step=..., end_step=..., frequency=f)` (the default `schedule="auto"` is `"polynomial"` with any optimizer but GSMMomentum / ProxNAG) |
| `ConstantSparsity(s, begin_step, frequency=f)`                          | `PruneToRatio(sparsity=s, schedule="polynomial", initial_sparsity=s, begin_step=..., frequency=f, scope="layer")` |
| `callbacks=[UpdatePruningStep()]`                                       | `callbacks=[prune]` (the callback *is* the pruning)                     |
| wrap only some layers with `clone_model(..., clone_function=...)`       | `prunable=lambda v: "fc1" in v.path`                                    |
| per-layer sparsity only                                                 | also `scope="global"`: one magnitude ranking over all layers            |
| `PruningSummaries(log_dir)`                                             | `logs["sparsity"]`, seen by `TensorBoard` and `History`                 |
| `strip_pruning(model)` before saving                                    | nothing to strip; `ksm.strip(model)` also removes dead units            |
| `TFLiteConverter.from_keras_model` + `EXPERIMENTAL_SPARSITY`            | `ksm.export_tflite(model, "m.tflite")`, verified with LiteRT            |
| final sparsity approximately `s_f` per layer                            | exactly `ceil(N / C)` nonzeros at the end of `fit`                      |

Below, the complete tfmot program we migrate. It is kept as a string: this
process runs Keras 3 and must never import tfmot.
"""

TFMOT_CODE = '''
import json, sys
import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
from tensorflow import keras  # with TF_USE_LEGACY_KERAS=1 this is tf_keras (Keras 2)

data_path, epochs, train_size, frequency = sys.argv[1], *map(int, sys.argv[2:5])
with np.load(data_path) as d:
    x_train = d["x_train"][:train_size].astype("float32") / 255.0
    y_train = d["y_train"][:train_size]
    x_test, y_test = d["x_test"].astype("float32") / 255.0, d["y_test"]

batch_size = 64
end_step = int(0.75 * epochs * -(-len(x_train) // batch_size))
model = keras.Sequential([
    keras.layers.Flatten(input_shape=(28, 28)),
    keras.layers.Dense(300, activation="relu"),
    keras.layers.Dense(100, activation="relu"),
    keras.layers.Dense(10),
])
schedule = tfmot.sparsity.keras.PolynomialDecay(
    initial_sparsity=0.0, final_sparsity=0.9, begin_step=0, end_step=end_step,
    frequency=frequency)
pruned = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
pruned.compile(optimizer=keras.optimizers.Adam(1e-3),
               loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
               metrics=["accuracy"])
pruned.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, verbose=2,
           callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
final = tfmot.sparsity.keras.strip_pruning(pruned)
final.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=["accuracy"])
accuracy = final.evaluate(x_test, y_test, verbose=0)[1]
kernels = [w.numpy() for w in final.weights if "kernel" in w.name]
sparsity = 1 - sum(np.count_nonzero(k) for k in kernels) / sum(k.size for k in kernels)
print("RESULT " + json.dumps({"accuracy": float(accuracy), "sparsity": float(sparsity)}))
'''

"""
## Setup (Keras 3)
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

import keras_sparse_momentum as ksm

parser = argparse.ArgumentParser(description=__doc__.split("Description: ")[1].split("\n")[0])
parser.add_argument("--quick", action="store_true", help="a smoke run (under a minute)")
parser.add_argument("--out", default="tutorial_out", help="folder for the PNG")
parser.add_argument("--data", default=None, help="another mnist10k.npz (default: shipped)")
parser.add_argument(
    "--with-tfmot", action="store_true",
    help="also run the tfmot program in a subprocess with TF_USE_LEGACY_KERAS=1",
)
args = parser.parse_args()
out = pathlib.Path(args.out)
out.mkdir(parents=True, exist_ok=True)
keras.utils.set_random_seed(0)

"""
## The same experiment in Keras 3

Same data, model, optimizer and schedule: 90 % sparsity per layer, reached along
the cubic schedule at 75 % of training, masks recomputed every `frequency`
steps (tfmot's default is 100; the quick run has only 64 steps, so it uses 10).
`PruneToRatio` needs no `schedule` argument for this: next to Adam its default,
`"auto"`, is the gradual `"polynomial"` schedule (one exact cut at the end,
`"end"`, stays available for a model you fine-tune afterwards).
"""

epochs = 2 if args.quick else 10
train_size = 2000 if args.quick else 8000
frequency = 10 if args.quick else 100
batch_size = 64

(x_train, y_train), (x_test, y_test) = ksm.datasets.load_mnist_sample(args.data)
x_train, y_train = x_train[:train_size], y_train[:train_size]
steps = epochs * -(-len(x_train) // batch_size)

# tfmot: model = keras.Sequential([...]) -- unchanged in Keras 3
model = keras.Sequential(
    [
        keras.Input((28, 28)),
        keras.layers.Flatten(),
        keras.layers.Dense(300, activation="relu"),
        keras.layers.Dense(100, activation="relu"),
        keras.layers.Dense(10),
    ]
)
# tfmot: pruned = prune_low_magnitude(model, pruning_schedule=PolynomialDecay(...))
# No `schedule`: the default "auto" is tfmot's gradual polynomial schedule next to
# Adam (or any optimizer that does not prune by itself).
prune = ksm.PruneToRatio(
    sparsity=0.9,
    scope="layer",  # tfmot prunes each layer to the same sparsity
    initial_sparsity=0.0,
    begin_step=0,
    end_step=int(0.75 * steps),
    frequency=frequency,
)
# tfmot: pruned.compile(...) -- the model itself is compiled, no wrapper
model.compile(
    optimizer=keras.optimizers.Adam(1e-3),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)
# tfmot: callbacks=[UpdatePruningStep()]
history = model.fit(
    x_train, y_train, batch_size=batch_size, epochs=epochs, verbose=2, callbacks=[prune]
)
# tfmot: final = strip_pruning(pruned) -- nothing to strip here
accuracy = model.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"]
report = ksm.sparsity_report(model)
print(report)
print(f"Keras 3 + PruneToRatio: accuracy {accuracy:.2%}, sparsity {report.total_sparsity:.2%}")

"""
Every kernel ends exactly 90 % sparse (`ceil(n / 10)` nonzeros each), and the
model is an ordinary Keras 3 model: `model.save("pruned.keras")` works and
needs no custom objects.

## The schedule

`prune.sparsity_at(step)` is the scheduled sparsity; `logs["sparsity"]`, kept
by `History`, the sparsity measured on the weights at the end of each epoch.
"""

fig, ax = plt.subplots(figsize=(6, 3.5))
grid = np.arange(steps + 1)
ax.plot(grid, [100 * prune.sparsity_at(int(s)) for s in grid], label="schedule (cubic)")
epoch_ends = [(e + 1) * steps // epochs for e in range(epochs)]
ax.plot(
    epoch_ends, [100 * s for s in history.history["sparsity"]], "o",
    label="measured at epoch end",
)
ax.set_xlabel("optimizer step")
ax.set_ylabel("sparsity (%)")
ax.set_title("PruneToRatio (default: polynomial), tfmot's PolynomialDecay")
ax.legend(loc="lower right")
fig.tight_layout()
fig.savefig(out / "migrate_from_tfmot_schedule.png", dpi=120)

"""
## What Keras 3 adds

Deployment is one call (`export_tflite` stores the 90 %-zero kernels sparse
and checks the file with LiteRT). And where tfmot only knows per-layer
sparsity, `scope="global"` ranks all weights together, so layers that matter
less give up more; `ksm.GSMMomentum` goes further and chooses what to keep from
gradients while training.
"""

tflite = ksm.export_tflite(model, out / "migrated_sparse.tflite")
print(tflite)

"""
## Optional: run the tfmot original side by side

Keras 2 and Keras 3 cannot live in one process, so the tfmot program runs in a
child process with `TF_USE_LEGACY_KERAS=1` (it needs
`pip install tensorflow-model-optimization tf-keras`).
"""

if args.with_tfmot:
    with tempfile.NamedTemporaryFile("w", suffix="_tfmot.py", delete=False) as script:
        script.write(TFMOT_CODE)
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
    command = [
        sys.executable, script.name, str(ksm.datasets.mnist_sample_path(args.data)),
        str(epochs), str(train_size), str(frequency),
    ]
    completed = subprocess.run(command, env=env, capture_output=True, text=True)
    os.unlink(script.name)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if completed.returncode or not lines:
        print("tfmot run failed:\n" + completed.stderr[-2000:])
    else:
        tfmot = json.loads(lines[-1][len("RESULT "):])
        print(f"{'':24s} {'accuracy':>9s} {'sparsity':>9s}")
        print(f"{'tfmot (Keras 2)':24s} {tfmot['accuracy']:9.2%} {tfmot['sparsity']:9.2%}")
        print(f"{'PruneToRatio (Keras 3)':24s} {accuracy:9.2%} {report.total_sparsity:9.2%}")

"""
## Conclusion

The migration is mechanical: drop the wrapper, the `UpdatePruningStep`
callback and `strip_pruning`; pass one `PruneToRatio` callback with the same
schedule numbers. The result is a plain Keras 3 model, exactly as sparse as
asked, ready for `ksm.strip` and `ksm.export_tflite`.
"""
