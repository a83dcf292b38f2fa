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

# Callback tests that fail on JAX today: PruneToRatio's masks, ProxIterative's support
# masks and AOFP use TensorFlow-only APIs (`model.distribute_strategy`,
# `optimizer._distribution_strategy`, `tf.function`), and masks held in free variables
# would be constants to JAX's jit, which passes only the model's and the optimizer's
# own state. The `resume` branch (issue 17) makes them work on JAX. Strict: each test
# that starts to pass fails the run until it is removed from this list.
_PENDING_ON_JAX = {
    "tests/callbacks/test_aofp.py::test_batch_norm_statistics_are_re_estimated_on_the_probe_data_after_pruning",
    "tests/callbacks/test_aofp.py::test_masks_are_held_flops_target_met_and_strip_is_exact",
    "tests/callbacks/test_aofp.py::test_measuring_does_not_touch_training",
    "tests/callbacks/test_aofp.py::test_residual_skip_and_layer_selection",
    "tests/callbacks/test_aofp.py::test_residual_ties_are_pruned_together_and_strip_is_exact",
    "tests/callbacks/test_aofp.py::test_threshold_growth_reaches_the_target_from_a_tiny_threshold",
    "tests/callbacks/test_prox_iterative.py::test_auto_picks_the_iterative_algorithm_only_for_prox_nag",
    "tests/callbacks/test_prox_iterative.py::test_reaches_exactly_the_target_with_monotone_rounds[False]",
    "tests/callbacks/test_prox_iterative.py::test_reaches_exactly_the_target_with_monotone_rounds[True]",
    "tests/callbacks/test_prox_iterative.py::test_short_budget_warns_and_still_trims_to_the_target",
    "tests/callbacks/test_prune_to_ratio.py::test_auto_leaves_gsm_alone_and_prunes_gradually_otherwise",
    "tests/callbacks/test_prune_to_ratio.py::test_functional_and_subclassed_models_and_history",
    "tests/callbacks/test_prune_to_ratio.py::test_layer_scope_prunes_every_variable_alike",
    "tests/callbacks/test_prune_to_ratio.py::test_polynomial_schedule_holds_masks_after_every_step[False]",
    "tests/callbacks/test_prune_to_ratio.py::test_polynomial_schedule_holds_masks_after_every_step[True]",
    "tests/callbacks/test_prune_to_ratio.py::test_train_function_is_clean_after_pruning",
}


def pytest_collection_modifyitems(config, items):
    if BACKEND != "jax":
        return
    pending = pytest.mark.xfail(
        reason="callback not yet on JAX (issue 17, resume branch)", strict=True)
    for item in items:
        if item.nodeid in _PENDING_ON_JAX:
            item.add_marker(pending)


@pytest.fixture(autouse=True)
def _seed_and_clean():
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(0)
    yield
    keras.config.set_dtype_policy("float32")
