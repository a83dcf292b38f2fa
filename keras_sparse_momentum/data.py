"""Deprecated: use `keras_sparse_momentum.datasets` (`ksm.datasets.load_mnist_sample`).

`load_mnist10k` and `find_mnist10k` remain as aliases that warn. They no
longer search `shared/data/` folders: the sample ships inside the package.
"""

import warnings

from keras_sparse_momentum.datasets import (  # noqa: F401  re-exported names
    ENV_VAR,
    FILENAME,
    KEYS,
    DataNotFoundError,
    load_mnist_sample,
    mnist_sample_path,
)


def _deprecated(old, new):
    warnings.warn(
        f"keras_sparse_momentum.data.{old} is deprecated; use "
        f"keras_sparse_momentum.datasets.{new} (`ksm.datasets.{new}`).",
        DeprecationWarning,
        stacklevel=3,
    )


def load_mnist10k(path=None):
    """Deprecated alias of `ksm.datasets.load_mnist_sample` (same arguments and return)."""
    _deprecated("load_mnist10k", "load_mnist_sample")
    return load_mnist_sample(path)


def find_mnist10k(path=None):
    """Deprecated alias of `ksm.datasets.mnist_sample_path`."""
    _deprecated("find_mnist10k", "mnist_sample_path")
    return mnist_sample_path(path)
