"""export_tflite: a Keras model to a verified, small TensorFlow Lite file."""

import contextlib
import dataclasses
import gzip
import json
import math
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time
import warnings

import keras
import numpy as np

QUANTIZE_MODES = (None, "dynamic", "float16", "int8")
# Quantisations whose *sparse* weights LiteRT's default runtime rejects: XNNPACK
# fails to prepare FULLY_CONNECTED / CONV_2D nodes reading them (TF 2.21,
# ai-edge-litert 2.3), so `Interpreter(model_path=...)` cannot run the file.
XNNPACK_REJECTS_SPARSE = ("dynamic", "int8")
DEFAULT_RUNTIME = "XNNPACK"
# Latency: each file is timed in TIMING_ROUNDS interleaved rounds of invokes
# lasting at least TIMING_BLOCK_S each; the fastest round is reported (the
# least disturbed by other processes; about 0.1 s per file in all).
TIMING_ROUNDS = 9
TIMING_BLOCK_S = 0.005
REPRESENTATIVE_SAMPLES = 100
SAMPLE_BATCH = 8
# Float exports must match Keras to this relative error (float rounding only).
FLOAT_TOLERANCE = 1e-4


@dataclasses.dataclass
class SparseTensorInfo:
    """A constant tensor the converter stored in a sparse (CSR-like) encoding.

    `name` and `shape` are the converter's (e.g. a Dense kernel appears
    transposed, `(units, inputs)`, named after the fused ops that read it);
    `stored` is the number of values written to the file (for 1x4 block
    sparsity, zeros inside kept blocks count) and `density = stored / prod(shape)`.
    """

    name: str
    shape: tuple
    stored: int
    density: float


@dataclasses.dataclass
class ExportResult:
    """What `export_tflite` wrote and how well the file reproduces the model.

    Attributes:
        path: the `.tflite` file.
        size_bytes: its size.
        gzip_bytes: its size after gzip level 9 (what an app download costs).
        max_abs_error: max |TFLite - Keras| over all outputs on the sample
            inputs, or None when `verify=False`.
        sparse_tensors: list of `SparseTensorInfo` read back from the file by
            the interpreter (empty when `sparse=False` or when no tensor was
            sparse enough for the converter to encode it sparse).
        quantize: the quantisation mode used.
        runtime: the runtime that verified the file: LiteRT's default one,
            "ai_edge_litert (XNNPACK)" (or "tf.lite (XNNPACK)" without
            ai-edge-litert), or None when `verify=False`.
        latency_ms: milliseconds per `invoke()` of the file on one input
            sample, one thread, default runtime (None when `measure=False`).
            A quick figure for orientation: the fastest of 9 short rounds,
            interleaved with the dense file's; `benchmarks/` times properly.
        dense_size_bytes, dense_latency_ms: the same for the dense float32
            file of the same model (`sparse=False, quantize=None`, converted
            in memory, not written); equal to this file's figures when this
            file is that one.
    """

    path: str
    size_bytes: int
    gzip_bytes: int
    max_abs_error: float | None
    sparse_tensors: list
    quantize: str | None
    runtime: str | None
    latency_ms: float | None = None
    dense_size_bytes: int | None = None
    dense_latency_ms: float | None = None

    def __str__(self):
        error = "not verified" if self.max_abs_error is None else (
            f"max |TFLite - Keras| = {self.max_abs_error:.2e} ({self.runtime})"
        )
        sparse = ", ".join(
            f"{t.name} {'x'.join(map(str, t.shape))} {t.density:.1%} stored"
            for t in self.sparse_tensors
        )
        speed = "" if self.latency_ms is None else (
            f"; {1e3 * self.latency_ms:.1f} us per sample (1 thread) against the dense "
            f"float32 file's {self.dense_size_bytes:,} bytes, {1e3 * self.dense_latency_ms:.1f} us"
        )
        return (
            f"{self.path}: {self.size_bytes:,} bytes ({self.gzip_bytes:,} gzipped), "
            f"quantize={self.quantize}, {error}; "
            f"{len(self.sparse_tensors)} sparse tensors" + (f": {sparse}" if sparse else "")
            + speed
        )


def export_tflite(
    model,
    path,
    sparse=True,
    quantize=None,
    representative_data=None,
    verify=True,
    sample_inputs=None,
    measure=True,
):
    """Convert a Keras model to TensorFlow Lite, optionally sparse and quantised, and check it.

    The model is exported as a SavedModel (`model.export`, so Sequential,
    functional, subclassed and `ksm.strip`-ped models all work), converted with
    `tf.lite.TFLiteConverter`, run with LiteRT's *default* runtime (the one an
    app gets from `Interpreter(model_path=...)`: `ai_edge_litert`, or
    `tf.lite` if it is not installed, with the XNNPACK delegate on), compared
    with `model(sample_inputs, training=False)`, and only then written to
    `path`. There is no fallback to other kernels: a file this function
    writes after verification runs where apps run it.

    On the JAX backend the model is saved as `.keras` and converted by a
    TensorFlow-backend subprocess (what `ksm export` does with a `.keras` file
    under TensorFlow), so the file is the one a TensorFlow-trained model
    gives; Keras's own JAX export (jax2tf) keeps BatchNorm statistics as
    resource variables, unfolded, in a larger file. The check still compares
    the file with the JAX model. A model the subprocess cannot rebuild (an
    unregistered custom layer or subclassed model) falls back to that jax2tf
    path, with a warning.

    With `sparse=True` the converter's `EXPERIMENTAL_SPARSITY` optimisation
    stores constant weights that are mostly zero in a CSR-like encoding (the
    nonzeros, or 1x4 blocks holding them, plus their indices), so a 90 %-sparse
    LeNet-300-100 gives a file of about a sixth of the dense one. The file
    holds DENSIFY ops that expand those weights when the interpreter prepares
    the model: the storage is sparse, the compute dense.

    Quantisation (`quantize`):
      - None: float32 weights and compute; outputs match Keras to float rounding.
      - "dynamic": int8 weights, float activations (4x smaller weights, no data needed).
      - "float16": float16 weights (2x smaller), float compute.
      - "int8": int8 weights and activations calibrated on `representative_data`;
        the file's inputs and outputs stay float32 (quantise/dequantise at the edges).

    What the default runtime runs (XNNPACK, measured on Dense and Conv2D
    models): every dense mode (`sparse=False` with None, "dynamic",
    "float16", "int8") and sparse float32 and float16; it rejects sparse
    weights stored quantised ("dynamic", "int8": its FULLY_CONNECTED and
    CONV_2D nodes fail to prepare). So `sparse=True` with "dynamic" or "int8"
    is refused up front: for the smallest file that runs use `sparse=True`
    (float32), for int8 use `sparse=False, quantize="int8"`. Sparse float16
    runs but the converter's block-sparse float16 weights give NaN at high
    sparsity (about 98 %); verification catches it and nothing is written.

    With `measure=True` the result also gives this file's one-thread latency
    on the default runtime and the dense float32 file's size and latency
    (that file is converted in memory from the same SavedModel, not written,
    unless it is the one asked for). Timing is short (about 0.1 s per file:
    interleaved rounds, the fastest kept); `measure=False` skips it and the
    extra conversion.

    Args:
        model: a built Keras model (a subclassed model must have been called once).
        path: where to write the `.tflite` file (folders are created).
        sparse: store mostly-zero weights sparse.
        quantize: None, "dynamic", "float16" or "int8" ("dynamic" and "int8"
            need `sparse=False`).
        representative_data: for "int8" (required): an array of input samples
            (the first axis is the sample axis; up to 100 are used), a list of
            such arrays for a multi-input model, or a callable returning an
            iterable of input lists as `TFLiteConverter.representative_dataset`
            expects.
        verify: run the file and measure `max_abs_error` before writing it.
        sample_inputs: inputs for the check (array, list in model input order,
            or dict by input name). Default: the first 32 representative
            samples if given, else 8 standard-normal samples per input.
        measure: time the file and the dense float32 file (see above).

    Returns:
        An `ExportResult` (`.path`, `.size_bytes`, `.gzip_bytes`,
        `.max_abs_error`, `.runtime`, `.sparse_tensors`, `.latency_ms`,
        `.dense_size_bytes`, `.dense_latency_ms`, ...).

    Raises:
        ValueError: bad `quantize`, "int8" without `representative_data`,
            `sparse=True` with "dynamic" or "int8" (the message names what
            runs instead), an unbuilt model, or layers whose operations
            TFLite's builtin ops cannot run (the message names the operations).
        RuntimeError: (nothing written) if the default runtime cannot run the
            file, if the file outputs NaN/Inf where Keras does not (seen with
            sparse float16 at high sparsity, a TFLite bug), or if a float
            (unquantised) export does not reproduce the model to a relative
            error of 1e-4 (a converter bug).
    """
    _check_arguments(sparse, quantize, representative_data)
    if not model.built:
        raise ValueError(
            f"export_tflite: model '{model.name}' is not built. Call it once on a "
            "batch (or build it) before exporting."
        )
    as_dense = measure and (sparse or quantize is not None)
    flatbuffer, dense_flatbuffer = _convert(
        model, sparse, quantize, representative_data, also_dense=as_dense
    )
    interpreter, runtime = _interpreter(flatbuffer)
    sparse_tensors = _sparse_tensors(interpreter)
    max_abs_error = None
    if verify:
        if sample_inputs is None:
            sample_inputs = _default_samples(interpreter, representative_data)
        max_abs_error, scale = _compare(model, interpreter, sample_inputs)
        _check_error(model, sparse, quantize, max_abs_error, scale)
    timing = {}
    if measure:
        if dense_flatbuffer is None:  # this file is the dense float32 one
            dense_flatbuffer = flatbuffer
            latency = dense_latency = _latency_ms([flatbuffer])[0]
        else:
            latency, dense_latency = _latency_ms([flatbuffer, dense_flatbuffer])
        timing = dict(latency_ms=latency, dense_size_bytes=len(dense_flatbuffer),
                      dense_latency_ms=dense_latency)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(flatbuffer)
    return ExportResult(
        path=str(path),
        size_bytes=len(flatbuffer),
        gzip_bytes=len(gzip.compress(flatbuffer, compresslevel=9)),
        max_abs_error=max_abs_error,
        sparse_tensors=sparse_tensors,
        quantize=quantize,
        runtime=runtime if verify else None,
        **timing,
    )


def _check_arguments(sparse, quantize, representative_data):
    """ValueError, before any work, for a mode that is unknown, incomplete or would not run."""
    if quantize not in QUANTIZE_MODES:
        raise ValueError(
            f"export_tflite: `quantize` must be one of {QUANTIZE_MODES}. "
            f"Received: quantize={quantize!r}"
        )
    if sparse and quantize in XNNPACK_REJECTS_SPARSE:
        raise ValueError(
            f'export_tflite: sparse=True with quantize="{quantize}" writes sparse '
            f"quantised weights, which LiteRT's default runtime ({DEFAULT_RUNTIME}, what "
            "`Interpreter(model_path=...)` uses) cannot run. What runs: sparse=True "
            "with quantize=None (sparse float32, the smallest such file) or "
            f'sparse=False with quantize="{quantize}" (dense {quantize}).'
        )
    if quantize == "int8" and representative_data is None:
        raise ValueError(
            'export_tflite: quantize="int8" calibrates activation ranges and needs '
            "`representative_data` (e.g. 100 training inputs). Use "
            'quantize="dynamic" to quantise the weights only, without data.'
        )


def _check_error(model, sparse, quantize, max_abs_error, scale):
    """RuntimeError (nothing written) for non-finite outputs or an inexact float file."""
    if not math.isfinite(max_abs_error) and math.isfinite(scale):
        hint = (
            " TFLite's block-sparse float16 weights are known to give NaN at high "
            'sparsity: use sparse=False with quantize="float16", or sparse float32.'
            if sparse and quantize == "float16" else ""
        )
        raise RuntimeError(
            f"export_tflite: the TFLite file of '{model.name}' outputs NaN or Inf "
            f"where Keras does not; nothing was written (verify=False writes it).{hint}"
        )
    if quantize is None and max_abs_error > FLOAT_TOLERANCE * max(1.0, scale):
        raise RuntimeError(
            f"export_tflite: the TFLite file differs from '{model.name}' by "
            f"{max_abs_error:.2e} (outputs up to {scale:.2e}). This is a converter "
            "bug; nothing was written (verify=False writes it)."
        )


def _convert(model, sparse, quantize, representative_data, also_dense=False):
    """The flatbuffer asked for, and (if `also_dense`) the dense float32 one, or None."""
    if keras.backend.backend() != "tensorflow":
        converted = _convert_under_tensorflow(
            model, sparse, quantize, representative_data, also_dense
        )
        if converted is not None:
            return converted
    with tempfile.TemporaryDirectory(prefix="ksm_export_") as saved_model:
        with _unrolled_recurrent_layers(model), _narrow_dense_layers_as_products(model, sparse):
            model.export(saved_model, format="tf_saved_model", verbose=False)
        flatbuffer = _convert_saved_model(
            model, saved_model, sparse, quantize, representative_data
        )
        dense = _convert_saved_model(model, saved_model, False, None, None) if also_dense else None
    return flatbuffer, dense


def _convert_saved_model(model, saved_model, sparse, quantize, representative_data):
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
    optimizations = []
    if quantize is not None:
        optimizations.append(tf.lite.Optimize.DEFAULT)
    if sparse:
        optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    converter.optimizations = optimizations
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize == "int8":
        converter.representative_dataset = _representative_dataset(representative_data)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
        return converter.convert()
    except Exception as error:  # the converter raises its own ConverterError
        raise _conversion_error(model, error) from error


# The block width the converter's EXPERIMENTAL_SPARSITY gives FULLY_CONNECTED weights.
_FC_SPARSE_BLOCK = 4


@contextlib.contextmanager
def _narrow_dense_layers_as_products(model, sparse):
    """Trace Dense layers with fewer than 4 inputs as a product and a sum, when `sparse`.

    The TFLite converter's EXPERIMENTAL_SPARSITY (TF 2.21) stores a
    FULLY_CONNECTED weight in 1x4 blocks along its input axis even when that
    axis is shorter than 4: the file then holds zero blocks and no values, and
    LiteRT reads uninitialised memory instead of the weights (the output
    changes from run to run; NaN at times). A strip that narrows a layer to
    1-3 units makes exactly that (EfficientNetB0 after GSM: `top_conv` kept 1
    filter, so the classifier Dense reads 1 input). Traced as
    `sum(x[..., :, None] * kernel, axis=-2) (+ bias, activation)` the layer
    becomes element-wise MUL and SUM ops, which the sparsity pass leaves alone;
    the function is the same, and such a weight has at most 3 rows to store.

    The layers of `model` get the product as their `call` only while this
    context is open.
    """
    narrow = [] if not sparse else [
        layer for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras.layers.Dense) and type(layer).call is keras.layers.Dense.call
        and layer.built
        and getattr(layer, "quantization_mode", None) is None
        and not getattr(layer, "lora_enabled", False)
        and layer.kernel.shape[0] < _FC_SPARSE_BLOCK
    ]

    def product(layer):
        def call(inputs, training=None):
            x = keras.ops.sum(keras.ops.expand_dims(inputs, -1) * layer.kernel, axis=-2)
            if layer.bias is not None:
                x = keras.ops.add(x, layer.bias)
            return layer.activation(x) if layer.activation is not None else x
        return call

    try:
        for layer in narrow:
            layer.call = product(layer)
        yield
    finally:
        for layer in narrow:
            del layer.call


@contextlib.contextmanager
def _unrolled_recurrent_layers(model):
    """Trace the model's recurrent layers unrolled, so that TFLite's builtin ops run them.

    A Keras RNN layer (LSTM, GRU, SimpleRNN, ConvLSTM, either half of a
    Bidirectional) loops over its timesteps in a `tf.while_loop` that collects
    the outputs in a TensorList of element shape (batch, units). The exported
    signature has a dynamic batch, so that shape is not static and the
    converter cannot lower the list to builtin ops ("TensorListReserve ...
    element_shape to be static"): it would need Select-TF ops. Unrolled
    (Keras's own `unroll=True`) every timestep becomes plain FULLY_CONNECTED
    and element-wise ops, for any batch size, with the same weights (a fixed
    batch size in the signature would also convert, as a WHILE loop, but the
    file would then only run that batch size). The file grows by a few ops
    per timestep.

    `unroll` is set on the layers of `model` only while this context is open
    and restored after.

    Raises:
        ValueError: naming a recurrent layer whose number of timesteps is not
            fixed (unrolling needs it).
    """
    recurrent = [
        layer for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras.layers.RNN) and not layer.unroll
    ]
    for layer in recurrent:
        build = layer.get_build_config() or {}
        shape = build.get("input_shape") or next(iter(build.get("shapes_dict", {}).values()), None)
        if shape is not None and shape[1] is None:
            raise ValueError(
                f"export_tflite: layer '{layer.name}' ({type(layer).__name__}) runs over an "
                f"undefined number of timesteps (input shape {tuple(shape)}). TFLite's "
                "builtin ops run a recurrent layer unrolled, which needs that number fixed: "
                "give the model's Input a fixed sequence length, e.g. keras.Input((steps, ...))."
            )
    try:
        for layer in recurrent:
            layer.unroll = True
        yield
    finally:
        for layer in recurrent:
            layer.unroll = False


# -- JAX: convert under TensorFlow in a subprocess --------------------------------

_WORKER_TIMEOUT_S = 600
_WORKER = (
    "import sys; from keras_sparse_momentum.export import _tensorflow_worker; "
    "_tensorflow_worker(*sys.argv[1:])"
)


def _convert_under_tensorflow(model, sparse, quantize, representative_data, also_dense=False):
    """`_convert`'s (flatbuffer, dense or None), by a TensorFlow-backend process from the saved model.

    Returns None (after a warning) when that process cannot rebuild the model.
    """
    if quantize == "int8" and callable(representative_data):
        raise ValueError(
            "export_tflite: on the JAX backend the conversion runs in a TensorFlow "
            "subprocess, so `representative_data` must be arrays (a list of arrays "
            "for several inputs), not a callable."
        )
    with tempfile.TemporaryDirectory(prefix="ksm_export_") as folder:
        folder = pathlib.Path(folder)
        try:
            model.save(folder / "model.keras")
        except Exception as error:  # Keras raises many types for models it cannot save
            return _jax2tf_fallback(model, f"{type(error).__name__}: {error}")
        options = {"sparse": bool(sparse), "quantize": quantize, "representative": None,
                   "also_dense": bool(also_dense)}
        if representative_data is not None:
            np.savez(folder / "representative.npz",
                     *[np.asarray(a, "float32") for a in _as_input_list(representative_data)])
            options["representative"] = str(folder / "representative.npz")
        package_root = str(pathlib.Path(__file__).resolve().parents[1])
        env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        process = subprocess.run(
            [sys.executable, "-c", _WORKER, str(folder), json.dumps(options)],
            env=env, capture_output=True, text=True, timeout=_WORKER_TIMEOUT_S,
        )
        result_file = folder / "result.json"
        if not result_file.is_file():
            raise RuntimeError(
                f"export_tflite: the TensorFlow conversion process failed "
                f"(exit {process.returncode}): {process.stderr[-2000:]}"
            )
        result = json.loads(result_file.read_text())
        if "load_error" in result:
            return _jax2tf_fallback(model, result["load_error"])
        if "error" in result:
            error_type = ValueError if result["error"] == "ValueError" else RuntimeError
            raise error_type(result["message"])
        dense = folder / "dense.tflite"
        return (folder / "model.tflite").read_bytes(), (
            dense.read_bytes() if dense.is_file() else None
        )


def _jax2tf_fallback(model, reason):
    """Warn that `model` goes through Keras's jax2tf export instead; returns None."""
    warnings.warn(
        f"export_tflite: TensorFlow could not rebuild '{model.name}' from a .keras "
        f"file ({reason[:300]}); converting through Keras's JAX export (jax2tf) "
        "instead, which gives a larger file. Register custom layers and models with "
        "keras.saving.register_keras_serializable in an importable module to get the "
        "TensorFlow conversion.",
        stacklevel=4,
    )


def _tensorflow_worker(folder, options):
    """Entry of the TensorFlow subprocess: load `model.keras`, write `model.tflite`."""
    folder, options = pathlib.Path(folder), json.loads(options)
    import keras_sparse_momentum  # noqa: F401  registers the package's serializables

    def report(**result):
        (folder / "result.json").write_text(json.dumps(result))

    try:
        model = keras.saving.load_model(folder / "model.keras", compile=False)
    except Exception as error:  # Keras raises many types for models it cannot rebuild
        return report(load_error=f"{type(error).__name__}: {error}")
    representative = None
    if options["representative"]:
        with np.load(options["representative"]) as data:
            representative = [data[f"arr_{i}"] for i in range(len(data.files))]
    try:
        flatbuffer, dense = _convert(model, options["sparse"], options["quantize"],
                                     representative, options["also_dense"])
    except (ValueError, RuntimeError) as error:
        return report(error=type(error).__name__, message=str(error))
    (folder / "model.tflite").write_bytes(flatbuffer)
    if dense is not None:
        (folder / "dense.tflite").write_bytes(dense)
    return report(ok=True)


def _conversion_error(model, error):
    text = str(error)
    ops = sorted(
        set(re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", text))
        | set(re.findall(r"'tf\.(\w+)' op is not supported", text))
    )
    if not ops:
        return ValueError(f"export_tflite: TFLite conversion of '{model.name}' failed: {text}")
    return ValueError(
        f"export_tflite: '{model.name}' uses TensorFlow operations that TFLite's "
        f"builtin ops cannot run: {', '.join(ops)}. Replace the layers that use them "
        "(often a Lambda or custom layer) with standard Keras layers, or export "
        "without them."
    )


def _as_input_list(data):
    if isinstance(data, dict):
        return list(data.values())
    if isinstance(data, (list, tuple)):
        return list(data)
    return [data]


def _representative_dataset(data):
    if callable(data):
        return data
    arrays = [np.asarray(a, dtype="float32") for a in _as_input_list(data)]
    count = min(REPRESENTATIVE_SAMPLES, len(arrays[0]))

    def samples():
        for i in range(count):
            yield [a[i : i + 1] for a in arrays]

    return samples


def _interpreter(flatbuffer, xnnpack=True, **kwargs):
    """A LiteRT interpreter for the file and its runtime's name.

    `xnnpack=True` is LiteRT's default runtime, what `Interpreter(model_path=...)`
    gives an app; False runs the builtin kernels without the default delegate.
    `ai_edge_litert` is used, `tf.lite` only if it is not installed.
    """
    try:
        from ai_edge_litert import interpreter as litert

        name, resolvers = "ai_edge_litert", litert.OpResolverType
    except ImportError:  # ai-edge-litert is the `litert` extra
        import tensorflow as tf

        litert, name, resolvers = tf.lite, "tf.lite", tf.lite.experimental.OpResolverType
    if not xnnpack:
        kwargs["experimental_op_resolver_type"] = resolvers.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interpreter = litert.Interpreter(model_content=flatbuffer, **kwargs)
    return interpreter, f"{name} ({DEFAULT_RUNTIME if xnnpack else 'builtin kernels'})"


def _latency_ms(flatbuffers):
    """Ms per invoke of each file on one sample, one thread, default runtime.

    The files are timed in interleaved rounds (alternating order) so that all
    see the same machine load; each round repeats `invoke()` for at least
    TIMING_BLOCK_S; a file's figure is its fastest round.
    """
    rng = np.random.default_rng(0)
    interpreters = []
    for flatbuffer in flatbuffers:
        interpreter, _ = _interpreter(flatbuffer, num_threads=1)
        for detail in interpreter.get_input_details():
            shape = [1, *detail["shape"][1:]]
            interpreter.resize_tensor_input(detail["index"], shape)
        interpreter.allocate_tensors()
        for detail in interpreter.get_input_details():
            shape, dtype = detail["shape"], detail["dtype"]
            value = (np.zeros(shape, dtype) if np.issubdtype(dtype, np.integer)
                     else rng.standard_normal(shape).astype(dtype))
            interpreter.set_tensor(detail["index"], value)
        interpreter.invoke()  # warm-up, and a clear error if it cannot run
        interpreters.append(interpreter)
    repeats = []
    for interpreter in interpreters:
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < TIMING_BLOCK_S:
            interpreter.invoke()
            count += 1
        repeats.append(count)
    times = [[] for _ in interpreters]
    for round_ in range(TIMING_ROUNDS):
        order = list(range(len(interpreters)))
        for i in order if round_ % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            for _ in range(repeats[i]):
                interpreters[i].invoke()
            times[i].append((time.perf_counter() - start) / repeats[i] * 1e3)
    return [min(t) for t in times]


def _sparse_tensors(interpreter):
    found = []
    for detail in interpreter.get_tensor_details():
        params = detail.get("sparsity_parameters") or {}
        if not params.get("dim_metadata"):
            continue
        shape = tuple(int(d) for d in detail["shape"])
        stored = _stored_values(params["dim_metadata"])
        size = math.prod(shape)
        found.append(
            SparseTensorInfo(
                name=detail["name"], shape=shape, stored=stored,
                density=stored / size if size else 0.0,
            )
        )
    return found


def _stored_values(dim_metadata):
    """Values in a TFLite sparse tensor: walk its dimensions (dense or CSR)."""
    count = 1
    for dim in dim_metadata:
        if dim["format"] == 0:  # DENSE: every position of the parent is expanded
            count *= int(dim["dense_size"])
        else:  # SPARSE_CSR: one index per stored entry at this level
            count = int(np.size(dim["array_indices"]))
    return count


def _default_samples(interpreter, representative_data):
    runner = interpreter.get_signature_runner()
    if representative_data is not None and not callable(representative_data):
        return [np.asarray(a, "float32")[:32] for a in _as_input_list(representative_data)]
    rng = np.random.default_rng(0)
    samples = []
    for name in _ordered(runner.get_input_details()):
        detail = runner.get_input_details()[name]
        shape = [SAMPLE_BATCH if d < 0 else int(d) for d in detail["shape_signature"]]
        if np.issubdtype(detail["dtype"], np.integer):
            samples.append(rng.integers(0, 2, size=shape).astype(detail["dtype"]))
        else:
            samples.append(rng.standard_normal(shape).astype(detail["dtype"]))
    return samples


def _ordered(names):
    """Signature names in Keras order: `args_10` after `args_2`; named ones sorted
    (as `keras.tree.flatten` orders dict outputs)."""
    names = list(names)
    if all(re.fullmatch(r"(?:args|output)_\d+", n) for n in names):
        return sorted(names, key=lambda n: int(n.rsplit("_", 1)[1]))
    return sorted(names)


def _feed(model, runner, inputs):
    """Map inputs (array, list in model order, or dict) to the signature's names and dtypes."""
    details = runner.get_input_details()
    names = list(details)
    if isinstance(inputs, dict) and set(inputs) == set(names):
        feed = dict(inputs)
    else:
        values = _as_input_list(inputs)
        if len(values) != len(names):
            raise ValueError(
                f"Got {len(values)} input arrays; the TFLite file has {len(names)} "
                f"inputs {names}."
            )
        try:
            model_names = [t.name for t in model.inputs]
        except (AttributeError, ValueError):  # no model, or a subclassed one
            model_names = []
        if len(values) > 1 and sorted(model_names) == sorted(names):
            feed = dict(zip(model_names, values))
        else:
            feed = dict(zip(_ordered(names), values))
    return {k: np.asarray(v, dtype=details[k]["dtype"]) for k, v in feed.items()}


def tflite_predict(path, inputs, xnnpack=True):
    """Run a `.tflite` file on `inputs` with LiteRT, like `model.predict`.

    Args:
        path: the file.
        inputs: an array, a list of arrays in model input order, or a dict by
            input name (float32 for float inputs).
        xnnpack: True (default) runs LiteRT's default runtime, as an app's
            `Interpreter(model_path=...)` does; False runs the builtin kernels
            without the XNNPACK delegate (for files from other tools that the
            default runtime rejects, such as sparse quantised ones).

    Returns:
        The output array, or a list of arrays in Keras output order.

    Raises:
        RuntimeError: the runtime cannot run the file (the message says so and
            how to run it anyway); there is no silent fallback.
    """
    flatbuffer = pathlib.Path(path).read_bytes()
    interpreter, runtime = _interpreter(flatbuffer, xnnpack=xnnpack)
    try:
        outputs = _run(None, interpreter, inputs)
    except RuntimeError as error:
        hint = (
            " Apps loading it with Interpreter(model_path=...) fail the same way; "
            "re-export it (export_tflite refuses sparse quantised files), or pass "
            "xnnpack=False to run it with the builtin kernels."
            if xnnpack else ""
        )
        raise RuntimeError(f"'{path}' does not run on {runtime}: {error}.{hint}") from error
    return outputs[0] if len(outputs) == 1 else outputs


def _compare(model, interpreter, inputs):
    """(max |TFLite - Keras|, max |Keras|) on `inputs`, on the interpreter's runtime."""
    keras_inputs = inputs[0] if isinstance(inputs, list) and len(inputs) == 1 else inputs
    outputs = keras.tree.flatten(model(keras_inputs, training=False))
    expected = [keras.ops.convert_to_numpy(y) for y in outputs]
    try:
        actual = _run(model, interpreter, inputs)
    except RuntimeError as error:
        raise RuntimeError(
            f"export_tflite: the TFLite file of '{model.name}' does not run on LiteRT's "
            f"default runtime ({DEFAULT_RUNTIME}): {error}. Nothing was written."
        ) from error
    if len(actual) != len(expected):
        raise RuntimeError(
            f"export_tflite: the file has {len(actual)} outputs, the model {len(expected)}."
        )
    error = max(float(np.max(np.abs(a - e))) for a, e in zip(actual, expected))
    scale = max(float(np.max(np.abs(e))) for e in expected)
    return error, scale


def _run(model, interpreter, inputs):
    runner = interpreter.get_signature_runner()
    outputs = runner(**_feed(model, runner, inputs))
    return [np.asarray(outputs[name], "float32") for name in _ordered(outputs)]
