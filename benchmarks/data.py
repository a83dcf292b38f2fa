"""The benchmark data set: the 10k-image MNIST sample shipped inside the package.

`ksm.datasets` decides which file (`KSM_DATA` if set, else the copy shipped in
`keras_sparse_momentum/datasets/`). Its module needs only numpy and is loaded
here by file, without importing the package (which imports Keras 3), so the
tfmot workers (tf_keras, legacy mode) share this loader.
"""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "_ksm_datasets", REPO / "keras_sparse_momentum" / "datasets" / "__init__.py"
)
datasets = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(datasets)


def data_path():
    """The mnist10k.npz file the benchmarks read (for workers that load it by path)."""
    return datasets.mnist_sample_path()


def load_mnist(train_limit=None, test_limit=None):
    """(x_train, y_train, x_test, y_test); images float32 in [0, 1], shape (n, 28, 28, 1)."""
    (x_train, y_train), (x_test, y_test) = datasets.load_mnist_sample()
    return (x_train[:train_limit, ..., None], y_train[:train_limit],
            x_test[:test_limit, ..., None], y_test[:test_limit])
