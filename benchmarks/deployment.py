"""Deployment: a GSM-pruned LeNet-300-100 as TFLite in every export mode, and `ksm demo`.

1. Files (also `python benchmarks/tflite_export.py`): LeNet-300-100 trained with
   `GSMMomentum.for_budget` at `COMPRESSION` on the MNIST sample, then the
   *unstripped* model exported in every mode of `MODES` through the public
   `ksm.export_tflite`. Stored per file: every field of the `ExportResult` it
   returns (whatever this build's export reports: size, gzip size, error against
   Keras, runtime, ...), the size relative to the dense float32 file, and the
   test accuracy of the file run with LiteRT; a mode the export refuses or
   cannot verify is stored with its message.
2. `ksm demo`, run as a user runs it (a subprocess of the installed command
   line, its own defaults unless quick): wall time, exit code, and the fields
   of the `RESULT {json}` line it prints when it prints one.
"""

import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NAME = "deployment"
TITLE = "Deployment: TFLite files and `ksm demo`"
README_TITLE = "Deployment"
COMPRESSION, LEARNING_RATE, BATCH = 10, 0.2, 64
MODES = (
    ("dense float32", dict(sparse=False)),
    ("sparse float32", dict(sparse=True)),
    ("dense float16", dict(sparse=False, quantize="float16")),
    ("sparse float16", dict(sparse=True, quantize="float16")),
    ("sparse dynamic", dict(sparse=True, quantize="dynamic")),
    ("dense int8", dict(sparse=False, quantize="int8")),
    ("sparse int8", dict(sparse=True, quantize="int8")),
)
FULL = dict(epochs=20, train_limit=None, test_limit=None, modes=[m for m, _ in MODES],
            demo=[])
QUICK = dict(epochs=1, train_limit=1024, test_limit=500,
             modes=["dense float32", "sparse float32", "sparse int8"],
             demo=["--quick", "--epochs", "1"])
REPO = Path(__file__).resolve().parents[1]


def train(epochs, train_limit=None, test_limit=None, compression=COMPRESSION):
    """(model, Keras test accuracy, seconds, arrays) of the GSM-pruned LeNet-300-100."""
    import keras

    import keras_sparse_momentum as ksm
    from benchmarks import data, models

    x, y, x_test, y_test = data.load_mnist(train_limit, test_limit)
    keras.utils.set_random_seed(0)
    model = models.build(keras, "lenet300")
    steps = epochs * math.ceil(len(x) / BATCH)
    model.compile(
        optimizer=ksm.GSMMomentum.for_budget(steps, compression=compression,
                                             learning_rate=LEARNING_RATE, momentum=0.9,
                                             nesterov=True),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"])
    started = time.perf_counter()
    model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0)
    seconds = time.perf_counter() - started
    accuracy = float(model.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"])
    return model, accuracy, seconds, (x, y, x_test, y_test)


def _plain(value):
    """ExportResult fields as JSON: numbers and strings kept, lists counted."""
    if isinstance(value, (int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return len(value)
    return str(value)


def export_files(model, arrays, modes):
    """One dict per mode: the ExportResult's fields, size vs dense float32, LiteRT accuracy."""
    import numpy as np

    import keras_sparse_momentum as ksm
    from keras_sparse_momentum.export import tflite_predict

    x, _, x_test, y_test = arrays
    options = dict(MODES)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for mode in modes:
            kwargs = dict(options[mode])
            if kwargs.get("quantize") == "int8":
                kwargs["representative_data"] = x[:100]
            try:
                result = ksm.export_tflite(model, Path(folder) / f"{mode.replace(' ', '_')}.tflite",
                                           sample_inputs=x_test[:32], **kwargs)
            except (ValueError, RuntimeError) as error:  # refused, or failed verification
                rows.append({"mode": mode, "refused": str(error).splitlines()[0]})
                continue
            fields = {k: _plain(v) for k, v in dataclasses.asdict(result).items() if k != "path"}
            predicted = np.argmax(tflite_predict(result.path, x_test), axis=-1)
            rows.append({"mode": mode, **fields,
                         "tflite_accuracy": float(np.mean(predicted == y_test))})
    dense = next((r for r in rows if r["mode"] == "dense float32" and "size_bytes" in r), None)
    for row in rows:
        if dense and "size_bytes" in row:
            row["x_dense"] = row["size_bytes"] / dense["size_bytes"]
    return rows


def run_demo(arguments):
    """`ksm demo` in a subprocess: seconds, exit code and its RESULT fields (or None)."""
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "keras_sparse_momentum.cli", "demo", "--out", folder,
                   *arguments]
        from benchmarks.data import data_path

        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KSM_DATA=str(data_path()))
        started = time.perf_counter()
        proc = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
    found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    return {"arguments": " ".join(arguments) or "(defaults)", "seconds": seconds,
            "exit_code": proc.returncode,
            "result": json.loads(found[-1][len("RESULT "):]) if found else None}


def run(opts, previous=None):
    settings = QUICK if opts.quick else FULL
    model, accuracy, seconds, arrays = train(settings["epochs"], settings["train_limit"],
                                             settings["test_limit"])
    import keras_sparse_momentum as ksm

    report = ksm.sparsity_report(model)
    print(f"  LeNet-300-100 at {report.compression:.1f}x: Keras {100 * accuracy:.2f} %", flush=True)
    files = export_files(model, arrays, settings["modes"])
    for row in files:
        print(f"  {row['mode']:15s} " + (f"{row['size_bytes']:,} bytes" if "size_bytes" in row
                                         else f"refused: {row['refused']}"), flush=True)
    demo = run_demo(settings["demo"])
    print(f"  ksm demo: exit {demo['exit_code']}, {demo['seconds']:.0f} s", flush=True)
    return {
        "model": {"model": "lenet300", "epochs": settings["epochs"],
                  "compression": report.compression, "keras_accuracy": accuracy,
                  "train_seconds": seconds, "images": [len(arrays[0]), len(arrays[2])],
                  "learning_rate": LEARNING_RATE},
        "files": files,
        "demo": [demo],
    }


def _number(key, value):
    if isinstance(value, (list, tuple)):  # e.g. the demo's files: their paths were temporary
        return f"{len(value)}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "" if value is None else str(value)
    if "accuracy" in key:
        return f"{100 * value:.2f} %"
    if "error" in key:
        return f"{value:.1e}"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.3f}"


def files_table(files):
    columns = [k for k in dict.fromkeys(k for r in files for k in r)
               if k not in ("mode", "refused", "commit", "dirty", "stale")]
    lines = ["| file | " + " | ".join(columns) + " | refused |",
             "|---|" + "---|" * (len(columns) + 1)]
    for row in files:
        lines.append(f"| {row['mode']} | " + " | ".join(_number(c, row.get(c)) for c in columns)
                     + f" | {row.get('refused', '')} |")
    return lines


def _model_line(m):
    return (f"LeNet-300-100 trained {m['epochs']} epochs on {m['images'][0]:,} images with "
            f"`GSMMomentum.for_budget` (peak lr {m['learning_rate']}), "
            f"{m['compression']:.1f}x over its kernels, Keras test accuracy "
            f"{100 * m['keras_accuracy']:.2f} % on {m['images'][1]:,} images; the unstripped "
            "model exported in every mode:")


def _demo_line(demo):
    text = (f"`ksm demo {demo['arguments']}`: exit code {demo['exit_code']}, "
            f"{demo['seconds']:.0f} s")
    if demo["result"]:
        text += "; it reports " + ", ".join(
            f"{k.replace('_', ' ')} {_number(k, v)}" for k, v in demo["result"].items())
    else:
        text += " (this build's demo prints no RESULT line)"
    return text + "."


def render(results, out):
    m = results["model"]
    lines = [_model_line(m), ""] + files_table(results["files"])
    stale = sorted({r["stale"] for r in results["files"] + results["demo"] if r.get("stale")})
    lines += ["", "'x_dense' is the file's size over the dense float32 file's."]
    lines += [""] + [_demo_line(d) for d in results["demo"]]
    if stale:
        lines += ["", "Stale: " + "; ".join(stale) + "."]
    return "\n".join(lines)


def readme(results):
    files = {r["mode"]: r for r in results["files"]}
    m = results["model"]
    text = [f"**{README_TITLE}** (`--only deployment`): " + _model_line(m)[:-1] + "."]
    sentences, refused = [], {}
    for mode, row in files.items():
        if "size_bytes" in row:
            sentences.append(f"{mode} {row['size_bytes'] / 1024:,.0f} KB ({row['x_dense']:.3f}x), "
                             f"max error {row['max_abs_error']:.1e}, "
                             f"{100 * row['tflite_accuracy']:.2f} %")
        else:  # the export's own message, its first sentence, once per message
            reason = row["refused"].removeprefix("export_tflite: ").split(". ")[0]
            refused.setdefault(reason, []).append(mode)
    text.append("; ".join(sentences) + ".")
    text += [f"Refused: {' and '.join(modes)} ({reason})." for reason, modes in refused.items()]
    text += [_demo_line(d) for d in results["demo"]]
    return " ".join(text)
