"""Shared test set-up: the backend, devices, seeds.

`KERAS_BACKEND` picks the backend (tensorflow by default; `.ci/run` also runs
the optimizer and callback tests on jax). TensorFlow gets two logical CPUs
(for MirroredStrategy); JAX gets two host devices (for
`keras.distribution.DataParallel`), which XLA reads before jax is imported,
and the classic (non-partitionable) threefry: XLA on CPU takes ~5 s to compile
each partitionable threefry sampler (one per new weight shape) and ~1 s for
the classic one. Random streams differ, but every test compares like with like.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
BACKEND = os.environ.setdefault("KERAS_BACKEND", "tensorflow")
if BACKEND == "jax" and "xla_force_host_platform_device_count" not in os.environ.get(
    "XLA_FLAGS", ""
):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    ).strip()
if BACKEND == "jax":
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
