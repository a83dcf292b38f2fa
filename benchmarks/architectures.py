"""Benchmark section 'architectures': real Keras architectures through every entry point.

Issue 16's table, rerun: each architecture (keras.applications with
`weights=None`, 32x32x3 inputs and 10 classes, plus a small ViT block,
Embedding + LSTM, a GRU model and Conv1D + BatchNorm) is built once and taken
through each entry point from its initial weights:

- `gsm`: `GSMMomentum.for_budget` fit; the guarantee is the exact count
  ceil(N / C) of nonzero prunable weights.
- `prune_to_ratio`: `PruneToRatio` + Adam fit; the same exact count.
- `strip`: a quarter of every producer's output units made dead by hand (the
  state GSM or AOFP leave, without training), BatchNorm statistics, biases and
  norm parameters randomised so that the dead units' constant outputs are not
  zero, then `strip`; the guarantee is a relative error <= 1e-4 against the
  source on a random batch, and finite outputs.
- `csgd`: the same dead units, `ClusterPlan.from_model(keep_ratio=0.5)`,
  `CentripetalSGD` fit, `strip(model, plan)`; relative error <= 1e-4.
- `aofp`: a short `AOFP` search (a threshold high enough to prune within the
  few steps), then `strip`; relative error <= 1e-4.
- `gsm_csgd`: composability (issue 16's Conv1D bug): the `gsm` fit, then
  `ClusterPlan.from_model(keep_ratio=0.5)` on the pruned weights (dead filters
  included), `CentripetalSGD` fit, `strip(model, plan)`; relative error <= 1e-4.
- `export`: `export_tflite` of the `strip` cell's model; the file is verified
  by `export_tflite` itself, and its relative error is reported.

Each cell is "ok" (the guarantee holds; error and seconds given), "refused" (a
`ValueError` raised by keras_sparse_momentum itself, its message given; a
clear refusal names the layer) or "failed" (any other exception, including
a ValueError from inside Keras such as a shape error, or a broken guarantee).
tests/test_architectures.py runs the same cells in CI, on a subset.

Two smaller tables ride along: `clustering` times `ClusterPlan.from_model` on
ResNet50 with the numpy k-means++ ClusterPlan used before commit 69788be (read
from git) against the current scikit-learn one, side by side in one process;
`lines` counts the lines of each surgery module before the layer-rules
redesign (commit 3a6bf75, the merge-base of 0b38858) and now.
"""

import dataclasses
import math
import os
import subprocess
import tempfile
import time
import traceback
import types
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers  # noqa: E402

import keras_sparse_momentum as ksm  # noqa: E402
from keras_sparse_momentum.prunable import kept_count, prunable_variables  # noqa: E402
from keras_sparse_momentum.surgery import cluster_plan as cluster_plan_lib  # noqa: E402
from keras_sparse_momentum.surgery.strip import TOLERANCE, max_relative_error  # noqa: E402

NAME = "architectures"
TITLE = "Real architectures through every entry point (issue 16)"

ENTRY_POINTS = ("gsm", "prune_to_ratio", "strip", "csgd", "aofp", "gsm_csgd", "export")
COMPRESSION = 10
STEPS = 2
BATCH = 4
PROBE = 4
DEAD_EVERY = 4  # every 4th output unit of every producer is made dead
LEARNING_RATE = 1e-3  # EfficientNetB0 at batch 2 overflows after one step at 1e-2
FLOAT64_TOLERANCE = 1e-9  # an exact strip computed in float64 (see _strip_check)


def _application(constructor, **kwargs):
    def build():
        return constructor(weights=None, input_shape=(32, 32, 3), classes=10,
                           classifier_activation=None, **kwargs)
    return build


def vit_block(image=32, patch=8, width=32, heads=4, classes=10, channels=3, blocks=1):
    """Patch embedding, `blocks` pre-norm transformer blocks (MultiHeadAttention, FFN), residuals.

    Layer names carry a block suffix `_<i>` only when there are several blocks.
    """
    def named(base, i):
        return base if blocks == 1 else f"{base}_{i}"

    inputs = keras.Input((image, image, channels))
    x = layers.Conv2D(width, patch, strides=patch, name="patch_embed")(inputs)
    x = layers.Reshape(((image // patch) ** 2, width))(x)
    for i in range(blocks):
        y = layers.LayerNormalization(name=named("ln_attention", i))(x)
        y = layers.MultiHeadAttention(heads, width // heads, name=named("attention", i))(y, y)
        x = layers.Add()([x, y])
        y = layers.LayerNormalization(name=named("ln_ffn", i))(x)
        y = layers.Dense(2 * width, activation="gelu", name=named("ffn_hidden", i))(y)
        y = layers.Dense(width, name=named("ffn_out", i))(y)
        x = layers.Add()([x, y])
    x = layers.LayerNormalization(name="ln_head")(x)
    x = layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, layers.Dense(classes, name="logits")(x), name="vit_block")


def embedding_lstm(steps=20, vocabulary=100, classes=10):
    tokens = keras.Input((steps,), dtype="int32")
    x = layers.Embedding(vocabulary, 16, name="embedding")(tokens)
    x = layers.LSTM(32, name="lstm")(x)
    return keras.Model(tokens, layers.Dense(classes, name="logits")(x), name="embedding_lstm")


def gru_model(steps=20, features=8, classes=10):
    inputs = keras.Input((steps, features))
    x = layers.GRU(32, return_sequences=True, name="gru_1")(inputs)
    x = layers.GRU(16, name="gru_2")(x)
    return keras.Model(inputs, layers.Dense(classes, name="logits")(x), name="gru")


def conv1d_bn(steps=64, features=8, classes=10):
    """Issue 16's Conv1D reproduction model."""
    inputs = keras.Input((steps, features))
    x = layers.Conv1D(32, 5, activation="relu", name="conv_a")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.Conv1D(32, 3, activation="relu", padding="same", name="conv_b")(x)
    x = layers.GlobalMaxPooling1D()(x)
    return keras.Model(inputs, layers.Dense(classes, name="logits")(x), name="conv1d_bn")


apps = keras.applications
MODELS = {
    "MobileNetV2 (alpha .35)": _application(apps.MobileNetV2, alpha=0.35),
    "MobileNetV3Small": _application(apps.MobileNetV3Small),
    "EfficientNetB0": _application(apps.EfficientNetB0),
    "ResNet50": _application(apps.ResNet50),
    "DenseNet121": _application(apps.DenseNet121),
    "ConvNeXtTiny": _application(apps.ConvNeXtTiny),
    "ViT block (MultiHeadAttention)": vit_block,
    "Embedding + LSTM": embedding_lstm,
    "GRU": gru_model,
    "Conv1D + BN": conv1d_bn,
}
del apps
QUICK_MODELS = ("Conv1D + BN",)  # tests/test_architectures.py covers more in CI


class Architecture:
    """One model build, its initial weights and data, shared by the entry points."""

    def __init__(self, name, seed=0, build=None):
        """`build`: a model constructor instead of `MODELS[name]` (the tests' tiny models)."""
        self.name = name
        keras.utils.set_random_seed(seed)
        start = time.perf_counter()
        self.model = (build or MODELS[name])()
        self.build_seconds = time.perf_counter() - start
        self.initial = self.model.get_weights()
        rng = np.random.default_rng(seed)
        self.x = [self._sample(t, rng, BATCH * STEPS) for t in self.model.inputs]
        self.x = self.x[0] if len(self.x) == 1 else self.x
        self.y = rng.integers(0, self.model.outputs[0].shape[-1], BATCH * STEPS)
        self.probe = self._sample(self.model.inputs[0], rng, PROBE)
        self.stripped = None  # set by the strip cell, read by the export cell

    @staticmethod
    def _sample(tensor, rng, n):
        shape = (n, *tensor.shape[1:])
        if "int" in str(tensor.dtype):
            return rng.integers(0, 50, shape).astype("int32")
        return rng.standard_normal(shape).astype("float32")

    def reset(self):
        """Back to the initial weights, without any mask constraint a failed callback left."""
        for variable in self.model.weights:
            if getattr(variable, "constraint", None) is not None:
                variable.constraint = None
        self.model.set_weights(self.initial)

    def compile(self, optimizer):
        self.model.compile(
            optimizer=optimizer,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=False,
        )

    def fit(self, callbacks=()):
        self.model.fit(self.x, self.y, batch_size=BATCH, epochs=1, verbose=0,
                       callbacks=list(callbacks))

    def make_dead_units(self, seed=1):
        """Randomise norm parameters, statistics and biases; zero every 4th output unit of each producer.

        The output layer keeps its units; depthwise kernels (one filter per
        input channel) are left whole.
        """
        rng = np.random.default_rng(seed)
        draws = {
            "gamma": lambda shape: rng.uniform(0.5, 1.5, shape),
            "beta": lambda shape: rng.normal(0, 0.3, shape),
            "moving_mean": lambda shape: rng.normal(0, 0.3, shape),
            "moving_variance": lambda shape: rng.uniform(0.5, 2.0, shape),
            "bias": lambda shape: rng.normal(0, 0.1, shape),
        }
        for variable in self.model.weights:
            if variable.name in draws:
                variable.assign(draws[variable.name](variable.shape).astype("float32"))
        kernels = [v for v in prunable_variables(self.model) if v.name != "depthwise_kernel"]
        for kernel in kernels[:-1]:
            value = keras.ops.convert_to_numpy(kernel).copy()
            value[..., ::DEAD_EVERY] = 0.0
            kernel.assign(value)


@dataclasses.dataclass
class Cell:
    """One (architecture, entry point) result."""

    outcome: str  # "ok", "refused" or "failed"
    detail: str = ""
    relative_error: float | None = None
    seconds: float = 0.0
    numbers: dict = dataclasses.field(default_factory=dict)


def _count(arch):
    variables = prunable_variables(arch.model)
    total = sum(math.prod(v.shape) for v in variables)
    nonzero = sum(int(np.count_nonzero(keras.ops.convert_to_numpy(v))) for v in variables)
    expected = kept_count(total, compression=COMPRESSION)
    return {"nonzero": nonzero, "expected": expected, "total": total}, nonzero == expected


def float64_copy(model):
    """The same model computing in float64 (its config with every dtype float64)."""
    def widen(node):
        if isinstance(node, dict):
            return {k: "float64" if k == "dtype" and isinstance(v, (str, dict)) else widen(v)
                    for k, v in node.items()}
        return [widen(v) for v in node] if isinstance(node, list) else node

    copy = model.__class__.from_config(widen(model.get_config()))
    copy.set_weights([w.astype("float64") if w.dtype == np.float32 else w
                      for w in model.get_weights()])
    return copy


def _strip_check(arch, reference, stripped, restrip):
    """(float32 relative error on the probe batch, whether the guarantee holds, numbers).

    It holds when both outputs are finite and the error is <= TOLERANCE. A deep
    network at its random initial weights can amplify float32 rounding past that
    (DenseNet121 after AOFP: its own float32 and float64 outputs differ by ~5e-3,
    and the constants strip folds into biases carry float32 rounding too). Then
    `restrip` (the same strip) is applied to the model's float64 copy and judged
    there: it must keep the same weight shapes as the float32 strip and agree
    with the float64 reference to FLOAT64_TOLERANCE (an exact strip agrees to
    ~1e-12), and the float32 strip's error must stay within the reference's own
    float32 rounding noise, which is reported beside it.
    """
    outputs = [keras.ops.convert_to_numpy(y) for y in keras.tree.flatten(
        (reference(arch.probe, training=False), stripped(arch.probe, training=False)))]
    if not all(np.all(np.isfinite(y)) for y in outputs):
        return float("nan"), False, {}
    error = max_relative_error(reference, stripped, arch.probe)
    if error <= TOLERANCE:
        return error, True, {}
    wide = float64_copy(reference)
    wide_stripped = restrip(wide)
    probe = keras.tree.map_structure(
        lambda x: x.astype("float64") if x.dtype == np.float32 else x, arch.probe)
    numbers = {"float64_relative_error": max_relative_error(wide, wide_stripped, probe),
               "float32_noise_of_reference": max_relative_error(wide, reference, arch.probe)}
    same_shapes = ([tuple(w.shape) for w in wide_stripped.weights]
                   == [tuple(w.shape) for w in stripped.weights])
    ok = (same_shapes and numbers["float64_relative_error"] <= FLOAT64_TOLERANCE
          and error <= numbers["float32_noise_of_reference"])
    return error, ok, numbers


def _removed(arch, stripped):
    return {"params": arch.model.count_params(), "params_after": stripped.count_params()}


def gsm(arch):
    arch.compile(ksm.GSMMomentum.for_budget(STEPS, compression=COMPRESSION,
                                             learning_rate=LEARNING_RATE))
    with warnings.catch_warnings():
        # "the final cut zeroed ...": expected of a 2-step budget, which only checks the count
        warnings.filterwarnings("ignore", "GSMMomentum: the weights the final cut", UserWarning)
        arch.fit()
    numbers, exact = _count(arch)
    return numbers, exact, None, f"{numbers['nonzero']} nonzero, ceil(N/C) = {numbers['expected']}"


def prune_to_ratio(arch):
    arch.compile(keras.optimizers.Adam(LEARNING_RATE))
    arch.fit([ksm.PruneToRatio(compression=COMPRESSION)])
    numbers, exact = _count(arch)
    return numbers, exact, None, f"{numbers['nonzero']} nonzero, ceil(N/C) = {numbers['expected']}"


def strip(arch):
    arch.make_dead_units()
    stripped = ksm.strip(arch.model)
    error, ok, checked = _strip_check(arch, arch.model, stripped, ksm.strip)
    arch.stripped = stripped
    numbers = {**_removed(arch, stripped), **checked}
    return numbers, ok, error, f"{numbers['params']:,} -> {numbers['params_after']:,} params"


def csgd(arch, dead_units=True):
    if dead_units:
        arch.make_dead_units()
    plan = ksm.ClusterPlan.from_model(arch.model, keep_ratio=0.5)
    arch.compile(ksm.CentripetalSGD(plan, learning_rate=LEARNING_RATE, centripetal_strength=0.1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "clusters had not converged": expected
        arch.fit()
    stripped = ksm.strip(arch.model, plan)
    error, ok, checked = _strip_check(arch, arch.model, stripped,
                                      lambda wide: ksm.strip(wide, plan))
    numbers = {**_removed(arch, stripped), **checked, "clustered_spaces": len(plan.groups),
               "unclustered_spaces": len(plan.skipped)}
    return numbers, ok, error, (f"{numbers['params']:,} -> {numbers['params_after']:,} params, "
                                f"{len(plan.groups)} spaces clustered")


def aofp(arch):
    aofp_callback = ksm.AOFP(0.5, thresh=0.5, iters_per_half=1, probe_data=arch.probe,
                             measure_every=1, probe_batch_size=PROBE, seed=0)
    arch.compile(keras.optimizers.SGD(LEARNING_RATE))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "AOFP reached", UserWarning)  # 2 steps: expected
        arch.fit([aofp_callback])
    stripped = ksm.strip(arch.model)
    error, ok, checked = _strip_check(arch, arch.model, stripped, ksm.strip)
    numbers = {**_removed(arch, stripped), **checked}
    return numbers, ok, error, f"{numbers['params']:,} -> {numbers['params_after']:,} params"


def _dead_filters(arch):
    """Output units whose whole kernel slice is zero, over every prunable kernel."""
    return sum(int(np.sum(~np.any(keras.ops.convert_to_numpy(v).reshape(-1, v.shape[-1]) != 0,
                                  axis=0)))
               for v in prunable_variables(arch.model))


def gsm_csgd(arch):
    numbers, exact, _, summary = gsm(arch)
    if not exact:
        return numbers, False, None, f"GSM: {summary}"
    dead = _dead_filters(arch)
    numbers, ok, error, summary = csgd(arch, dead_units=False)
    return {**numbers, "gsm_dead_filters": dead}, ok, error, f"{summary}, {dead} dead after GSM"


def export(arch):
    if arch.stripped is None:
        strip(arch)
    with tempfile.TemporaryDirectory(prefix="ksm_arch_") as folder:
        result = ksm.export_tflite(arch.stripped, os.path.join(folder, "model.tflite"),
                                   sample_inputs=arch.probe)
    scale = float(np.max(np.abs(keras.ops.convert_to_numpy(
        arch.stripped(arch.probe, training=False)))))
    error = result.max_abs_error / max(scale, 1e-12)
    numbers = {"size_bytes": result.size_bytes, "max_abs_error": result.max_abs_error}
    ok = math.isfinite(error) and error <= TOLERANCE
    return numbers, ok, error, f"{result.size_bytes:,} bytes, {result.runtime}"


CELLS = {"gsm": gsm, "prune_to_ratio": prune_to_ratio, "strip": strip, "csgd": csgd,
         "aofp": aofp, "gsm_csgd": gsm_csgd, "export": export}


def _raised_by_us(error):
    """Whether the exception was raised inside keras_sparse_momentum (a refusal, not a crash)."""
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and f"{os.sep}keras_sparse_momentum{os.sep}" in frames[-1].filename


def run_cell(arch, entry):
    """Run one entry point on `arch` from its initial weights; never raises."""
    arch.reset()
    start = time.perf_counter()
    try:
        numbers, ok, error, summary = CELLS[entry](arch)
    except ValueError as error:
        outcome = "refused" if _raised_by_us(error) else "failed"
        return Cell(outcome, f"{type(error).__name__}: {error}",
                    seconds=time.perf_counter() - start)
    except Exception as error:  # noqa: BLE001 - a table cell records any failure
        return Cell("failed", f"{type(error).__name__}: {error}",
                    seconds=time.perf_counter() - start)
    seconds = time.perf_counter() - start
    if not ok:
        why = f"guarantee broken: {summary}"
        if error is not None:
            why += f", relative error {error:.2e}"
        return Cell("failed", why, error, seconds, numbers)
    return Cell("ok", summary, error, seconds, numbers)


def names_a_layer(arch, message):
    """Whether a refusal names a layer of the model (quoted or listed)."""
    names = {layer.name for layer in arch.model._flatten_layers(include_self=False)}
    return any(f"'{name}'" in message for name in names)


# -- clustering time and module lines, before and after -------------------------------

REPO = Path(__file__).resolve().parents[1]
KMEANS_BEFORE = "69788be^"  # the numpy k-means++ ClusterPlan used before scikit-learn's
REDESIGN_BEFORE = "3a6bf75"  # merge-base of the layer-rules redesign (commit 0b38858)
REDESIGN = "0b38858"
LINE_MODULES = ("surgery/cluster_plan.py", "surgery/dead_units.py", "surgery/rebuild.py",
                "callbacks/aofp.py", "surgery/flops.py", "report.py", "surgery/rules.py",
                "surgery/graph.py", "surgery/strip.py")
CLUSTER_MODEL = {"full": "ResNet50", "quick": "Conv1D + BN"}


def _git_show(revision, path):
    """The text of `path` at `revision`; None if the file is absent there; raises
    LookupError if git or the commit is missing (a shallow clone)."""
    try:
        known = subprocess.run(["git", "cat-file", "-e", f"{revision}^{{commit}}"], cwd=REPO,
                               capture_output=True).returncode == 0
    except OSError:
        known = False
    if not known:
        raise LookupError(f"commit {revision} is not in this clone")
    proc = subprocess.run(["git", "show", f"{revision}:{path}"], cwd=REPO, capture_output=True,
                          text=True)
    return proc.stdout if proc.returncode == 0 else None


def kmeans_before():
    """The k-means module ClusterPlan used before commit 69788be, loaded from git."""
    source = _git_show(KMEANS_BEFORE, "keras_sparse_momentum/surgery/kmeans.py")
    module = types.ModuleType("kmeans_before_69788be")
    exec(compile(source, f"kmeans.py@{KMEANS_BEFORE}", "exec"), module.__dict__)  # noqa: S102
    return module


def clustering_rows(name):
    """`ClusterPlan.from_model(keep_ratio=0.5)` seconds with the old and the current k-means,
    side by side in this process: on the initial weights, then with every 4th filter zero."""
    before = kmeans_before()
    arch = Architecture(name)
    cluster_plan_lib.kmeans_lib.kmeans(np.eye(4), 2)  # scikit-learn imported before timing
    rows = []
    for state in ("initial weights", f"every {DEAD_EVERY}th filter zero"):
        if state != "initial weights":
            arch.make_dead_units()
        seconds, plans = {}, {}
        for label, module in (("after", cluster_plan_lib.kmeans_lib), ("before", before)):
            current = cluster_plan_lib.kmeans_lib
            cluster_plan_lib.kmeans_lib = module
            try:
                start = time.perf_counter()
                plans[label] = ksm.ClusterPlan.from_model(arch.model, keep_ratio=0.5)
                seconds[label] = time.perf_counter() - start
            finally:
                cluster_plan_lib.kmeans_lib = current
        groups = plans["after"].groups
        rows.append({"model": name, "state": state, "spaces": len(groups),
                     "filters": sum(g.width for g in groups),
                     "before_s": seconds["before"], "after_s": seconds["after"],
                     "speedup": seconds["before"] / seconds["after"],
                     "load": round(os.getloadavg()[0], 1)})
        print(f"    clustering, {state}: {seconds['before']:.1f} s before, "
              f"{seconds['after']:.1f} s after", flush=True)
    return rows


def lines_rows():
    """Lines of each surgery module before the redesign, at its commit and in the
    checked-out files (later work on a module, e.g. AOFP's resumable state, counts there)."""
    rows = []
    for module in LINE_MODULES:
        path = f"keras_sparse_momentum/{module}"
        old, redesign = _git_show(REDESIGN_BEFORE, path), _git_show(REDESIGN, path)
        rows.append({"module": module, "before": len(old.splitlines()) if old else 0,
                     "redesign": len(redesign.splitlines()) if redesign else 0,
                     "after": len((REPO / path).read_text().splitlines())})
    return rows


# -- benchmark section interface -------------------------------------------------------


TABLES = ("rows", "clustering", "lines")


def run(opts, previous=None):
    """The tables named by `opts.arch_tables` (default all): every entry point on every
    selected model (`opts.arch_models`, default all; quick: the Conv1D model), the
    clustering times (ResNet50; quick: the Conv1D model) and the module lines.

    Models and tables not measured keep their stored rows. The clustering times
    compare two timings: run that table alone under the timing lock."""
    previous = previous or {}
    quick = opts.quick
    tables = getattr(opts, "arch_tables", None) or TABLES
    if set(tables) - set(TABLES):
        raise ValueError(f"architectures: unknown tables {sorted(set(tables) - set(TABLES))}; "
                         f"choose among {TABLES}")
    selected = getattr(opts, "arch_models", None) or (QUICK_MODELS if quick else tuple(MODELS))
    selected = selected if "rows" in tables else ()
    unknown = set(selected) - set(MODELS)
    if unknown:
        raise ValueError(f"architectures: unknown models {sorted(unknown)}; "
                         f"choose among {list(MODELS)}")
    rows = {row["model"]: row for row in previous.get("rows", [])}
    results = {key: previous[key] for key in ("clustering", "lines") if key in previous}

    def table():
        return {**results, "rows": [rows[name] for name in MODELS if name in rows]}

    for name in selected:
        print(f"  {name}", flush=True)
        arch = Architecture(name)
        row = {"model": name, "build_seconds": arch.build_seconds,
               "params": arch.model.count_params()}
        for entry in ENTRY_POINTS:
            cell = run_cell(arch, entry)
            if cell.outcome == "refused":
                cell.numbers["names_layer"] = names_a_layer(arch, cell.detail)
            row[entry] = dataclasses.asdict(cell)
            print(f"    {entry}: {cell.outcome} ({cell.seconds:.0f} s) {cell.detail[:160]}",
                  flush=True)
        rows[name] = row
        del arch
        keras.backend.clear_session()
        if hasattr(opts, "checkpoint"):
            opts.checkpoint(table())
    try:
        if "clustering" in tables:
            results["clustering"] = clustering_rows(CLUSTER_MODEL["quick" if quick else "full"])
        if "lines" in tables:
            results["lines"] = lines_rows()
        results.pop("note", None)
    except LookupError as error:
        results["note"] = f"clustering and lines not measured: {error}"
    return table()


def _render_cell(cell):
    seconds = f"{cell['seconds']:.0f} s"
    if cell["outcome"] == "ok":
        error, wide = cell["relative_error"], cell["numbers"].get("float64_relative_error")
        if wide is not None:
            noise = cell["numbers"]["float32_noise_of_reference"]
            return (f"ok ({seconds}, rel. err. {error:.0e} in float32, where the source's own "
                    f"rounding is {noise:.0e}; {wide:.0e} in float64)")
        return f"ok ({seconds}" + (f", rel. err. {error:.0e})" if error is not None else ")")
    first_line = cell["detail"].splitlines()[0] if cell["detail"] else ""
    if len(first_line) > 150:
        first_line = first_line[:147] + "..."
    first_line = first_line.replace("|", "\\|")
    if cell["outcome"] == "refused":
        clear = "" if cell["numbers"].get("names_layer") else " (names no layer)"
        return f"refused{clear}: {first_line}"
    return f"**failed** ({seconds}): {first_line}"


def _stale(row):
    return f" ({row['stale']})" if row.get("stale") else ""


def render(results, out):
    rows = results["rows"]
    header = "| model | params | " + " | ".join(ENTRY_POINTS) + " |"
    lines = [
        "Each architecture is built once (`weights=None`, 32x32x3 inputs, 10 classes) and every",
        f"entry point starts from its initial weights: {STEPS} steps of batch {BATCH}, compression",
        f"{COMPRESSION} for the exact counts, every {DEAD_EVERY}th unit of every producer made dead",
        "by hand for strip / C-SGD (with BatchNorm statistics and biases randomised), GSM's own",
        "dead units for gsm_csgd, relative errors on",
        f"{PROBE} random inputs (guarantee: <= {TOLERANCE:g}; where float32 rounding of a deep",
        "random-initialised network alone exceeds that, the same strip is made of the model's",
        "float64 copy, which must keep the same shapes and agree to",
        f"<= {FLOAT64_TOLERANCE:g}, and the float32 error must stay within the source's own",
        "float32 rounding). `refused` is a ValueError",
        "raised by keras_sparse_momentum; `failed` is any other exception or a broken guarantee.",
        "",
        header,
        "|" + "---|" * (len(ENTRY_POINTS) + 2),
    ]
    for row in rows:
        cells = [_render_cell(row[entry]) for entry in ENTRY_POINTS]
        lines.append(f"| {row['model']}{_stale(row)} | {row['params']:,} | "
                     + " | ".join(cells) + " |")
    counts = {}
    for row in rows:
        for entry in ENTRY_POINTS:
            counts[row[entry]["outcome"]] = counts.get(row[entry]["outcome"], 0) + 1
    lines += ["", "Cells: " + ", ".join(f"{counts.get(k, 0)} {k}"
                                       for k in ("ok", "refused", "failed")) + "."]
    if results.get("clustering"):
        lines += ["", "### ClusterPlan.from_model time (keep_ratio 0.5)", "",
                  f"Before: the numpy k-means++ of commit {KMEANS_BEFORE}; after: scikit-learn's "
                  "k-means (surgery/kmeans.py); both timed in one process on the same model.", "",
                  "| model | weights | spaces | filters | before (s) | after (s) | speed-up "
                  "| load average |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['model']}{_stale(r)} | {r['state']} | {r['spaces']} | {r['filters']:,} | "
                  f"{r['before_s']:.2f} | {r['after_s']:.2f} | {r['speedup']:.1f}x | {r['load']} |"
                  for r in results["clustering"]]
    if results.get("lines"):
        table = results["lines"]
        lines += ["", "### Lines per module before and after the layer-rules redesign", "",
                  f"Before: commit {REDESIGN_BEFORE} (the merge-base of the redesign); redesign: "
                  f"commit {REDESIGN}; now: the measured commit (later work included).", "",
                  "| module | before | redesign | now |", "|---|---|---|---|"]
        lines += [f"| {r['module']}{_stale(r)} | {r['before']} | {r['redesign']} | {r['after']} |"
                  for r in table]
        lines.append("| total | " + " | ".join(str(sum(r[k] for r in table))
                                                for k in ("before", "redesign", "after")) + " |")
    if results.get("note"):
        lines += ["", f"Note: {results['note']}"]
    return "\n".join(lines)
