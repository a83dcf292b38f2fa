"""The benchmark data set: the 10k-image MNIST subset shipped with the project.

Location: the `KSM_DATA` environment variable, else `../shared/data/mnist10k.npz`
next to the repository (or next to any parent folder of it, for git worktrees
kept in a sub-folder). Pure numpy, so the tfmot worker (tf_keras) shares it.
"""

import os
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PATH = REPO / ".." / "shared" / "data" / "mnist10k.npz"


def data_path():
    if "KSM_DATA" in os.environ:
        return Path(os.environ["KSM_DATA"])
    for folder in REPO.parents:
        candidate = folder / "shared" / "data" / "mnist10k.npz"
        if candidate.exists():
            return candidate
    return DEFAULT_PATH


def load_mnist(train_limit=None, test_limit=None):
    """(x_train, y_train, x_test, y_test); images float32 in [0, 1], shape (n, 28, 28, 1)."""
    path = data_path()
    if not path.exists():
        raise FileNotFoundError(
            f"MNIST subset not found at {path}: set KSM_DATA to the mnist10k.npz file."
        )
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    x_train = (arrays["x_train"][:train_limit].astype("float32") / 255.0)[..., None]
    x_test = (arrays["x_test"][:test_limit].astype("float32") / 255.0)[..., None]
    return (
        x_train,
        arrays["y_train"][:train_limit].astype("int32"),
        x_test,
        arrays["y_test"][:test_limit].astype("int32"),
    )
