"""AOFP on a VGG-style CNN, MNIST 10k: FLOPs vs target, accuracy vs dense, widths, wall time.

Rows, all from one process, same initial weights, same epochs, same optimizer
and learning-rate schedule:

- `dense`: plain training.
- `aofp`: the same training with `ksm.AOFP(target)` (pruning from the second
  epoch, the rest of the run fine-tunes the pruned net), then `ksm.strip`;
  accuracy is the stripped model's (equal to the masked one's).
- `scratch`: the widths AOFP found, trained from scratch for the same epochs:
  does the search's training-time pruning beat just training the smaller net?
- `csgd`: `ksm.CentripetalSGD` from the same initial weights for the same
  epochs, one keep ratio for every layer chosen so that the stripped FLOPs
  match AOFP's, then `ksm.strip(model, plan)`.

Every row's shipped model (stripped where pruned) is converted to float
TFLite; its size and one-thread LiteRT latency are measured side by side
(interleaved rounds), the speed-up relative to dense.

Times are wall-clock `fit` times under whatever load the machine has; the
AOFP overhead is also given as the share of its `fit` spent measuring damages.

    python benchmarks/aofp_cnn.py [--quick]
"""

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_sparse_momentum as ksm  # noqa: E402
from keras_sparse_momentum.datasets import load_mnist_sample  # noqa: E402
from keras_sparse_momentum.surgery.strip import max_relative_error  # noqa: E402
from benchmarks.tflite_timing import tflite_bytes, tflite_latency  # noqa: E402

WIDTHS = (16, 16, 32, 32, 64)
FULL = dict(epochs=6, train=8000, targets=(0.5, 0.3), iters_per_half=6, measure_every=2,
            rounds=11, invokes=50)
QUICK = dict(epochs=3, train=2000, targets=(0.5,), iters_per_half=4, measure_every=2,
             rounds=3, invokes=10)
BATCH = 64
THRESH = 0.01  # the paper's CIFAR value
THRESH_GROWTH = 2.0  # relax it when no layer can prune, to reach the target in budget
CENTRIPETAL_STRENGTH = 0.1  # as in csgd_resnet.py: 3e-3 needs ~100x this budget


def _csgd_keep_ratio(flops_kept, dense_macs):
    """The uniform C-SGD keep ratio whose stripped widths come closest to `flops_kept`."""
    def kept(ratio):
        widths = [max(1, int(np.ceil(ratio * w))) for w in WIDTHS]
        return ksm.sparsity_report(vgg(widths)).dense_macs / dense_macs
    return min(np.linspace(0.2, 1.0, 33), key=lambda r: abs(kept(r) - flops_kept))


def _mnist(train):
    (x, y), (xt, yt) = load_mnist_sample()  # shipped sample, or $KSM_DATA
    return x[:train, ..., None], y[:train], xt[..., None], yt


def vgg(widths=WIDTHS):
    """conv-BN-ReLU x2, pool, x2, pool, x1, global pool, Dense(10)."""
    x = inputs = keras.Input((28, 28, 1))
    for i, filters in enumerate(widths):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{i}")(x)
        x = keras.layers.ReLU()(x)
        if i in (1, 3):
            x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="head")(x))


def _compile(model, steps, plan=None):
    schedule = keras.optimizers.schedules.CosineDecay(0.05, steps, alpha=0.02)
    optimizer = (
        keras.optimizers.SGD(schedule, momentum=0.9) if plan is None
        else ksm.CentripetalSGD(plan, schedule, momentum=0.9,
                                centripetal_strength=CENTRIPETAL_STRENGTH)
    )
    model.compile(
        optimizer,
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def _train(model, data, epochs, callbacks=(), plan=None):
    x, y, xt, yt = data
    _compile(model, epochs * (len(x) // BATCH + 1), plan)
    start = time.perf_counter()
    model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0, callbacks=list(callbacks))
    seconds = time.perf_counter() - start
    return seconds


def _accuracy(model, data):
    _, _, xt, yt = data
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(metrics=["accuracy"], loss=loss)
    return float(model.evaluate(xt, yt, batch_size=500, verbose=0)[1])


def run(quick=False):
    """One dict per row: model, target, FLOPs kept, accuracy, widths, times."""
    cfg = QUICK if quick else FULL
    data = _mnist(cfg["train"])
    steps_per_epoch = len(data[0]) // BATCH + 1
    keras.utils.set_random_seed(0)
    initial = vgg().get_weights()
    dense = vgg()
    dense.set_weights(initial)
    dense_macs = ksm.sparsity_report(dense).dense_macs
    dense_time = _train(dense, data, cfg["epochs"])
    rows = [dict(model="dense", target="", epochs=cfg["epochs"], flops_kept=1.0,
                 accuracy=_accuracy(dense, data),
                 widths="-".join(map(str, WIDTHS)), fit_s=dense_time, time_vs_dense=1.0,
                 measure_share="", measurements="")]
    shipped = [dense]  # the model each row ships, for its TFLite size and latency
    for target in cfg["targets"]:
        model = vgg()
        model.set_weights(initial)
        aofp = ksm.AOFP(
            target, thresh=THRESH, iters_per_half=cfg["iters_per_half"],
            measure_every=cfg["measure_every"], probe_data=data[0][:512], probe_batch_size=32,
            begin_step=steps_per_epoch, thresh_growth=THRESH_GROWTH, seed=0,
        )
        seconds = _train(model, data, cfg["epochs"], [aofp])
        slim = ksm.strip(model)
        error = max_relative_error(model, slim, data[2][:64])
        widths = [slim.get_layer(f"conv{i}").filters for i in range(len(WIDTHS))]
        last = max((e["step"] for e in aofp.events), default=0)
        rows.append(dict(
            model="aofp", target=target, epochs=cfg["epochs"],
            flops_kept=ksm.sparsity_report(slim).dense_macs / dense_macs,
            accuracy=_accuracy(slim, data), widths="-".join(map(str, widths)),
            fit_s=seconds, time_vs_dense=seconds / dense_time,
            measure_share=aofp.measure_seconds / seconds, measurements=aofp.measurements,
            last_prune_epoch=round(last / steps_per_epoch, 2), thresh_end=aofp.thresh_reached,
            strip_error=error,
        ))
        shipped.append(slim)
        scratch = vgg(widths)
        seconds = _train(scratch, data, cfg["epochs"])
        rows.append(dict(
            model="scratch", target=target, epochs=cfg["epochs"],
            flops_kept=ksm.sparsity_report(scratch).dense_macs / dense_macs,
            accuracy=_accuracy(scratch, data), widths="-".join(map(str, widths)),
            fit_s=seconds, time_vs_dense=seconds / dense_time, measure_share="", measurements="",
        ))
        shipped.append(scratch)
        # C-SGD with one keep ratio for every layer, chosen for the same FLOPs.
        model = vgg()
        model.set_weights(initial)
        plan = ksm.ClusterPlan.from_model(model, keep_ratio=float(
            _csgd_keep_ratio(rows[-2]["flops_kept"], dense_macs)))
        seconds = _train(model, data, cfg["epochs"], plan=plan)
        slim = ksm.strip(model, plan)
        widths = [slim.get_layer(f"conv{i}").filters for i in range(len(WIDTHS))]
        rows.append(dict(
            model="csgd", target=target, epochs=cfg["epochs"],
            flops_kept=ksm.sparsity_report(slim).dense_macs / dense_macs,
            accuracy=_accuracy(slim, data), widths="-".join(map(str, widths)),
            fit_s=seconds, time_vs_dense=seconds / dense_time, measure_share="", measurements="",
            strip_error=max_relative_error(model, slim, data[2][:64]),
        ))
        shipped.append(slim)
    blobs = [tflite_bytes(m) for m in shipped]
    latency, speedup = tflite_latency(blobs, data[2][:1], cfg["rounds"], cfg["invokes"])
    for row, blob, ms, ratio in zip(rows, blobs, latency, speedup):
        row.update(tflite_kb=len(blob) / 1024, tflite_ms=ms, tflite_speedup=ratio)
    return rows


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
