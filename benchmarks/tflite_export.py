"""TFLite sizes, errors and accuracy of a GSM-pruned LeNet-300-100, dense vs sparse, side by side.

    PYTHONPATH=. python benchmarks/tflite_export.py [--compression 10] [--epochs 20]

Trains LeNet-300-100 on the MNIST sample with GSMMomentum (compression 10 = 90 %
sparse kernels), then exports the *unstripped* model in every mode LiteRT's
default runtime (XNNPACK) runs and prints, per file: bytes, ratio to the dense
float file, gzipped bytes, one-thread latency against the dense float32 file's
(export_tflite's quick figure), max |TFLite - Keras| on 32 test images, and test
accuracy run on that runtime. Sparse + dynamic / int8 are refused by
export_tflite (XNNPACK cannot run sparse quantised weights).
"""

import argparse
import os
import pathlib
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np

import keras_sparse_momentum as ksm
from keras_sparse_momentum.cli import lenet_300_100
from keras_sparse_momentum.datasets import load_mnist_sample
from keras_sparse_momentum.export import tflite_predict

MODES = [
    ("dense float32", dict(sparse=False)),
    ("sparse float32", dict(sparse=True)),
    ("dense float16", dict(sparse=False, quantize="float16")),
    ("sparse float16", dict(sparse=True, quantize="float16")),
    ("dense dynamic", dict(sparse=False, quantize="dynamic")),
    ("dense int8", dict(sparse=False, quantize="int8")),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compression", type=float, default=10.0)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--data", default=None)
    args = parser.parse_args()

    (x_train, y_train), (x_test, y_test) = load_mnist_sample(args.data)
    keras.utils.set_random_seed(0)
    model = lenet_300_100()
    steps = args.epochs * -(-len(x_train) // 64)
    model.compile(
        optimizer=ksm.GSMMomentum.for_budget(
            steps, compression=args.compression, learning_rate=0.2, momentum=0.9, nesterov=True
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    started = time.perf_counter()
    model.fit(x_train, y_train, batch_size=64, epochs=args.epochs, verbose=0)
    trained = time.perf_counter() - started
    accuracy = model.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"]
    report = ksm.sparsity_report(model)
    print(
        f"LeNet-300-100, GSM compression {report.compression:.1f}x "
        f"({report.total_sparsity:.1%} sparse kernels), {args.epochs} epochs in "
        f"{trained:.0f} s, Keras test accuracy {accuracy:.2%}"
    )

    header = (
        f"{'file':16s} {'bytes':>10s} {'x dense':>8s} {'gzipped':>10s} {'us':>7s} "
        f"{'dense us':>8s} {'max abs err':>12s} {'accuracy':>9s}"
    )
    print(header + "\n" + "-" * len(header))
    dense_bytes = None
    with tempfile.TemporaryDirectory() as folder:
        for label, options in MODES:
            if options.get("quantize") == "int8":
                options = dict(options, representative_data=x_train[:100])
            try:
                result = ksm.export_tflite(
                    model, pathlib.Path(folder) / f"{label.replace(' ', '_')}.tflite",
                    sample_inputs=x_test[:32], **options,
                )
            except RuntimeError as error:  # e.g. NaN from sparse float16 (a TFLite bug)
                print(f"{label:16s} failed verification: {str(error)[:90]}...")
                continue
            dense_bytes = dense_bytes or result.size_bytes
            predicted = np.argmax(tflite_predict(result.path, x_test), axis=-1)
            print(
                f"{label:16s} {result.size_bytes:>10,} {result.size_bytes / dense_bytes:>8.3f} "
                f"{result.gzip_bytes:>10,} {1e3 * result.latency_ms:>7.1f} "
                f"{1e3 * result.dense_latency_ms:>8.1f} {result.max_abs_error:>12.2e} "
                f"{np.mean(predicted == y_test):>9.2%}"
            )


if __name__ == "__main__":
    main()
