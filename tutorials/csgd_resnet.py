"""
Title: Thinner, faster ResNets with Centripetal SGD
Author: keras-sparse-momentum developers
Date created: 2026/11/23
Last modified: 2026/12/02
Description: Make clustered ResNet filters identical with C-SGD, then remove them: same outputs.
Accelerator: None
"""

"""
## Introduction

Zeroing individual weights (unstructured sparsity) shrinks files but rarely makes
a network faster: the matrix shapes stay the same. To gain real latency you have
to remove whole filters, and in a residual network that is hard, because every
layer whose output meets at an `Add` must lose the *same* channels.

**Centripetal SGD** (Ding et al., CVPR 2019) solves this differently. Before
training, the filters of each layer are split into clusters (layers tied by a
residual `Add` share one clustering). During training every filter receives the
mean gradient of its cluster plus a pull towards the cluster centre, so the
filters of a cluster become *identical*. Identical filters produce identical
channels, so all but one can be removed and the next layer's input weights for
the cluster summed into the kept one: the function does not change at all.

In this tutorial we:

1. build a small ResNet and a `ksm.ClusterPlan` keeping half the filters,
2. train it with `ksm.CentripetalSGD` and watch the clusters converge,
3. `ksm.strip` it and check that the outputs are unchanged,
4. export both models to TFLite and time them with the LiteRT interpreter.
"""

"""
## Setup
"""

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import tensorflow as tf

import keras_sparse_momentum as ksm

parser = argparse.ArgumentParser(description="C-SGD on a small ResNet")
parser.add_argument("--quick", action="store_true", help="tiny run (< 60 s on 2 cores)")
parser.add_argument("--out", default=".", help="directory for the PNG plot")
parser.add_argument("--data", default=None, help="another mnist10k.npz (default: shipped)")
args = parser.parse_args()

QUICK = args.quick
keras.utils.set_random_seed(0)

"""
## Data

A 10,000-image subset of MNIST (28x28 digits) that ships inside the package,
loaded without the internet by `ksm.datasets.load_mnist_sample` (`--data` or
`$KSM_DATA` use another file). Pixels come scaled to [0, 1].
"""

(x_train, y_train), (x_test, y_test) = ksm.datasets.load_mnist_sample(args.data)
n_train, n_test = (2000, 500) if QUICK else (8000, 2000)
x_train, y_train = x_train[:n_train, ..., None], y_train[:n_train]
x_test, y_test = x_test[:n_test, ..., None], y_test[:n_test]

"""
## A ResNet with projection shortcuts

Three stages of basic blocks (two 3x3 convs with BatchNorm); where the resolution
or width changes, the shortcut is a 1x1 convolution. Every convolution of a stage
whose output reaches the same `Add` (the stem, the second conv of every block,
the projection) writes into the same channels.
"""


def conv_bn(x, filters, kernel=3, strides=1, relu=True, name=None):
    x = keras.layers.Conv2D(
        filters, kernel, strides=strides, padding="same", use_bias=False, name=name
    )(x)
    # momentum 0.9: the moving statistics settle within a short budget
    x = keras.layers.BatchNormalization(momentum=0.9)(x)
    return keras.layers.ReLU()(x) if relu else x


def resnet(widths=(8, 16, 32), blocks=2):
    inputs = keras.Input((28, 28, 1))
    x = conv_bn(inputs, widths[0], name="stem")
    for stage, width in enumerate(widths):
        for block in range(blocks):
            strides = 2 if stage > 0 and block == 0 else 1
            y = conv_bn(x, width, strides=strides, name=f"s{stage}b{block}_a")
            y = conv_bn(y, width, relu=False, name=f"s{stage}b{block}_b")
            if strides != 1:
                x = conv_bn(x, width, 1, strides, relu=False, name=f"s{stage}b{block}_proj")
            x = keras.layers.ReLU()(keras.layers.Add()([x, y]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name="resnet")


model = resnet(blocks=1 if QUICK else 2)

"""
## The cluster plan

`ClusterPlan.from_model` finds every convolution it can prune, ties the ones that
meet at a residual `Add`, and clusters their filters (k-means on the flattened
filters, deterministic). The output layer is left alone, and the summary says why.
"""

plan = ksm.ClusterPlan.from_model(model, keep_ratio=0.5)
print(plan)

"""
## Training with Centripetal SGD

The paper uses a centripetal strength of 3e-3 over hundreds of epochs; for a
budget of a few epochs a stronger pull makes the clusters converge in time. A
small callback records the largest intra-cluster distance (relative to the
filter norms) after every epoch.
"""


class ClusterDistance(keras.callbacks.Callback):
    def __init__(self, plan):
        super().__init__()
        self.plan, self.history = plan, [plan.cluster_distance(model)]

    def on_epoch_end(self, epoch, logs=None):
        self.history.append(self.plan.cluster_distance(self.model))


epochs = 2 if QUICK else 6
steps = epochs * int(np.ceil(len(x_train) / 64))
optimizer = ksm.CentripetalSGD(
    plan,
    learning_rate=keras.optimizers.schedules.CosineDecay(0.05, steps),
    centripetal_strength=1.0,
)
model.compile(
    optimizer=optimizer,
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)
distances = ClusterDistance(plan)
model.fit(x_train, y_train, batch_size=64, epochs=epochs, callbacks=[distances], verbose=2)
print("distance before the final merge:", optimizer.last_cluster_distance)

"""
At the end of `fit` the optimizer made every cluster exactly identical (kernels,
BatchNorm parameters and moving statistics averaged).

## Strip: one filter per cluster, same outputs
"""

slim = ksm.strip(model, plan)
reference = model.predict(x_test, verbose=0)
outputs = slim.predict(x_test, verbose=0)
error = np.abs(outputs - reference).max() / np.abs(reference).max()
accuracy = np.mean(np.argmax(outputs, axis=1) == y_test)
print(f"parameters {model.count_params()} -> {slim.count_params()}")
macs = ksm.sparsity_report(model).dense_macs, ksm.sparsity_report(slim).dense_macs
print(f"MACs per image {macs[0]:,} -> {macs[1]:,} ({100 * (1 - macs[1] / macs[0]):.0f}% removed)")
print(f"max relative output difference {error:.2e}; test accuracy {accuracy:.4f}")

"""
## TFLite: smaller and faster

Both models are converted to float32 TFLite and timed with the LiteRT interpreter
on one thread, alternating between them so that both see the same machine load.
"""

from ai_edge_litert.interpreter import Interpreter  # noqa: E402

timings = {}
interpreters = {}
for name, keras_model in [("original", model), ("stripped", slim)]:
    blob = tf.lite.TFLiteConverter.from_keras_model(keras_model).convert()
    interpreter = Interpreter(model_content=blob, num_threads=1)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x_test[:1])
    interpreters[name], timings[name] = interpreter, []
    print(f"{name}: {len(blob) / 1024:.1f} KiB")
for _ in range(5 if QUICK else 15):
    for name, interpreter in interpreters.items():
        start = time.perf_counter()
        for _ in range(20):
            interpreter.invoke()
        timings[name].append((time.perf_counter() - start) / 20 * 1e3)
latency = {name: float(np.median(t)) for name, t in timings.items()}
print(f"latency: {latency}; speedup {latency['original'] / latency['stripped']:.2f}x")

"""
## Plot
"""

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
left.semilogy(range(len(distances.history)), np.maximum(distances.history, 1e-8), "o-")
left.set(xlabel="epoch", ylabel="max relative intra-cluster distance",
         title="Clusters converge during training")
right.bar(list(latency), list(latency.values()), color=["grey", "tab:green"])
right.set(ylabel="ms per image (LiteRT, 1 thread)", title="Stripped model is faster")
figure.tight_layout()
Path(args.out).mkdir(parents=True, exist_ok=True)
figure.savefig(Path(args.out) / "csgd_resnet.png", dpi=100)
print("plot saved to", Path(args.out) / "csgd_resnet.png")

"""
## Conclusion

C-SGD turned half of every layer's filters, residual-tied ones included, into
copies that `ksm.strip` removed without changing the outputs beyond float
rounding. The stripped network is a plain Keras model: fine-tune it, save it, or
export it to TFLite like any other.
"""
