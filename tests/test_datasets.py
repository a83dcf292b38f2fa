"""ksm.datasets: the MNIST sample shipped inside the package (and inside the wheel)."""

import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import keras_sparse_momentum as ksm
from keras_sparse_momentum import data, datasets

ROOT = pathlib.Path(__file__).resolve().parents[1]


def write_sample(path, n=4):
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.full((n, 28, 28), 255, "uint8")
    y = np.arange(n, dtype="uint8")
    np.savez(path, x_train=x, y_train=y, x_test=x[:2], y_test=y[:2])
    return path


def test_the_shipped_sample_loads_with_no_file_beside_it(tmp_path, monkeypatch):
    monkeypatch.delenv(datasets.ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    assert datasets.mnist_sample_path() == datasets.SHIPPED
    assert datasets.SHIPPED.parent == pathlib.Path(datasets.__file__).resolve().parent
    (x_train, y_train), (x_test, y_test) = ksm.datasets.load_mnist_sample()
    assert x_train.shape == (8000, 28, 28) and x_test.shape == (2000, 28, 28)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int32
    assert float(x_train.min()) == 0.0 and float(x_train.max()) == 1.0
    assert sorted(set(y_train.tolist())) == list(range(10)) and y_test.shape == (2000,)
    assert np.bincount(y_train).tolist() == [784, 882, 805, 828, 789, 679, 811, 882, 755, 785]
    assert np.bincount(y_test).tolist() == [217, 245, 186, 204, 191, 184, 203, 188, 189, 193]
    licence = (datasets.SHIPPED.parent / "mnist10k_LICENSE.md").read_text()
    for credit in ("Yann LeCun", "Corinna Cortes", "Burges", "CC BY-SA 3.0", "MIT", "Cazala"):
        assert credit in licence


def test_path_then_ksm_data_then_the_package_and_no_parent_folders(tmp_path, monkeypatch):
    explicit = write_sample(tmp_path / "explicit" / "mnist10k.npz")
    from_env = write_sample(tmp_path / "env" / "mnist10k.npz")
    write_sample(tmp_path / "shared" / "data" / "mnist10k.npz")  # the old search: ignored
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    monkeypatch.setenv(datasets.ENV_VAR, str(from_env.parent))  # a folder works too
    assert datasets.mnist_sample_path(explicit) == explicit
    assert datasets.mnist_sample_path(explicit.parent) == explicit
    assert datasets.mnist_sample_path() == from_env
    assert datasets.load_mnist_sample()[0][0].shape == (4, 28, 28)
    monkeypatch.delenv(datasets.ENV_VAR)
    assert datasets.mnist_sample_path() == datasets.SHIPPED


def test_a_missing_override_says_where_it_came_from(tmp_path, monkeypatch):
    monkeypatch.delenv(datasets.ENV_VAR, raising=False)
    with pytest.raises(datasets.DataNotFoundError, match="--data") as error:
        datasets.load_mnist_sample(tmp_path / "nope.npz")
    assert str(tmp_path / "nope.npz") in str(error.value)
    monkeypatch.setenv(datasets.ENV_VAR, str(tmp_path / "gone.npz"))
    with pytest.raises(datasets.DataNotFoundError, match=r"\$KSM_DATA") as error:
        datasets.load_mnist_sample()
    assert "shared" not in str(error.value) and "unset KSM_DATA" in str(error.value)


def test_missing_arrays_are_named(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, x_train=np.zeros((1, 28, 28)))
    with pytest.raises(ValueError, match="y_train"):
        datasets.load_mnist_sample(path)


def test_the_old_names_still_work_and_warn(tmp_path):
    sample = write_sample(tmp_path / "m.npz")
    with pytest.deprecated_call(match="load_mnist_sample"):
        (x_train, y_train), _ = data.load_mnist10k(sample)
    assert x_train.dtype == np.float32 and float(x_train.max()) == 1.0
    assert y_train.dtype == np.int32 and list(y_train) == [0, 1, 2, 3]
    with pytest.deprecated_call(match="mnist_sample_path"):
        assert data.find_mnist10k(sample) == sample


def test_the_built_wheel_contains_the_sample_and_its_licence(tmp_path):
    """Build the wheel from a copy of the sources with the venv's setuptools (no network,
    no build isolation), then read the archive."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "keras_sparse_momentum", source / "keras_sparse_momentum",
                    ignore=shutil.ignore_patterns("__pycache__"))
    completed = subprocess.run(
        [sys.executable, "-c",
         "import sys; from setuptools import build_meta; "
         "print(build_meta.build_wheel(sys.argv[1]))", str(tmp_path / "dist")],
        cwd=source, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHONPATH=""),
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    wheel = tmp_path / "dist" / completed.stdout.strip().splitlines()[-1]
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert "keras_sparse_momentum/datasets/mnist10k_LICENSE.md" in names
        shipped = archive.read("keras_sparse_momentum/datasets/mnist10k.npz")
    digest = hashlib.sha256(datasets.SHIPPED.read_bytes()).hexdigest()
    assert hashlib.sha256(shipped).hexdigest() == digest
