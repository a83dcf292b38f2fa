"""The MNIST-sample locator: explicit path, KSM_DATA, then shared/data in parents."""

import numpy as np
import pytest

from keras_sparse_momentum import data


def write_sample(path, n=4):
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.full((n, 28, 28), 255, "uint8")
    y = np.arange(n, dtype="uint8")
    np.savez(path, x_train=x, y_train=y, x_test=x[:2], y_test=y[:2])
    return path


def test_search_order(tmp_path, monkeypatch):
    explicit = write_sample(tmp_path / "explicit" / "mnist10k.npz")
    from_env = write_sample(tmp_path / "env" / "mnist10k.npz")
    in_parent = write_sample(tmp_path / "shared" / "data" / "mnist10k.npz")
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    monkeypatch.setenv(data.ENV_VAR, str(from_env.parent))  # a folder works too
    assert data.find_mnist10k(explicit) == explicit
    assert data.find_mnist10k() == from_env
    monkeypatch.delenv(data.ENV_VAR)
    assert data.find_mnist10k() == in_parent


def test_load_scales_to_unit_interval(tmp_path):
    (x_train, y_train), (x_test, y_test) = data.load_mnist10k(write_sample(tmp_path / "m.npz"))
    assert x_train.dtype == np.float32 and float(x_train.max()) == 1.0
    assert y_train.dtype == np.int32 and list(y_train) == [0, 1, 2, 3]
    assert x_test.shape == (2, 28, 28) and y_test.shape == (2,)


def test_missing_file_error_says_where_it_looked(tmp_path):
    with pytest.raises(data.DataNotFoundError, match="KSM_DATA") as error:
        data.load_mnist10k(tmp_path / "nope.npz")
    assert str(tmp_path / "nope.npz") in str(error.value)


def test_missing_arrays_are_named(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, x_train=np.zeros((1, 28, 28)))
    with pytest.raises(ValueError, match="y_train"):
        data.load_mnist10k(path)
