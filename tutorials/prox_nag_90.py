"""
Title: 90 % sparse LeNet-5 with Prox-NAG and PruneToRatio
Author: keras-sparse-momentum developers
Date created: 2026/11/23
Last modified: 2026/12/02
Description: L1 soft-thresholding on a Nesterov path prunes a trained LeNet-5 to exactly 90 % sparsity in one `fit`.
Accelerator: None
"""

"""
## Introduction

Prox-NAG (Zhou, Chen, Bao, Tao, 2023) makes the optimizer itself produce exact zeros: every
step it takes a Nesterov momentum step and then soft-thresholds the weights,
`w~ = sign(w_hat) * max(|w_hat| - lr * l1, 0)`. How sparse the result gets depends on the L1
strength `l1` only implicitly, so the paper adds an iterative algorithm: prune with Prox-NAG
until the sparsity peaks, hold the zeros, fine-tune, raise `l1`, and repeat until the target is
met. `ksm.PruneToRatio(sparsity=0.9)` runs that algorithm for you inside one `model.fit` call
when the optimizer is `ksm.ProxNAG` (its default `schedule="auto"` picks it).

Run `python tutorials/prox_nag_90.py --quick` for a version that finishes in under a minute.
"""

"""
## Setup
"""

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_sparse_momentum as ksm  # noqa: E402

parser = argparse.ArgumentParser(description="Prox-NAG to 90 % sparsity on LeNet-5")
parser.add_argument("--quick", action="store_true", help="small data, few epochs (< 60 s)")
parser.add_argument("--out", default=None, help="directory for the plot (default: a temp dir)")
args = parser.parse_args()
out_dir = Path(args.out or tempfile.mkdtemp(prefix="ksm_prox_nag_"))
out_dir.mkdir(parents=True, exist_ok=True)

"""
## The data: 10,000 MNIST digits

`ksm.datasets.load_mnist_sample()` loads the 10k-digit sample that ships inside the package
(no download); set `KSM_DATA` to use another file.
"""

(x_train, y_train), (x_test, y_test) = ksm.datasets.load_mnist_sample()
x_train, x_test = x_train[..., None], x_test[..., None]
if args.quick:
    x_train, y_train = x_train[:3000], y_train[:3000]
pretrain_epochs, prune_epochs = (2, 4) if args.quick else (4, 10)

"""
## A trained LeNet-5

The paper's algorithm starts from a trained model, so we first train one with plain Keras
Nesterov SGD.
"""


def lenet5():
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(6, 5, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(16, 5, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(120, activation="relu"),
            keras.layers.Dense(84, activation="relu"),
            keras.layers.Dense(10),
        ]
    )


keras.utils.set_random_seed(0)
model = lenet5()
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
model.compile(keras.optimizers.SGD(0.02, momentum=0.9, nesterov=True), loss, metrics=["accuracy"])
model.fit(x_train, y_train, batch_size=64, epochs=pretrain_epochs, verbose=2)
dense_accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
print(f"dense test accuracy: {dense_accuracy:.4f}")

"""
## Prune to exactly 90 % with Prox-NAG

Swap in `ksm.ProxNAG` (same learning rate and momentum) and add `ksm.PruneToRatio`. Its
default `schedule="auto"` sees the Prox-NAG optimizer and runs the iterative algorithm:
it calibrates the L1 step from the weights, so there is no `l1` to tune. Each epoch it logs
the phase (0 prune, 1 fine-tune, 2 final), the round, `l1` and the sparsity of the sparse
iterate.
"""

model.compile(ksm.ProxNAG(0.02, momentum=0.9), loss, metrics=["accuracy"])
prune = ksm.PruneToRatio(sparsity=0.9)  # schedule="auto": the iterative algorithm
history = model.fit(
    x_train, y_train, batch_size=64, epochs=prune_epochs, verbose=2, callbacks=[prune]
)
pruned_accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
print(f"pruned test accuracy: {pruned_accuracy:.4f} (dense {dense_accuracy:.4f})")

"""
The model now holds exact zeros: the sparsity report counts them per layer.
"""

print(ksm.sparsity_report(model))
for info in prune._driver.rounds:
    print(f"round {info['round']}: l1={info['l1']:.3g} sparsity={info['sparsity']:.3f} ({info['stop']})")

"""
## Plot: sparsity and L1 strength per epoch
"""

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

epochs = np.arange(1, prune_epochs + 1)
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(epochs, history.history["sparsity"], "o-", label="sparsity of w~")
ax.axhline(0.9, color="gray", linestyle="--", label="target")
ax.set_xlabel("epoch")
ax.set_ylabel("sparsity")
ax2 = ax.twinx()
ax2.plot(epochs, history.history["l1"], "s:", color="tab:red", label="l1")
ax2.set_ylabel("l1", color="tab:red")
ax.legend(loc="lower right")
ax.set_title(f"Prox-NAG to 90 %: test accuracy {pruned_accuracy:.3f} (dense {dense_accuracy:.3f})")
fig.tight_layout()
plot_path = out_dir / "prox_nag_90.png"
fig.savefig(plot_path, dpi=100)
print(f"plot saved to {plot_path}")
