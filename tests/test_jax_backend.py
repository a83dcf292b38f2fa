"""The JAX backend: data parallelism on two devices and on two processes, export to TFLite.

The golden tests of tests/optimizers run on JAX as they are (`.ci/run` runs
them with KERAS_BACKEND=jax); these are the JAX-only ones.
"""

import contextlib
import os
import pathlib
import socket
import subprocess
import sys
import time
import warnings

import keras
import numpy as np
import pytest

import jax_worker
import keras_sparse_momentum as ksm
from support import Trajectory, classification_data, compile_for_test, kernels, mlp, nonzeros

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="JAX only: keras.distribution, jax.distributed"
)
WORKER_TIMEOUT_S = 420


def _fit_gsm(distribution):
    x, y = classification_data()
    scope = distribution.scope() if distribution else contextlib.nullcontext()
    trajectory = Trajectory()
    with scope:
        keras.utils.set_random_seed(0)
        optimizer = ksm.GSMMomentum(0.05, momentum=0.9, compression=8, nesterov=True)
        model = compile_for_test(mlp(), optimizer, jit_compile=True)
        model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0,
                  callbacks=[trajectory])
    return model, trajectory.steps


def test_data_parallel_on_two_devices_selects_and_cuts_as_one_device():
    import jax

    devices = jax.devices()
    assert len(devices) == 2, "conftest sets XLA_FLAGS for two host devices"
    parallel, parallel_steps = _fit_gsm(keras.distribution.DataParallel(devices=devices))
    single, single_steps = _fit_gsm(None)
    for variable in parallel.weights:  # both replicas hold the same bits
        shards = [np.asarray(s.data) for s in variable.value.addressable_shards]
        assert len(shards) == 2
        np.testing.assert_array_equal(shards[0], shards[1])
    # Every step agrees to float rounding: a different selection would move some
    # weight by a whole gradient step (~1e-3).
    assert len(parallel_steps) == len(single_steps) == 16
    for step_a, step_b in zip(parallel_steps, single_steps):
        for a, b in zip(step_a, step_b):
            np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    for a, b in zip(kernels(parallel), kernels(single)):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a) != 0,
                                      keras.ops.convert_to_numpy(b) != 0)
    assert nonzeros(kernels(parallel)) == parallel.optimizer.kept_count == 172


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load(path):
    with np.load(path) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


def test_two_processes_end_identical_and_equal_to_one_process(tmp_path):
    """Two JAX processes (gloo CPU collectives on loopback), each fed half of every batch."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(pathlib.Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    # One CPU device per process (the devices are the processes); other flags as here.
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                if "xla_force_host_platform_device_count" not in f)
    port, worker = _free_port(), str(pathlib.Path(jax_worker.__file__))
    logs = [open(tmp_path / f"worker{p}.log", "w") for p in range(jax_worker.PROCESSES)]
    processes = [
        subprocess.Popen([sys.executable, worker, str(p), str(port), str(tmp_path)],
                         env=env, stdout=log, stderr=subprocess.STDOUT)
        for p, log in enumerate(logs)
    ]
    deadline = time.monotonic() + WORKER_TIMEOUT_S
    try:  # a worker that fails leaves its peer waiting in a collective: stop both
        while time.monotonic() < deadline and any(p.poll() is None for p in processes):
            if any(p.poll() not in (None, 0) for p in processes):
                break
            time.sleep(0.5)
        codes = [p.poll() for p in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for log in logs:
            log.close()
    tails = [(tmp_path / f"worker{p}.log").read_text()[-3000:] for p in range(len(processes))]
    assert codes == [0, 0], tails

    x, y = classification_data()
    for method in jax_worker.METHODS:
        first, second = (_load(tmp_path / f"{method}_{p}.npz") for p in range(2))
        for a, b in zip(first, second):  # the processes end bit-identical
            np.testing.assert_array_equal(a, b)
        single = jax_worker.fit_method(method, x, y, jax_worker.GLOBAL_BATCH)
        reference = [keras.ops.convert_to_numpy(w) for w in single.weights]
        for a, b in zip(first, reference):
            np.testing.assert_allclose(a, b, atol=2e-6, rtol=0, err_msg=method)
            if a.ndim >= 2:
                np.testing.assert_array_equal(a != 0, b != 0, err_msg=method)
        count = sum(np.count_nonzero(a) for a in first if a.ndim >= 2)
        # GSM: ceil(1376 / 8); PruneToRatio (after ProxNAG, or polynomial): ceil(1376 * 0.2)
        assert count == nonzeros(kernels(single)) == {
            "gsm": 172, "prox_nag_end": 276, "sgd_polynomial": 276}[method]


# -- export ---------------------------------------------------------------------


def _small_cnn():
    layers = keras.layers
    inputs = keras.Input((10, 10, 1))
    x = layers.Conv2D(6, 3, activation="relu", name="conv")(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(32, activation="relu", name="hidden")(x)
    return keras.Model(inputs, layers.Dense(4, name="logits")(x))


@pytest.fixture(scope="module")
def trained_cnn():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 10, 10, 1)).astype("float32")
    y = rng.integers(0, 4, 128)
    keras.utils.set_random_seed(0)
    model = compile_for_test(_small_cnn(), ksm.GSMMomentum(0.05, momentum=0.9, compression=10))
    model.fit(x, y, batch_size=32, epochs=2, verbose=0)
    return model, x


def test_strip_report_and_export_of_a_jax_model(trained_cnn, tmp_path):
    from ai_edge_litert import interpreter as litert

    model, x = trained_cnn
    report = ksm.sparsity_report(model)
    assert report.nonzeros == model.optimizer.kept_count < report.prunable
    slim = ksm.strip(model)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(slim(x[:32])),
                               keras.ops.convert_to_numpy(model(x[:32])), atol=1e-5)
    result = ksm.export_tflite(slim, tmp_path / "slim.tflite", sample_inputs=x[:32])
    assert result.max_abs_error < 1e-5  # the file against the JAX model
    assert result.sparse_tensors
    # Converted under TensorFlow: BatchNorm folded, no resource variables (jax2tf keeps them).
    interpreter = litert.Interpreter(model_path=result.path)
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert not ops & {"VAR_HANDLE", "READ_VARIABLE", "CALL_ONCE"}, ops
    from keras_sparse_momentum.export import tflite_predict

    np.testing.assert_allclose(tflite_predict(result.path, x[:8]),
                               keras.ops.convert_to_numpy(model(x[:8])), atol=1e-5)


def test_export_falls_back_to_jax2tf_for_a_model_tensorflow_cannot_rebuild(tmp_path):
    class Unregistered(keras.Model):  # no get_config, not registered: .keras cannot rebuild it
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3)

        def call(self, x):
            return self.dense(x)

    model = Unregistered()
    model(np.zeros((1, 5), "float32"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = ksm.export_tflite(model, tmp_path / "sub.tflite")
    assert any("jax2tf" in str(w.message) for w in caught)
    assert result.max_abs_error < 1e-5
