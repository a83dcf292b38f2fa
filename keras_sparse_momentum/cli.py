"""The `ksm` command: prune, inspect and export Keras models from the shell.

Exit codes (stable, for scripts): 0 success; 1 an expected failure (missing
data or model file, a model that cannot be exported, ...), reported as one
`ksm: error: ...` line on stderr without a traceback; 2 bad usage (argparse).
"""

import argparse
import contextlib
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

DESCRIPTION = """\
keras-sparse-momentum: prune Keras 3 models while they train, then ship them.

  ksm demo                       the whole journey offline on the shipped MNIST
                                 sample: train LeNet-300-100 with Global Sparse
                                 Momentum, strip, report, export TFLite files
                                 and run them on LiteRT's default runtime
  ksm report MODEL.keras         per-layer sparsity, compression and MACs
  ksm export MODEL.keras OUT.tflite [--quantize MODE] [--no-sparse]

Run `ksm COMMAND --help` for the options of each command."""

EPILOG = """\
exit codes: 0 success, 1 failure (message on stderr, no traceback), 2 bad usage.
In Python: `import keras_sparse_momentum as ksm` gives the optimizers, the
callbacks (PruneToRatio, AOFP), strip, sparsity_report and export_tflite."""

DEMO_HELP = """\
Train LeNet-300-100 (784-300-100-10, 266,610 weights) on the 8,000-image MNIST
sample with ksm.GSMMomentum.for_budget(steps, compression=C, learning_rate=0.2,
momentum=0.9, nesterov=True): at each step only the top weights, chosen
globally over all layers (all of them for the first tenth of training,
ceil(N / C) of them once the ramp ends half-way), get gradient updates, so
each layer's sparsity is found automatically; the rest decay to zero and one
exact cut at the end leaves the model C times sparser. Then strip dead units,
print the sparsity report, export TFLite files (dense float32, sparse float32,
dense int8), run each on LiteRT's default runtime (XNNPACK, as apps load
them) and compare sizes, one-thread latency and test accuracy. About a minute
on two CPU cores with the defaults; --quick (to check an install) takes about
20 seconds.

The data is the MNIST sample shipped inside the package
(ksm.datasets.load_mnist_sample); --data or $KSM_DATA use another file."""


class CommandError(Exception):
    """An expected failure: printed as one line, exit code 1."""


def build_parser():
    """The `ksm` argument parser (exposed for tests and docs)."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="ksm", description=DESCRIPTION, epilog=EPILOG, formatter_class=formatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    demo = commands.add_parser(
        "demo", help="train, prune, strip, export and verify LeNet-300-100 offline",
        description=DEMO_HELP, formatter_class=formatter,
    )
    demo.add_argument(
        "--compression", type=_ratio, default=50.0, metavar="C",
        help="keep 1/C of the prunable weights (C >= 1; default 50, i.e. 98%% sparse)",
    )
    demo.add_argument(
        "--epochs", type=_positive_int, default=None, metavar="N",
        help="training epochs of 125 steps (default 40, or 5 of 32 steps with --quick)",
    )
    demo.add_argument(
        "--data", metavar="PATH",
        help="another mnist10k.npz (file or folder; default: the shipped sample)",
    )
    demo.add_argument(
        "--out", metavar="DIR", default="ksm_demo_out",
        help="where model.keras and the .tflite files go (default ./ksm_demo_out)",
    )
    demo.add_argument(
        "--quick", action="store_true",
        help="a smoke run: 2,000 training images, 5 epochs, about 20 seconds",
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.set_defaults(handler=_demo)

    report = commands.add_parser(
        "report", help="print the sparsity report of a saved .keras model",
        description="Per-variable nonzeros, sparsity, and dense vs effective "
        "multiply-accumulates of the prunable weights (Dense/Conv kernels) of a "
        "model saved with model.save('MODEL.keras').",
    )
    report.add_argument("model", metavar="MODEL.keras")
    report.add_argument("--json", action="store_true", help="print JSON instead of a table")
    report.set_defaults(handler=_report)

    export = commands.add_parser(
        "export", help="convert a saved .keras model to a verified TFLite file",
        formatter_class=formatter,
        description="Convert with TensorFlow's TFLite converter, storing mostly-zero\n"
        "weights sparse (only nonzeros and their indices), optionally quantised,\n"
        "then run the file on LiteRT's default runtime (XNNPACK, what apps get from\n"
        "Interpreter(model_path=...)), compare it with Keras and time it against\n"
        "the dense float32 file.\n\n"
        "quantize modes: dynamic = int8 weights, float compute (no data needed);\n"
        "float16 = half-precision weights; int8 = int8 weights and activations,\n"
        "calibrated on --representative samples. XNNPACK cannot run sparse\n"
        "quantised weights, so dynamic and int8 files store their weights dense.",
    )
    export.add_argument("model", metavar="MODEL.keras")
    export.add_argument("output", metavar="OUT.tflite")
    export.add_argument(
        "--quantize", choices=["dynamic", "float16", "int8"], default=None,
        help="quantisation mode (default: none, float32)",
    )
    export.add_argument(
        "--no-sparse", dest="sparse", action="store_false", default=None,
        help="store all weights dense (default: sparse encoding for mostly-zero "
        "weights, except with --quantize dynamic or int8)",
    )
    export.add_argument(
        "--representative", metavar="SAMPLES.npy",
        help="for --quantize int8: a .npy array of model inputs, preprocessed as in training",
    )
    export.set_defaults(handler=_export)
    return parser


def main(argv=None):
    """Entry point of the `ksm` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)  # exits with 2 on bad usage
    try:
        args.handler(args)
    except CommandError as error:
        print(f"ksm: error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _version():
    from keras_sparse_momentum import __version__

    return __version__


def _ratio(text):
    value = float(text)
    if not 1.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"compression must be a number >= 1, got {text}")
    return value


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


@contextlib.contextmanager
def _native_stderr_silenced():
    """Hide the TFLite converter's C++ log lines (they bypass Python's stderr)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _export_quietly(*args, **kwargs):
    from keras_sparse_momentum.export import export_tflite

    try:
        with _native_stderr_silenced():
            return export_tflite(*args, **kwargs)
    except (ValueError, RuntimeError) as error:
        raise CommandError(str(error)) from error


def _load_model(path):
    import keras

    import keras_sparse_momentum  # noqa: F401  registers the package's serializables

    if not pathlib.Path(path).is_file():
        raise CommandError(f"no such model file: {path}")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises many types for unreadable files
        raise CommandError(f"cannot load '{path}' as a Keras model: {error}") from error


def _report(args):
    from keras_sparse_momentum.report import sparsity_report

    model = _load_model(args.model)
    try:
        report = sparsity_report(model)
    except ValueError as error:
        raise CommandError(str(error)) from error
    print(json.dumps(report.to_dict(), indent=2) if args.json else report)


def _export(args):
    import numpy as np

    representative = None
    if args.quantize == "int8":
        if not args.representative:
            raise CommandError(
                "--quantize int8 needs --representative SAMPLES.npy (about 100 model "
                "inputs) to calibrate activations; --quantize dynamic needs no data"
            )
        try:
            representative = np.load(args.representative)
        except (OSError, ValueError) as error:
            raise CommandError(f"cannot read {args.representative}: {error}") from error
    from keras_sparse_momentum.export import XNNPACK_REJECTS_SPARSE

    sparse = args.sparse
    if sparse is None:
        sparse = args.quantize not in XNNPACK_REJECTS_SPARSE
        if not sparse:
            print(
                f"--quantize {args.quantize}: weights stored dense (LiteRT's default "
                "runtime cannot run sparse quantised weights)"
            )
    model = _load_model(args.model)
    result = _export_quietly(
        model, args.output, sparse=sparse, quantize=args.quantize,
        representative_data=representative,
    )
    print(result)


def lenet_300_100(name="lenet_300_100"):
    """LeNet-300-100 for 28x28 images, logits out (the GSM paper's MNIST model)."""
    import keras

    inputs = keras.Input((28, 28), name="image")
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(300, activation="relu", name="fc1")(x)
    x = keras.layers.Dense(100, activation="relu", name="fc2")(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def _step(number, total, text):
    print(f"\n[{number}/{total}] {text}", flush=True)


def _demo(args):
    import keras

    import keras_sparse_momentum as ksm
    from keras_sparse_momentum.datasets import DataNotFoundError, load_mnist_sample

    started = time.perf_counter()
    epochs = args.epochs or (5 if args.quick else 40)
    out = pathlib.Path(args.out)
    steps_total = 6

    _step(1, steps_total, "Loading the MNIST sample")
    try:
        (x_train, y_train), (x_test, y_test) = load_mnist_sample(args.data)
    except (DataNotFoundError, ValueError) as error:
        raise CommandError(str(error)) from error
    if args.quick:
        x_train, y_train = x_train[:2000], y_train[:2000]
    print(f"{len(x_train):,} training and {len(x_test):,} test images")

    batch_size = 64
    steps = epochs * -(-len(x_train) // batch_size)
    keras.utils.set_random_seed(args.seed)
    model = lenet_300_100()
    optimizer = ksm.GSMMomentum.for_budget(
        steps, compression=args.compression, learning_rate=0.2, momentum=0.9, nesterov=True
    )
    _step(
        2, steps_total,
        f"Training LeNet-300-100 for {epochs} epochs with\n    "
        + optimizer.suggested_call(steps),
    )
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(
        x_train, y_train, batch_size=batch_size, epochs=epochs,
        verbose=1 if sys.stdout.isatty() else 2,
    )
    keras_accuracy = model.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"]
    print(f"Keras test accuracy: {keras_accuracy:.2%}")

    _step(3, steps_total, "Sparsity found by GSM, then stripping dead units")
    report = ksm.sparsity_report(model)
    print(report)
    slim = ksm.strip(model)
    print(
        "strip (same function, physically smaller): "
        + ", ".join(
            f"{a.name} {a.units} -> {b.units} units"
            for a, b in zip(model.layers, slim.layers)
            if isinstance(a, keras.layers.Dense)
        )
        + f"; parameters {model.count_params():,} -> {slim.count_params():,}"
    )
    out.mkdir(parents=True, exist_ok=True)
    slim.save(out / "model.keras")

    _step(
        4, steps_total,
        "Exporting the stripped model to TFLite, verified on LiteRT's default runtime",
    )
    files = {
        "dense": _export_quietly(slim, out / "model_dense.tflite", sparse=False),
        "sparse": _export_quietly(slim, out / "model_sparse.tflite", sparse=True),
        "int8": _export_quietly(
            slim, out / "model_int8.tflite", sparse=False, quantize="int8",
            representative_data=x_train[:100],
        ),
    }
    labels = {"dense": "dense float32", "sparse": "sparse float32", "int8": "dense int8"}
    dense = files["dense"]
    print(f"{'file':15s} {'bytes':>10s} {'gzipped':>10s} {'us/sample':>10s}  max |TFLite - Keras|")
    for key, result in files.items():
        print(
            f"{labels[key]:15s} {result.size_bytes:>10,} {result.gzip_bytes:>10,} "
            f"{1e3 * result.latency_ms:>10.1f}  {result.max_abs_error:.1e}"
        )
    print(
        f"(one thread, {dense.runtime}; latency is a quick figure, each file timed "
        "against the dense one)"
    )

    _step(5, steps_total, "Test accuracy of the TFLite files")
    accuracies = {
        key: _tflite_accuracy(files[key].path, x_test, y_test) for key in ("sparse", "int8")
    }
    for key, accuracy in accuracies.items():
        print(f"{labels[key]:15s} {accuracy:.2%}")

    _step(6, steps_total, "Summary")
    sparse, int8 = files["sparse"], files["int8"]
    print(
        f"compression {report.compression:.1f}x over the {report.prunable:,} kernel weights "
        f"({report.nonzeros:,} nonzero); Keras accuracy {keras_accuracy:.2%}, "
        f"sparse TFLite {accuracies['sparse']:.2%}, dense int8 {accuracies['int8']:.2%}\n"
        f"dense float32 file of the stripped model {dense.size_bytes:,} bytes -> sparse "
        f"float32 {sparse.size_bytes:,} ({dense.size_bytes / sparse.size_bytes:.1f}x smaller, "
        f"{1e3 * sparse.latency_ms:.1f} us against {1e3 * sparse.dense_latency_ms:.1f} us), "
        f"dense int8 {int8.size_bytes:,} ({dense.size_bytes / int8.size_bytes:.1f}x smaller, "
        f"{1e3 * int8.latency_ms:.1f} us against {1e3 * int8.dense_latency_ms:.1f} us)\n"
        f"files in {out}/ (each runs with a plain Interpreter(model_path=...)); "
        f"took {time.perf_counter() - started:.0f} s"
    )
    # One line a script can parse.
    print(
        "RESULT " + json.dumps(
            {
                "compression": round(report.compression, 2),
                "keras_accuracy": round(float(keras_accuracy), 4),
                "tflite_accuracy": round(accuracies["sparse"], 4),
                "int8_accuracy": round(accuracies["int8"], 4),
                "dense_tflite_bytes": dense.size_bytes,
                "sparse_tflite_bytes": sparse.size_bytes,
                "int8_tflite_bytes": int8.size_bytes,
                "dense_us": round(1e3 * dense.latency_ms, 2),
                "sparse_us": round(1e3 * sparse.latency_ms, 2),
                "sparse_vs_dense_us": round(1e3 * sparse.dense_latency_ms, 2),
                "int8_us": round(1e3 * int8.latency_ms, 2),
                "int8_vs_dense_us": round(1e3 * int8.dense_latency_ms, 2),
                "files": sorted(str(p) for p in out.glob("*.tflite")),
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
    )


def _tflite_accuracy(path, x, y):
    """Top-1 accuracy of a classifier file, run with LiteRT."""
    import numpy as np

    from keras_sparse_momentum.export import tflite_predict

    return float(np.mean(np.argmax(tflite_predict(path, x), axis=-1) == y))


if __name__ == "__main__":
    sys.exit(main())
