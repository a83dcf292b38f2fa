"""GPU check: `python -m benchmarks.gpu_check [--quick] [--out gpu_check.json]`.

One command, under 8 minutes on one GPU, three parts:

1. `tests`: the golden and exact-count tests of the three optimizers (and of
   the global selection), run by pytest from the test suite with every
   `Model.compile` forced to `jit_compile=True` and TF32 off, so that the
   references (Keras's SGD, the numpy implementations) are compared at float32
   under XLA on the device. `NODE_IDS` lists them.
2. `step_time`: train-step time of GSMMomentum, ProxNAG and CentripetalSGD
   relative to Keras SGD on a ResNet-20 (CIFAR-shaped, ~270k parameters) at
   batch 128 with the `mixed_float16` policy and XLA, timed in interleaved
   blocks (each optimizer's block right next to an SGD block, order
   alternating; median and quartiles of the paired ratios over rounds).
3. `selection`: one exact global selection (`kth_largest`, k = N / 60, XLA) at
   1M, 25M and 100M parameters (`benchmarks.cost.selection_times`).

It writes one JSON document (`--out`); `render(results)` turns it into the
Markdown section for RESULTS.md. `--quick` runs the same code on CPU at tiny
sizes (one test, a one-block residual CNN on 8x8 inputs without XLA, selections
of 10k and 100k) so that CI can check that every number is produced.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FORCE_JIT = "KSM_GPU_CHECK_FORCE_JIT"

NODE_IDS = (
    # GSMMomentum: compression 1 is Keras's momentum SGD; the numpy reference; exact Q.
    "tests/optimizers/test_gsm.py::test_compression_one_is_keras_momentum_sgd[True-True]",
    "tests/optimizers/test_gsm.py::test_single_steps_match_the_numpy_reference[True]",
    "tests/optimizers/test_gsm.py::test_fit_leaves_exactly_ceil_n_over_c_nonzeros[True]",
    "tests/optimizers/test_gsm.py::test_mixed_precision_loss_scaling",
    # ProxNAG: l1 = 0 is Keras's Nesterov SGD; the numpy reference; exact zeros; exact target.
    "tests/optimizers/test_prox_nag.py::test_l1_zero_is_keras_nesterov_sgd_at_every_step",
    "tests/optimizers/test_prox_nag.py::"
    "test_steps_match_the_numpy_reference_and_finalize_writes_the_sparse_iterate",
    "tests/optimizers/test_prox_nag.py::test_fit_leaves_the_sparse_iterate_with_exact_zeros[True]",
    "tests/callbacks/test_prox_iterative.py::"
    "test_reaches_exactly_the_target_with_monotone_rounds[True]",
    # CentripetalSGD: the numpy reference; singletons are Nesterov SGD; identical clusters.
    "tests/optimizers/test_centripetal_sgd.py::test_steps_match_the_numpy_reference[True]",
    "tests/optimizers/test_centripetal_sgd.py::"
    "test_zero_strength_and_singletons_are_keras_nesterov_sgd_with_coupled_decay",
    "tests/optimizers/test_centripetal_sgd.py::"
    "test_fit_ends_with_identical_clusters_and_a_lossless_strip",
    # The global selection: exact k-th largest, XLA equal to graph mode.
    "tests/optimizers/test_selection.py::"
    "test_list_of_tensors_equals_concatenation_and_xla_equals_graph",
)
QUICK_NODE_IDS = ("tests/optimizers/test_prox_nag.py::test_soft_threshold_matches_numpy",)

FULL = dict(model="ResNet-20", batch=128, input_shape=(32, 32, 3), width=16, xla=True,
            rounds=9, steps=20, sizes=(1_000_000, 25_000_000, 100_000_000), selection_rounds=7)
QUICK = dict(model="one residual block", batch=8, input_shape=(8, 8, 3), width=4, xla=False,
             rounds=2, steps=1, sizes=(10_000, 100_000), selection_rounds=2)
COMPRESSION, KEEP_RATIO = 10, 0.5


# -- 1. the tests ------------------------------------------------------------------


def pytest_configure(config):
    """Loaded with `-p benchmarks.gpu_check`: every compile under XLA, TF32 off."""
    if not os.environ.get(FORCE_JIT):
        return
    import keras
    import tensorflow as tf

    tf.config.experimental.enable_tensor_float_32_execution(False)
    original = keras.Model.compile

    def compile_with_xla(self, *args, **kwargs):
        kwargs["jit_compile"] = True
        return original(self, *args, **kwargs)

    keras.Model.compile = compile_with_xla


def run_tests(node_ids):
    """Outcome and seconds of every node id (pytest in a subprocess, junit XML)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get(
            "PYTHONPATH", "")]), **{FORCE_JIT: "1"})
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "benchmarks.gpu_check",
             "-p", "no:cacheprovider", f"--junitxml={report}", *node_ids],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=420)
        seconds = time.perf_counter() - start
        results = []
        if report.exists():
            for case in ElementTree.parse(report).getroot().iter("testcase"):
                outcome = "passed"
                for child in case:
                    if child.tag in ("failure", "error"):
                        outcome = "failed"
                    elif child.tag == "skipped":
                        outcome = "skipped"
                name = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
                results.append(dict(id=name, outcome=outcome, seconds=float(case.get("time", 0))))
    counts = {k: sum(r["outcome"] == k for r in results) for k in ("passed", "failed", "skipped")}
    missing = len(node_ids) - len(results)
    return dict(jit_forced=True, tf32=False, selected=len(node_ids), missing=missing,
                returncode=proc.returncode, seconds=seconds, results=results,
                output_tail="" if proc.returncode == 0 else proc.stdout[-2000:], **counts)


# -- 2. step times -------------------------------------------------------------------


OPTIMIZERS = ("sgd", "gsm", "proxnag", "csgd")


def _optimizer(name, model):
    import keras

    import keras_sparse_momentum as ksm

    if name == "sgd":
        return keras.optimizers.SGD(0.05, momentum=0.9)
    if name == "gsm":
        return ksm.GSMMomentum(0.05, momentum=0.9, compression=COMPRESSION)
    if name == "proxnag":
        return ksm.ProxNAG(0.05, momentum=0.9, l1=1e-4)
    plan = ksm.ClusterPlan.from_model(model, keep_ratio=KEEP_RATIO)
    return ksm.CentripetalSGD(plan, 0.05, centripetal_strength=0.1)


def _one_block(keras, input_shape, width):
    """The quick mode's model: a stem and one residual block (C-SGD ties them)."""

    def conv_bn(x, relu=True):
        x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        return keras.layers.ReLU()(x) if relu else x

    inputs = keras.Input(input_shape)
    x = conv_bn(inputs)
    x = keras.layers.ReLU()(keras.layers.Add()([x, conv_bn(conv_bn(x), relu=False)]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


def step_times(settings):
    """Per-step milliseconds and ratios to Keras SGD, mixed precision, interleaved blocks."""
    import keras
    import tensorflow as tf

    from benchmarks import models

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        rng = np.random.default_rng(0)
        batch = settings["batch"]
        x = tf.constant(rng.random((batch, *settings["input_shape"]), dtype="float32"))
        y = tf.constant(np.arange(batch) % 10, dtype="int32")

        def build():
            if settings["model"] == "ResNet-20":
                return models.resnet20(keras, settings["input_shape"], width=settings["width"])
            return _one_block(keras, settings["input_shape"], settings["width"])

        keras.utils.set_random_seed(0)
        weights = build().get_weights()
        runs = {}
        for name in OPTIMIZERS:
            model = build()
            model.set_weights(weights)
            model.compile(optimizer=_optimizer(name, model), jit_compile=settings["xla"],
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            for _ in range(3):  # compile and warm up
                model.train_on_batch(x, y)
            runs[name] = model

        def block(name):
            model = runs[name]
            start = time.perf_counter()
            for _ in range(settings["steps"]):
                loss = model.train_on_batch(x, y)
            float(np.asarray(loss))  # wait for the device
            return (time.perf_counter() - start) / settings["steps"]

        times = {name: [] for name in runs}
        ratios = {name: [] for name in runs if name != "sgd"}
        for r in range(settings["rounds"]):
            for name in ratios:
                pair = ["sgd", name][:: 1 if r % 2 == 0 else -1]
                measured = {key: block(key) for key in pair}
                for key, seconds in measured.items():
                    times[key].append(seconds)
                ratios[name].append(measured[name] / measured["sgd"])
        parameters = int(sum(np.prod(v.shape) for v in runs["sgd"].trainable_variables))
    finally:
        keras.config.set_dtype_policy(previous)
    rows = []
    for name, ts in times.items():
        rs = np.array(ratios.get(name) or [1.0])
        rows.append(dict(optimizer=name, step_ms=float(np.median(ts) * 1e3),
                         ratio=float(np.median(rs)), ratio_q1=float(np.percentile(rs, 25)),
                         ratio_q3=float(np.percentile(rs, 75))))
    return dict(model=settings["model"], parameters=parameters, batch=settings["batch"],
                input_shape=list(settings["input_shape"]), width=settings["width"],
                policy="mixed_float16", xla=settings["xla"], compression=COMPRESSION,
                keep_ratio=KEEP_RATIO, rounds=settings["rounds"],
                steps_per_block=settings["steps"], rows=rows)


# -- 3. the selection, and the whole check --------------------------------------------


def devices():
    import tensorflow as tf

    found = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        found.append(details.get("device_name", device.name))
    return found or ["no GPU (CPU only)"]


def run(quick=False):
    import keras
    import tensorflow as tf

    from benchmarks import cost

    settings = QUICK if quick else FULL
    start = time.perf_counter()
    results = dict(
        kind="gpu_check", quick=quick, devices=devices(),
        date=datetime.datetime.now().isoformat(timespec="minutes"),
        versions={"python": platform.python_version(), "tensorflow": tf.__version__,
                  "keras": keras.__version__},
    )
    results["tests"] = run_tests(QUICK_NODE_IDS if quick else NODE_IDS)
    begin = time.perf_counter()
    results["step_time"] = step_times(settings)
    results["step_time"]["seconds"] = time.perf_counter() - begin
    begin = time.perf_counter()
    results["selection"] = cost.selection_times(settings)
    results["selection_seconds"] = time.perf_counter() - begin
    results["seconds"] = time.perf_counter() - start
    return results


def render(results):
    """The Markdown section of RESULTS.md for one gpu_check JSON document."""
    tests, steps = results["tests"], results["step_time"]
    mode = " (quick mode: tiny sizes, not a measurement)" if results["quick"] else ""
    lines = [
        f"### GPU check{mode}",
        "",
        f"_Measured {results['date']} on {', '.join(results['devices'])}; TensorFlow "
        f"{results['versions']['tensorflow']}, Keras {results['versions']['keras']}; "
        f"{results['seconds']:.0f} s in all._",
        "",
        f"Golden and exact-count tests under XLA (`jit_compile=True` forced, TF32 off): "
        f"{tests['passed']} passed, {tests['failed']} failed, {tests['skipped']} skipped, "
        f"{tests['missing']} not found, of {tests['selected']}.",
        "",
        "| test | outcome | s |",
        "|---|---|---|",
    ]
    lines += [f"| `{r['id']}` | {r['outcome']} | {r['seconds']:.1f} |" for r in tests["results"]]
    lines += [
        "",
        f"Train-step time relative to Keras SGD: {steps['model']} ({steps['parameters']:,} "
        f"parameters, input {'x'.join(map(str, steps['input_shape']))}), batch "
        f"{steps['batch']}, `{steps['policy']}`, XLA {'on' if steps['xla'] else 'off'}; GSM at "
        f"{steps['compression']}x, C-SGD with keep ratio {steps['keep_ratio']}; median and "
        f"[q1, q3] of paired ratios over {steps['rounds']} rounds of {steps['steps_per_block']} "
        "steps.",
        "",
        "| optimizer | step ms | ratio to SGD | [q1, q3] |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['optimizer']} | {r['step_ms']:.2f} | {r['ratio']:.3f} | "
              f"[{r['ratio_q1']:.3f}, {r['ratio_q3']:.3f}] |" for r in steps["rows"]]
    lines += ["", "Global selection (`kth_largest`, k = N/60, XLA):", "",
              "| parameters | ms per selection | ns per parameter |", "|---|---|---|"]
    lines += [f"| {r['params']:,} | {r['ms']:.2f} | {r['ns_per_param']:.3f} |"
              for r in results["selection"]]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, CPU is fine (CI)")
    parser.add_argument("--out", default="gpu_check.json", help="JSON file to write")
    opts = parser.parse_args(argv)
    results = run(opts.quick)
    Path(opts.out).write_text(json.dumps(results, indent=1))
    print(render(results))
    return 0 if results["tests"]["failed"] == 0 and results["tests"]["missing"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
