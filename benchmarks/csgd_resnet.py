"""C-SGD on a ResNet-20-style CNN (mnist10k): FLOPs, accuracy, TFLite latency/size, step time.

Run: `python benchmarks/csgd_resnet.py [--quick] [--config NAME]`
or `run(quick) -> list[dict]` (one dict per table row, the same keys in every row).

Protocol (every number below is measured side by side in one process):

1. Dense ResNet (3 stages x `blocks` basic blocks, 1x1 projection shortcuts)
   trained `epochs_1` epochs with Keras Nesterov SGD: the shared checkpoint.
2. From that checkpoint, `epochs_2` more epochs (cosine learning rate) of
   - *dense*: Keras Nesterov SGD, the reference accuracy;
   - *C-SGD*: `ClusterPlan(keep_ratio=0.5)` on every conv, residual-tied ones
     included (k-means on the trained filters), `CentripetalSGD`, then
     `ksm.strip` (the stripped model's accuracy is reported);
   - *L1 + fine-tune*: the classic baseline at exactly the same widths
     (filters with the largest L1 norm kept, `benchmarks/l1_filter_pruning.py`),
     fine-tuned with Keras Nesterov SGD;
   - *AOFP*: `ksm.AOFP` with the C-SGD model's FLOPs as its target (residual
     groups pruned together), Keras Nesterov SGD, then `ksm.strip`.
   All four get the same epoch budget, batch size and learning rate schedule.
3. MACs per example (conv + dense kernels) of each model.
4. TFLite files of the four (float32, no quantization): size and LiteRT latency
   (`ai_edge_litert` Interpreter, one thread, batch 1, same input), timed in
   interleaved rounds; the speedup is the median of per-round ratios.
5. Train-step time under XLA (`jit_compile=True`) of CentripetalSGD vs
   `keras.optimizers.SGD(momentum=0.9, nesterov=True)` on the dense
   architecture, interleaved rounds, median of per-round ratios.

Configurations: "quick" (seconds, smoke test; `--quick`), "full" (ResNet-20
widths 16/32/64; the default) and "reduced" (widths 8/16/32, for a loaded
machine), chosen with `--config` or `KSM_BENCH_CONFIG`. The chosen one and the
load average are in every row.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.get_logger().setLevel("ERROR")

import keras_sparse_momentum as ksm  # noqa: E402
from keras_sparse_momentum.datasets import load_mnist_sample  # noqa: E402
from keras_sparse_momentum.surgery.strip import max_relative_error  # noqa: E402

try:
    from benchmarks.l1_filter_pruning import l1_prune  # noqa: E402
    from benchmarks.tflite_timing import tflite_bytes, tflite_latency  # noqa: E402
except ModuleNotFoundError:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from l1_filter_pruning import l1_prune  # noqa: E402
    from tflite_timing import tflite_bytes, tflite_latency  # noqa: E402

CONFIGS = {
    "quick": dict(widths=(4, 8, 16), blocks=1, train=512, test=256, epochs_1=1, epochs_2=1,
                  batch=64, rounds=3, steps=2, invokes=10),
    "reduced": dict(widths=(8, 16, 32), blocks=3, train=8000, test=2000, epochs_1=3, epochs_2=3,
                    batch=64, rounds=9, steps=5, invokes=40),
    "full": dict(widths=(16, 32, 64), blocks=3, train=8000, test=2000, epochs_1=3, epochs_2=3,
                 batch=64, rounds=11, steps=10, invokes=50),
}
KEEP_RATIO = 0.5
LEARNING_RATE = 0.05
# The paper's 3e-3 needs ~100x the steps of this budget. Measured on `reduced`, 3+3 epochs:
# 0.1 -> stripped 98.15 % (dense 98.45 %), 1.0 -> 97.60 % (clusters collapse at once).
CENTRIPETAL_STRENGTH = 0.1
# AOFP as in aofp_cnn.py: the paper's CIFAR thresh, relaxed when no layer can
# prune (thresh_growth) so that the target is reachable within the budget.
AOFP_SETTINGS = dict(thresh=0.01, thresh_growth=2.0, iters_per_half=6, measure_every=2,
                     probe_batch_size=32, seed=0)


def load_data(train, test):
    (x_train, y_train), (x_test, y_test) = load_mnist_sample()  # shipped sample, or $KSM_DATA
    return x_train[:train, ..., None], y_train[:train], x_test[:test, ..., None], y_test[:test]


def resnet(widths, blocks, input_shape=(28, 28, 1), classes=10):
    """ResNet-20-style CIFAR network; 1x1 conv + BN projection where the shape changes."""
    layers = keras.layers

    def conv_bn(x, filters, kernel=3, strides=1, relu=True, name=None):
        x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False,
                          name=name)(x)
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
        return layers.ReLU()(x) if relu else x

    inputs = keras.Input(input_shape)
    x = conv_bn(inputs, widths[0], name="stem")
    for stage, width in enumerate(widths):
        for block in range(blocks):
            strides = 2 if stage > 0 and block == 0 else 1
            y = conv_bn(x, width, strides=strides, name=f"s{stage}b{block}_a")
            y = conv_bn(y, width, relu=False, name=f"s{stage}b{block}_b")
            if strides != 1 or x.shape[-1] != width:
                x = conv_bn(x, width, 1, strides, relu=False, name=f"s{stage}b{block}_proj")
            x = layers.ReLU()(layers.Add()([x, y]))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(classes, name="logits")(x), name="resnet")


def _copy(model):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def _compile(model, optimizer, jit_compile=False):
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], jit_compile=jit_compile)
    return model


def _cosine(steps):
    return keras.optimizers.schedules.CosineDecay(LEARNING_RATE, steps)


def _sgd(learning_rate):
    return keras.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True)


def _accuracy(model, x, y):
    logits = model.predict(x, batch_size=500, verbose=0)
    return float(np.mean(np.argmax(logits, axis=1) == y))


def macs(model):
    return ksm.sparsity_report(model).dense_macs


def step_times(widths, blocks, x, y, rounds, steps):
    """ms per XLA train step: (Keras Nesterov SGD, CentripetalSGD, median ratio C-SGD/SGD)."""
    keras.utils.set_random_seed(1)
    reference = resnet(widths, blocks)
    clustered = _copy(reference)
    plan = ksm.ClusterPlan.from_model(clustered, KEEP_RATIO)
    models = [
        _compile(reference, _sgd(LEARNING_RATE), jit_compile=True),
        _compile(clustered, ksm.CentripetalSGD(plan, LEARNING_RATE,
                                               centripetal_strength=CENTRIPETAL_STRENGTH),
                 jit_compile=True),
    ]
    x, y = tf.constant(x), tf.constant(y)
    for model in models:
        for _ in range(3):
            model.train_on_batch(x, y)
    times = [[], []]
    for r in range(rounds):
        for i in ((0, 1) if r % 2 == 0 else (1, 0)):
            start = time.perf_counter()
            for _ in range(steps):
                models[i].train_on_batch(x, y)
            times[i].append((time.perf_counter() - start) / steps * 1e3)
    ratio = statistics.median(c / s for s, c in zip(*times))
    return statistics.median(times[0]), statistics.median(times[1]), ratio


def choose_config(quick):
    name = os.environ.get("KSM_BENCH_CONFIG")
    load = os.getloadavg()[0]
    if name is None:
        name = "quick" if quick else "full"
    return name, load


def run(quick=False, config=None, epochs=None):
    """The table rows; `config` forces a configuration, `epochs` (e1, e2) its budget."""
    name, load = choose_config(quick)
    name = config or name
    cfg = dict(CONFIGS[name])
    if epochs:
        cfg["epochs_1"], cfg["epochs_2"] = epochs
    condition = (f"config={name} widths={cfg['widths']} blocks={cfg['blocks']} "
                 f"epochs={cfg['epochs_1']}+{cfg['epochs_2']} "
                 f"load={load:.1f}/{os.cpu_count()}cores")
    print(f"csgd_resnet: {condition}", flush=True)
    x_train, y_train, x_test, y_test = load_data(cfg["train"], cfg["test"])
    fit = dict(batch_size=cfg["batch"], verbose=0)
    steps_2 = cfg["epochs_2"] * int(np.ceil(len(x_train) / cfg["batch"]))

    # 1. shared dense checkpoint
    print("  dense checkpoint", flush=True)
    keras.utils.set_random_seed(0)
    checkpoint = _compile(resnet(cfg["widths"], cfg["blocks"]), _sgd(LEARNING_RATE))
    checkpoint.fit(x_train, y_train, epochs=cfg["epochs_1"], **fit)

    # 2a. dense continues
    print("  dense, C-SGD, L1 + fine-tune", flush=True)
    keras.utils.set_random_seed(0)
    dense = _compile(_copy(checkpoint), _sgd(_cosine(steps_2)))
    dense.fit(x_train, y_train, epochs=cfg["epochs_2"], **fit)

    # 2b. C-SGD, then strip
    keras.utils.set_random_seed(0)
    clustered = _copy(checkpoint)
    plan = ksm.ClusterPlan.from_model(clustered, KEEP_RATIO)
    optimizer = ksm.CentripetalSGD(plan, _cosine(steps_2),
                                   centripetal_strength=CENTRIPETAL_STRENGTH)
    _compile(clustered, optimizer).fit(x_train, y_train, epochs=cfg["epochs_2"], **fit)
    stripped = ksm.strip(clustered, plan)

    # 2c. L1-norm filter pruning at the same widths, fine-tuned
    keras.utils.set_random_seed(0)
    l1 = _compile(l1_prune(_copy(checkpoint), plan), _sgd(_cosine(steps_2)))
    l1.fit(x_train, y_train, epochs=cfg["epochs_2"], **fit)

    # 2d. AOFP to C-SGD's FLOPs, then strip
    print("  AOFP", flush=True)
    keras.utils.set_random_seed(0)
    searched = _compile(_copy(checkpoint), _sgd(_cosine(steps_2)))
    aofp = ksm.AOFP(macs(stripped) / macs(checkpoint), probe_data=x_train[:512], **AOFP_SETTINGS)
    searched.fit(x_train, y_train, epochs=cfg["epochs_2"], callbacks=[aofp], **fit)
    aofp_stripped = ksm.strip(searched)

    # 3-4. cost, size and latency
    print("  TFLite, step time", flush=True)
    models = {"dense": dense, "csgd_stripped": stripped, "l1_finetuned": l1,
              "aofp_stripped": aofp_stripped}
    strip_errors = {"csgd_stripped": max_relative_error(clustered, stripped, x_test[:32]),
                    "aofp_stripped": max_relative_error(searched, aofp_stripped, x_test[:32])}
    blobs = {k: tflite_bytes(m) for k, m in models.items()}
    latency, speedup = tflite_latency(list(blobs.values()), x_test[:1], cfg["rounds"],
                                      cfg["invokes"])
    # 5. optimizer step time
    sgd_ms, csgd_ms, step_ratio = step_times(cfg["widths"], cfg["blocks"], x_train[: cfg["batch"]],
                                             y_train[: cfg["batch"]], cfg["rounds"], cfg["steps"])

    dense_macs = macs(dense)
    conv = keras.layers.Conv2D
    rows = []
    for i, (key, model) in enumerate(models.items()):
        rows.append({
            "model": key,
            "test_accuracy": _accuracy(model, x_test, y_test),
            "macs": macs(model),
            "flops_removed_pct": 100.0 * (1 - macs(model) / dense_macs),
            "params": model.count_params(),
            "tflite_kb": len(blobs[key]) / 1024,
            "tflite_ms": latency[i],
            "tflite_speedup": speedup[i],
            "train_step_ms_xla": {"dense": sgd_ms, "csgd_stripped": csgd_ms}.get(key),
            "step_time_ratio_csgd_over_sgd": step_ratio if key == "csgd_stripped" else None,
            "cluster_distance_before_merge": (
                optimizer.last_cluster_distance if key == "csgd_stripped" else None),
            "strip_max_rel_error": strip_errors.get(key),
            "conv_widths": "-".join(str(l.filters) for l in model.layers if isinstance(l, conv)),
            "conditions": condition,
        })
    return rows


def _print(rows):
    keys = [k for k in rows[0] if k != "conditions"]
    print(rows[0]["conditions"])
    for row in rows:
        print("  " + ", ".join(
            f"{k}={row[k]:.4g}" if isinstance(row[k], float) else f"{k}={row[k]}"
            for k in keys if row[k] is not None))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--config", choices=sorted(CONFIGS))
    parser.add_argument("--epochs", type=int, nargs=2, metavar=("E1", "E2"),
                        help="epochs of the shared dense phase and of each second phase")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    result = run(args.quick, args.config, args.epochs)
    _print(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
