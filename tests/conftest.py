"""Shared test set-up: the backend, devices, seeds.

`KERAS_BACKEND` picks the backend (tensorflow by default; `.ci/run` also runs
the optimizer and callback tests on jax). TensorFlow gets two logical CPUs
(for MirroredStrategy); JAX gets two host devices (for
`keras.distribution.DataParallel`), which XLA reads before jax is imported,
and, since compiling dominates these tiny tests, XLA's cheapest CPU code
generation (`--xla_backend_optimization_level=0`, about a sixth less CPU time)
and the classic threefry: XLA on CPU takes ~5 s to compile each partitionable
threefry sampler (one per new weight shape), ~1 s the classic one. Random
streams differ, but every test compares like with like.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
BACKEND = os.environ.setdefault("KERAS_BACKEND", "tensorflow")
if BACKEND == "jax":
    _flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in _flags:
        _flags += " --xla_force_host_platform_device_count=2"
    if "xla_backend_optimization_level" not in _flags:
        _flags += " --xla_backend_optimization_level=0"
    os.environ["XLA_FLAGS"] = _flags.strip()
    os.environ.setdefault("JAX_THREEFRY_PARTITIONABLE", "0")

import keras  # noqa: E402
import pytest  # noqa: E402

if BACKEND == "tensorflow":
    import tensorflow as tf

    # Must happen before TensorFlow initialises its devices.
    _cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        _cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )


@pytest.fixture(autouse=True)
def _seed_and_clean():
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(0)
    yield
    keras.config.set_dtype_policy("float32")
