"""C-SGD on a small ViT (mnist10k): FFN units and attention heads at keep_ratio 0.5.

Run: `python benchmarks/csgd_vit.py [--quick] [--json FILE]`
or `run(quick) -> list[dict]` (one dict per table row, the same keys in every row).

Protocol (every number is measured side by side in one process):

1. A small ViT (`architectures.vit_block`: 7x7 patches of the 28x28 digits,
   `blocks` pre-norm transformer blocks of `heads` MultiHeadAttention heads
   and a GELU FFN of twice the width) trained `epochs_1` epochs with Adam:
   the shared checkpoint.
2. From that checkpoint, `epochs_2` more epochs of Keras Nesterov SGD (cosine
   learning rate) for
   - *dense*: the reference;
   - *C-SGD*: `ClusterPlan(keep_ratio=0.5, layers=[every FFN hidden layer,
     every '<attention>/heads'])` (k-means on the trained units and heads),
     `CentripetalSGD` with the same schedule, then `ksm.strip(model, plan)`;
   - *L1 + fine-tune*: the same FFN units and heads pruned to the same
     widths by L1 norm (`benchmarks/l1_filter_pruning.py`: a head's norm is
     that of its query, key and value slices), fine-tuned.
3. MACs per example (`sparsity_report`), TFLite float size and LiteRT
   latency (one thread, batch 1, interleaved rounds; the speed-up is the
   median per-round ratio against dense).
"""

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_sparse_momentum as ksm  # noqa: E402
from keras_sparse_momentum.surgery.strip import max_relative_error  # noqa: E402

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.architectures import vit_block  # noqa: E402
from benchmarks.csgd_resnet import (  # noqa: E402
    _accuracy, _compile, _copy, _sgd, load_data, macs)
from benchmarks.l1_filter_pruning import l1_prune  # noqa: E402
from benchmarks.tflite_timing import tflite_bytes, tflite_latency  # noqa: E402

CONFIGS = {
    "quick": dict(width=16, heads=2, blocks=1, train=512, test=256, epochs_1=1, epochs_2=1,
                  batch=64, rounds=3, invokes=10),
    "full": dict(width=64, heads=4, blocks=2, train=8000, test=2000, epochs_1=6, epochs_2=4,
                 batch=64, rounds=15, invokes=300),
}
KEEP_RATIO = 0.5
ADAM_RATE = 1e-3
LEARNING_RATE = 0.02
CENTRIPETAL_STRENGTH = 0.1


def _cosine(steps):
    return keras.optimizers.schedules.CosineDecay(LEARNING_RATE, steps)


def _widths(model):
    """'heads/FFN units' of every block, e.g. '4/128 4/128'."""
    attention = [l for l in model.layers if isinstance(l, keras.layers.MultiHeadAttention)]
    ffn = [l for l in model.layers if l.name.startswith("ffn_hidden")]
    return " ".join(f"{a.num_heads}/{f.units}" for a, f in zip(attention, ffn))


def run(quick=False):
    name = "quick" if quick else "full"
    cfg = CONFIGS[name]
    load = os.getloadavg()[0]
    condition = (f"config={name} width={cfg['width']} heads={cfg['heads']} "
                 f"blocks={cfg['blocks']} epochs={cfg['epochs_1']}+{cfg['epochs_2']} "
                 f"load={load:.1f}/{os.cpu_count()}cores")
    print(f"csgd_vit: {condition}", flush=True)
    x_train, y_train, x_test, y_test = load_data(cfg["train"], cfg["test"])
    fit = dict(batch_size=cfg["batch"], verbose=0)
    steps_2 = cfg["epochs_2"] * int(np.ceil(len(x_train) / cfg["batch"]))

    print("  dense checkpoint", flush=True)
    keras.utils.set_random_seed(0)
    checkpoint = _compile(vit_block(28, 7, cfg["width"], cfg["heads"], channels=1,
                                    blocks=cfg["blocks"]), keras.optimizers.Adam(ADAM_RATE))
    checkpoint.fit(x_train, y_train, epochs=cfg["epochs_1"], **fit)

    print("  dense, C-SGD, L1 + fine-tune", flush=True)
    keras.utils.set_random_seed(0)
    dense = _compile(_copy(checkpoint), _sgd(_cosine(steps_2)))
    dense.fit(x_train, y_train, epochs=cfg["epochs_2"], **fit)

    keras.utils.set_random_seed(0)
    clustered = _copy(checkpoint)
    units = [l.name for l in clustered.layers if l.name.startswith("ffn_hidden")]
    heads = [f"{l.name}/heads" for l in clustered.layers
             if isinstance(l, keras.layers.MultiHeadAttention)]
    plan = ksm.ClusterPlan.from_model(clustered, KEEP_RATIO, layers=units + heads)
    optimizer = ksm.CentripetalSGD(plan, _cosine(steps_2), momentum=0.9,
                                   centripetal_strength=CENTRIPETAL_STRENGTH)
    _compile(clustered, optimizer).fit(x_train, y_train, epochs=cfg["epochs_2"], **fit)
    stripped = ksm.strip(clustered, plan)

    keras.utils.set_random_seed(0)
    l1 = _compile(l1_prune(_copy(checkpoint), plan), _sgd(_cosine(steps_2)))
    l1.fit(x_train, y_train, epochs=cfg["epochs_2"], **fit)

    print("  TFLite", flush=True)
    models = {"dense": dense, "csgd_stripped": stripped, "l1_finetuned": l1}
    blobs = {k: tflite_bytes(m) for k, m in models.items()}
    latency, speedup = tflite_latency(list(blobs.values()), x_test[:1], cfg["rounds"],
                                      cfg["invokes"])
    dense_macs = macs(dense)
    rows = []
    for i, (key, model) in enumerate(models.items()):
        rows.append({
            "model": key,
            "test_accuracy": _accuracy(model, x_test, y_test),
            "heads_ffn_units": _widths(model),
            "macs": macs(model),
            "flops_removed_pct": 100.0 * (1 - macs(model) / dense_macs),
            "params": model.count_params(),
            "tflite_kb": len(blobs[key]) / 1024,
            "tflite_ms": latency[i],
            "tflite_speedup": speedup[i],
            "strip_max_rel_error": (max_relative_error(clustered, stripped, x_test[:32])
                                    if key == "csgd_stripped" else None),
            "conditions": condition,
        })
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    result = run(args.quick)
    for row in result:
        print(row)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
