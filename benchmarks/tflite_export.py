"""TFLite sizes, errors and accuracy of a GSM-pruned LeNet-300-100, dense vs sparse, side by side.

    PYTHONPATH=. python benchmarks/tflite_export.py [--compression 10] [--epochs 20]

Prints the table of the `deployment` section (benchmarks/deployment.py, which
`python -m benchmarks.run --only deployment` stores and renders) without
storing it: LeNet-300-100 trained with GSMMomentum, then the *unstripped*
model exported in every mode, per file what `ksm.export_tflite` reports, the
size relative to the dense float32 file and the test accuracy run with LiteRT.
"""

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import deployment  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compression", type=float, default=deployment.COMPRESSION)
    parser.add_argument("--epochs", type=int, default=deployment.FULL["epochs"])
    args = parser.parse_args()
    model, accuracy, seconds, arrays = deployment.train(args.epochs, compression=args.compression)
    print(f"{args.epochs} epochs in {seconds:.0f} s, Keras test accuracy {accuracy:.2%}")
    files = deployment.export_files(model, arrays, [mode for mode, _ in deployment.MODES])
    print("\n".join(deployment.files_table(files)))


if __name__ == "__main__":
    main()
