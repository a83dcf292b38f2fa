"""The backend seam: which backends are accepted, and what the seam reads."""

import keras
import numpy as np
import pytest

import keras_sparse_momentum as ksm
from keras_sparse_momentum import backend


def test_supported_backends_are_accepted_and_torch_is_refused_by_name(monkeypatch):
    assert backend.BACKEND == keras.backend.backend() in backend.SUPPORTED
    ksm.GSMMomentum(compression=2)  # the running backend is accepted
    monkeypatch.setattr(backend, "BACKEND", "torch")
    with pytest.raises(RuntimeError, match="support the Keras backends tensorflow and jax; "
                                           "Keras is using 'torch'"):
        ksm.GSMMomentum(compression=2)
    with pytest.raises(RuntimeError, match="KERAS_BACKEND=jax"):
        ksm.ProxNAG()


def test_read_and_dense_gradient_return_values():
    variable = keras.Variable(np.arange(6, dtype="float32").reshape(2, 3))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(backend.read(variable)),
                                  np.arange(6).reshape(2, 3))
    gradient = keras.ops.ones((2, 3))
    assert backend.dense_gradient(gradient) is gradient
