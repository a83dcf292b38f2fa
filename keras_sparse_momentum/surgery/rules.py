"""What each Keras layer family means to channel surgery: one rule object per family.

A *channel* is an index of a tensor's last axis (channels-last layouts only).
For one layer, its rule says:

- `role`: how the layer connects channel spaces (see `graph.py`): a *producer*
  (Dense, Conv, ...: its kernel defines new output channels and reads its
  input's channels), a *transformer* (BatchNormalization, DepthwiseConv, PReLU:
  one parameter slice per channel, channels pass through), *channelwise*
  (activations, pooling, padding: channels pass through untouched), *merge*
  (Add, Multiply: inputs and output share channels), *concat*, *flatten*,
  *input*, or *unknown* (`refusal` gives the reason; the channels around it
  stay as they are);
- `out_slots`: the weight axes indexed by the channels it writes (producer) or
  passes (transformer);
- `in_slots`: per input argument, the weight axes reading that input's channels;
- `inner`: a unit inside the layer that can be removed like a channel
  (MultiHeadAttention's heads);
- `resize`: its config for new widths, `with_bias`: its config with a bias;
- `linear`: its kernel applied to a tensor (no bias, no activation), to fold
  the constant of a removed channel into the next layer's bias;
- `kernel_positions`: how often each kernel is applied per example in one call;
  a kernel's multiply-accumulates are its size times that.

A `Slot` is one weight axis with a mode: `TAKE` for per-channel slices (a
removed channel loses its slice; a C-SGD cluster keeps the slice of its first
channel, all of them equal by then), `SUM` for a kernel reading the channels (a
cluster's input rows are summed into one). Weights are named by their path
relative to the layer (`"kernel"`, `"query/kernel"`), never by their short
name, which a layer with sub-layers repeats. Supporting a new layer family is
one `Rule` subclass registered in `_RULES`, and one test.
"""

import dataclasses
import math

import keras
import numpy as np

PRODUCER, CHANNELWISE, TRANSFORMER, MERGE, CONCAT, FLATTEN, INPUT, UNKNOWN = (
    "producer",
    "channelwise",
    "transformer",
    "merge",
    "concat",
    "flatten",
    "input",
    "unknown",
)
TAKE, SUM = "take", "sum"
KERNEL, VECTOR, STATISTIC = "kernel", "vector", "statistic"


@dataclasses.dataclass(frozen=True)
class Slot:
    """Axis `axis` of the layer's weight `weight` (path relative to the layer) indexes channels."""

    weight: str
    axis: int
    mode: str = TAKE


@dataclasses.dataclass(frozen=True)
class Inner:
    """Channels inside one layer (MultiHeadAttention heads): what defines, follows and reads them."""

    unit: str
    width: int
    producers: tuple  # slots whose all-zero slice makes a unit dead (a constant)
    followers: tuple  # other per-unit slices, kept and merged alongside
    readers: tuple  # SUM slots reading the units (a unit with zero rows here is unread)


def relative_path(layer, variable):
    """The path of `variable` below `layer` ("kernel", "query/kernel").

    Sub-layers created outside the layer's name scope (a Bidirectional made
    from its config) have paths without the layer's prefix: those are kept whole.
    """
    prefix = f"{layer.path}/"
    return variable.path[len(prefix):] if variable.path.startswith(prefix) else variable.path


def weights_by_path(layer):
    """{relative path: variable} of a layer's weights (positions if two paths coincide).

    A functional model's graph also holds operations that are not layers
    (`x * keras.ops.hard_sigmoid(x)` in MobileNetV3): they have no weights.
    """
    weights = getattr(layer, "weights", [])
    paths = [relative_path(layer, w) for w in weights]
    if len(set(paths)) < len(paths):
        paths = [f"#{i}" for i in range(len(paths))]
    return dict(zip(paths, weights))


def is_kernel(slot):
    """Whether a slot slices a kernel (what decides that a channel is dead), by the
    weight's name, trainable or frozen alike: a layer frozen for fine-tuning still
    computes with its kernel."""
    return slot.weight.split("/")[-1].endswith("kernel")


def slot_kind(variable, slot):
    """How C-SGD treats a merged slice: KERNEL (full strength), VECTOR (a tenth), or
    STATISTIC (not trained: averaged at the end), which includes frozen weights."""
    if not variable.trainable:
        return STATISTIC
    return KERNEL if is_kernel(slot) else VECTOR


def call_argument(node, position, name):
    """The argument `name` (or positional `position`) of a functional call node."""
    args = node.arguments.args
    if len(args) > position:
        return args[position]
    return node.arguments.kwargs.get(name)


def _prod(values):
    return int(math.prod(int(v) for v in values))


def _known(shape):
    return shape is not None and all(d is not None for d in shape[1:])


def _channels_last(layer):
    return getattr(layer, "data_format", "channels_last") == "channels_last"


def _spatial(layer, shape):
    """Positions of a (batch, ..., channels) or channels_first shape."""
    return _prod(shape[1:-1] if _channels_last(layer) else shape[2:])


class Rule:
    """Defaults: a layer channel surgery cannot follow (it pins the channels around it)."""

    role = UNKNOWN
    types = ()

    def refusal(self, layer, node=None):
        """Why channel surgery cannot follow this call of `layer` (None: it can)."""
        if self.role != UNKNOWN:
            return None
        return f"'{getattr(layer, 'name', layer)}' ({type(layer).__name__}) is not supported"

    def out_slots(self, layer):
        return []

    def in_slots(self, layer):
        """[(argument position, argument name, [Slot])]: which weights read which input."""
        return []

    def inner(self, layer):
        return None

    def inner_refusal(self, layer, node):
        return None

    def resize(self, layer, config, widths):
        """`config` for the new widths {"out": n, "in": n, "inner": n} (those that change)."""
        return config

    def with_bias(self, layer, config):
        return None  # a layer without a bias to fold into

    def linear(self, layer, x):
        return None  # no bias folding through this layer

    def kernel_positions(self, layer, inputs, outputs):
        """{weight: applications per example} for one call; `inputs` are the
        call's argument shapes ({position or name: shape}), `outputs` its output shapes."""
        return None  # unknown: the report shows "?"


class Input(Rule):
    role = INPUT
    types = (keras.layers.InputLayer,)


class _Passive(Rule):
    """A layer without kernels: no MACs."""

    def kernel_positions(self, layer, inputs, outputs):
        return {}


class Channelwise(_Passive):
    """Channels pass through unchanged, each on its own (activations, pooling, padding, dropout)."""

    role = CHANNELWISE
    types = (
        keras.layers.ReLU,
        keras.layers.LeakyReLU,
        keras.layers.ELU,
        keras.layers.Dropout,
        keras.layers.SpatialDropout1D,
        keras.layers.SpatialDropout2D,
        keras.layers.SpatialDropout3D,
        keras.layers.GaussianNoise,
        keras.layers.GaussianDropout,
        keras.layers.AlphaDropout,
        keras.layers.ActivityRegularization,
        keras.layers.Identity,
        keras.layers.MaxPooling1D,
        keras.layers.MaxPooling2D,
        keras.layers.MaxPooling3D,
        keras.layers.AveragePooling1D,
        keras.layers.AveragePooling2D,
        keras.layers.AveragePooling3D,
        keras.layers.GlobalAveragePooling1D,
        keras.layers.GlobalAveragePooling2D,
        keras.layers.GlobalAveragePooling3D,
        keras.layers.GlobalMaxPooling1D,
        keras.layers.GlobalMaxPooling2D,
        keras.layers.GlobalMaxPooling3D,
        keras.layers.ZeroPadding1D,
        keras.layers.ZeroPadding2D,
        keras.layers.ZeroPadding3D,
        keras.layers.Cropping1D,
        keras.layers.Cropping2D,
        keras.layers.Cropping3D,
        keras.layers.UpSampling1D,
        keras.layers.UpSampling2D,
        keras.layers.UpSampling3D,
    )

    def refusal(self, layer, node=None):
        return None if _channels_last(layer) else f"'{layer.name}': channels_first"


class Activation(Channelwise):
    types = (keras.layers.Activation,)
    _MIXING = {"softmax", "log_softmax"}

    def refusal(self, layer, node=None):
        name = getattr(layer.activation, "__name__", "")
        return f"'{layer.name}': {name} mixes channels" if name in self._MIXING else None


class Rescaling(Channelwise):
    types = (keras.layers.Rescaling,)

    def refusal(self, layer, node=None):
        if np.size(layer.scale) == 1 and np.size(layer.offset) == 1:
            return None
        return f"Rescaling '{layer.name}' with per-channel scale or offset"


class Merge(_Passive):
    """Element-wise merges: the inputs and the output share one channel index."""

    role = MERGE
    types = (
        keras.layers.Add,
        keras.layers.Subtract,
        keras.layers.Average,
        keras.layers.Maximum,
        keras.layers.Minimum,
        keras.layers.Multiply,
    )
    # Element-wise Keras operations that appear in functional graphs as `x + y`.
    OP_NAMES = {"Add", "Subtract", "Multiply", "Maximum", "Minimum"}


class Concatenate(_Passive):
    role = CONCAT
    types = (keras.layers.Concatenate,)

    def refusal(self, layer, node=None):
        if node is not None and layer.axis not in (-1, len(node.outputs[0].shape) - 1):
            return f"Concatenate '{layer.name}' not on the channel axis"
        return None


class Flatten(_Passive):
    role = FLATTEN
    types = (keras.layers.Flatten,)

    def refusal(self, layer, node=None):
        if not _channels_last(layer):
            return f"'{layer.name}': channels_first Flatten"
        if node is not None and not _known(node.input_tensors[0].shape):
            return f"Flatten '{layer.name}' with unknown spatial size"
        return None


class _Kernel(Rule):
    """A layer with `kernel` (and optional `bias`) whose last kernel axis is its output channels."""

    role = PRODUCER
    units_key = "filters"

    def refusal(self, layer, node=None):
        if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
            return f"LoRA or quantized layer '{layer.name}'"
        if not _channels_last(layer):
            return f"'{layer.name}': channels_first"
        return None

    def out_slots(self, layer):
        return [Slot("kernel", -1), Slot("bias", 0)]

    def in_slots(self, layer):
        return [(0, "inputs", [Slot("kernel", -2, SUM)])]

    def resize(self, layer, config, widths):
        if "out" in widths:
            config[self.units_key] = widths["out"]
        return config

    def with_bias(self, layer, config):
        return dict(config, use_bias=True)

    def kernel_positions(self, layer, inputs, outputs):
        shape = outputs[0]
        return {"kernel": _spatial(layer, shape)} if _known(shape) else None


class Dense(_Kernel):
    types = (keras.layers.Dense,)
    units_key = "units"

    def in_slots(self, layer):
        return [(0, "inputs", [Slot("kernel", 0, SUM)])]

    def linear(self, layer, x):
        return keras.ops.tensordot(x, layer.kernel, axes=[[-1], [0]])


class Conv(_Kernel):
    types = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)

    def refusal(self, layer, node=None):
        reason = super().refusal(layer, node)
        if reason is None and getattr(layer, "groups", 1) != 1:
            reason = f"'{layer.name}': grouped convolution"
        return reason

    def linear(self, layer, x):
        if layer.padding == "causal":
            return None
        return keras.ops.conv(x, layer.kernel, strides=layer.strides, padding=layer.padding,
                              data_format=layer.data_format, dilation_rate=layer.dilation_rate)


class ConvTranspose(_Kernel):
    """Kernel (..., out, in): the output channels are axis -2, the input channels axis -1."""

    types = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
             keras.layers.Conv3DTranspose)

    def out_slots(self, layer):
        return [Slot("kernel", -2), Slot("bias", 0)]

    def in_slots(self, layer):
        return [(0, "inputs", [Slot("kernel", -1, SUM)])]

    def linear(self, layer, x):
        return keras.ops.conv_transpose(
            x, layer.kernel, strides=layer.strides, padding=layer.padding,
            output_padding=layer.output_padding, data_format=layer.data_format,
            dilation_rate=layer.dilation_rate)

    def kernel_positions(self, layer, inputs, outputs):
        shape = inputs[0]  # every input position meets the whole kernel
        return {"kernel": _spatial(layer, shape)} if _known(shape) else None


class Separable(_Kernel):
    """Depthwise half (..., in, 1) follows the input channels; pointwise half (1.., in, out)."""

    types = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)

    def refusal(self, layer, node=None):
        reason = super().refusal(layer, node)
        if reason is None and layer.depth_multiplier != 1:
            reason = f"'{layer.name}': depth_multiplier != 1"
        return reason

    def out_slots(self, layer):
        return [Slot("pointwise_kernel", -1), Slot("bias", 0)]

    def in_slots(self, layer):
        return [(0, "inputs", [Slot("depthwise_kernel", -2), Slot("pointwise_kernel", -2, SUM)])]

    def linear(self, layer, x):
        return keras.ops.separable_conv(
            x, layer.depthwise_kernel, layer.pointwise_kernel, strides=layer.strides,
            padding=layer.padding, data_format=layer.data_format,
            dilation_rate=layer.dilation_rate)

    def kernel_positions(self, layer, inputs, outputs):
        shape = outputs[0]
        if not _known(shape):
            return None
        positions = _spatial(layer, shape)
        return {"depthwise_kernel": positions, "pointwise_kernel": positions}


def _einsum_letters(equation):
    operands, output = equation.split("->")
    x, kernel = operands.split(",")
    return x.replace("...", ""), kernel, output.replace("...", "")


class EinsumDense(_Kernel):
    """An einsum whose kernel contracts the input's last axis and creates the output's last axis."""

    types = (keras.layers.EinsumDense,)

    def refusal(self, layer, node=None):
        reason = super().refusal(layer, node)
        if reason is not None:
            return reason
        x, kernel, output = _einsum_letters(layer.equation)
        if not (x and output and x[-1] in kernel and x[-1] not in output
                and output[-1] in kernel and output[-1] not in x):
            return (f"EinsumDense '{layer.name}' ({layer.equation}) does not map the input's "
                    "last axis to the output's last axis through its kernel")
        if layer.bias_axes and output[-1] not in layer.bias_axes:
            return f"EinsumDense '{layer.name}': bias not along the output channels"
        return None

    def _axes(self, layer):
        x, kernel, output = _einsum_letters(layer.equation)
        return kernel.index(x[-1]), kernel.index(output[-1])

    def out_slots(self, layer):
        return [Slot("kernel", self._axes(layer)[1]), Slot("bias", -1)]

    def in_slots(self, layer):
        return [(0, "inputs", [Slot("kernel", self._axes(layer)[0], SUM)])]

    def resize(self, layer, config, widths):
        if "out" in widths:
            shape = config["output_shape"]
            shape = list(shape) if isinstance(shape, (list, tuple)) else [shape]
            config["output_shape"] = shape[:-1] + [widths["out"]]
        return config

    def with_bias(self, layer, config):
        return dict(config, bias_axes=_einsum_letters(layer.equation)[2][-1])

    def linear(self, layer, x):
        return keras.ops.einsum(layer.equation, x, layer.kernel)

    def kernel_positions(self, layer, inputs, outputs):
        shape = outputs[0]
        if not _known(shape):
            return None
        _, kernel, output = _einsum_letters(layer.equation)
        created = _prod(d for d, letter in zip(shape[::-1], output[::-1]) if letter in kernel)
        return {"kernel": _prod(shape[1:]) // created}


class Depthwise(Rule):
    """Kernel (..., channels, 1): one filter per channel, channels pass through."""

    role = TRANSFORMER
    types = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)

    def refusal(self, layer, node=None):
        if not _channels_last(layer) or layer.depth_multiplier != 1:
            return f"'{layer.name}': channels_first or depth_multiplier != 1"
        return None

    def out_slots(self, layer):
        return [Slot("kernel", -2), Slot("bias", -1)]

    def kernel_positions(self, layer, inputs, outputs):
        shape = outputs[0]
        return {"kernel": _spatial(layer, shape)} if _known(shape) else None


class BatchNorm(_Passive):
    role = TRANSFORMER
    types = (keras.layers.BatchNormalization,)

    def refusal(self, layer, node=None):
        axis = layer.axis if isinstance(layer.axis, int) else None
        rank = len(node.input_tensors[0].shape) if node is not None else None
        if rank is None and axis not in (None, -1):
            rank = len(layer.input.shape)
        if axis is None or axis not in (-1, (rank or 0) - 1):
            return f"BatchNormalization '{layer.name}' not on the channel axis"
        if node is not None and call_argument(node, 1, "training") is True:
            # Batch statistics at inference too: a dead channel's output is beta or
            # anything else depending on the batch, not a constant surgery can fold.
            return (f"BatchNormalization '{layer.name}' is called with training=True "
                    "(batch statistics at inference)")
        return None

    def out_slots(self, layer):
        return [Slot(name, -1) for name in ("gamma", "beta", "moving_mean", "moving_variance")]


class GroupNorm(_Passive):
    """One group per channel (instance normalisation) passes channels through; larger groups mix them."""

    role = TRANSFORMER
    types = (keras.layers.GroupNormalization,)

    def refusal(self, layer, node=None):
        width = layer.gamma.shape[-1] if layer.built and layer.gamma is not None else None
        if layer.axis not in (-1,) and (node is None or layer.axis != len(node.outputs[0].shape) - 1):
            return f"GroupNormalization '{layer.name}' not on the channel axis"
        if layer.groups not in (-1, width):
            return (f"GroupNormalization '{layer.name}' normalises over groups of "
                    f"{'several' if width is None else width // layer.groups} channels")
        return None

    def out_slots(self, layer):
        return [Slot("gamma", -1), Slot("beta", -1)]

    def resize(self, layer, config, widths):
        if "out" in widths:
            config["groups"] = widths["out"]
        return config


class MixingNorm(_Passive):
    """LayerNormalization / RMSNormalization over the channel axis: each output depends on all channels."""

    role = CHANNELWISE
    types = tuple(getattr(keras.layers, n) for n in ("LayerNormalization", "RMSNormalization",
                                                      "UnitNormalization")
                  if hasattr(keras.layers, n))

    def refusal(self, layer, node=None):
        axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
        rank = len(node.outputs[0].shape) if node is not None else None
        if any(a == -1 or (rank is not None and a == rank - 1) for a in axes) or rank is None:
            return (f"{type(layer).__name__} '{layer.name}' normalises over the channel axis "
                    "(each output depends on every channel)")
        return None


class PReLU(_Passive):
    """One alpha per channel (unless shared over the channel axis)."""

    role = TRANSFORMER
    types = (keras.layers.PReLU,)

    def out_slots(self, layer):
        return [Slot("alpha", -1)] if layer.alpha.shape[-1] != 1 else []


class MultiHeadAttention(Rule):
    """Keras MultiHeadAttention: q/k/v kernels (d, heads, dim), output kernel (heads, dim, d_out).

    It reads the channels of its query, value and key inputs (axis 0 of those
    kernels), writes output channels (last axis of the output kernel) and
    holds `num_heads` heads as inner units. A head whose value kernel slice is
    zero outputs its value bias whatever the attention weights (they sum to
    one): that constant folds into the output bias. A head whose output-kernel
    slice is zero is never read. Zero query or key slices make the attention
    uniform, not zero, so they remove nothing. Identical heads (C-SGD) are
    merged by summing their output-kernel slices.
    """

    role = PRODUCER
    types = (keras.layers.MultiHeadAttention,)

    def refusal(self, layer, node=None):
        base = keras.layers.MultiHeadAttention
        if type(layer)._compute_attention is not base._compute_attention:
            return f"'{layer.name}': MultiHeadAttention with its own _compute_attention"
        if getattr(layer, "_use_gate", False):
            return f"'{layer.name}': gated MultiHeadAttention"
        return None

    def inner_refusal(self, layer, node):
        if len(node.outputs) > 1:
            return f"'{layer.name}' returns its attention scores (one row per head)"
        return None

    def out_slots(self, layer):
        return [Slot("attention_output/kernel", -1), Slot("attention_output/bias", -1)]

    def in_slots(self, layer):
        return [
            (0, "query", [Slot("query/kernel", 0, SUM)]),
            (1, "value", [Slot("value/kernel", 0, SUM)]),
            (2, "key", [Slot("key/kernel", 0, SUM)]),
        ]

    def inner(self, layer):
        return Inner(
            unit="heads",
            width=layer.num_heads,
            producers=(Slot("value/kernel", 1), Slot("value/bias", 0)),
            followers=(Slot("query/kernel", 1), Slot("query/bias", 0),
                       Slot("key/kernel", 1), Slot("key/bias", 0)),
            readers=(Slot("attention_output/kernel", 0, SUM),),
        )

    def resize(self, layer, config, widths):
        if "inner" in widths:
            config["num_heads"] = widths["inner"]
        if "out" in widths or ("in" in widths and not config.get("output_shape")):
            config["output_shape"] = [widths.get("out", layer.output_dense.kernel.shape[-1])]
        return config

    def with_bias(self, layer, config):
        return dict(config, use_bias=True)

    def inner_fold(self, layer, heads):
        """{weight: bias delta} standing for the dead `heads` (value kernel slices zero)."""
        if not layer.use_bias:
            return {}
        value_bias = keras.ops.convert_to_numpy(layer.value_dense.bias)[heads]  # (h, dim)
        kernel = keras.ops.convert_to_numpy(layer.output_dense.kernel)[heads]  # (h, dim, ...)
        return {"attention_output/bias": np.tensordot(value_bias, kernel, axes=[[0, 1], [0, 1]])}

    def head_outputs(self, layer, query, value, key=None, **kwargs):
        """Per-head attention outputs (batch, ..., heads, value_dim), before the output kernel.

        The private hooks of Keras's MultiHeadAttention this needs live here only.
        """
        key = value if key is None else key
        mask = layer._compute_attention_mask(
            query, value, attention_mask=kwargs.get("attention_mask"),
            use_causal_mask=kwargs.get("use_causal_mask", False))
        output, _ = layer._compute_attention(
            layer.query_dense(query), layer.key_dense(key), layer.value_dense(value), mask)
        return output

    def kernel_positions(self, layer, inputs, outputs):
        query = inputs.get(0, inputs.get("query"))
        value = inputs.get(1, inputs.get("value"))
        key = inputs.get(2, inputs.get("key")) or value
        if not all(_known(s) for s in (query, value, key)):
            return None
        return {
            "query/kernel": _prod(query[1:-1]),
            "key/kernel": _prod(key[1:-1]),
            "value/kernel": _prod(value[1:-1]),
            "attention_output/kernel": _prod(query[1:-1]),
        }


class Recurrent(Rule):
    """LSTM, GRU, SimpleRNN (and Bidirectional wrappers): left whole; kernels applied once per step."""

    types = (keras.layers.RNN, keras.layers.Bidirectional)

    def refusal(self, layer, node=None):
        return (f"recurrent layer '{layer.name}' ({type(layer).__name__}) is left whole: "
                "its hidden units are not removed")

    def kernel_positions(self, layer, inputs, outputs):
        shape = inputs.get(0, inputs.get("sequences"))
        convolutional = "Conv" in type(getattr(layer, "forward_layer", layer)).__name__
        if shape is None or len(shape) < 3 or shape[1] is None or convolutional:
            return None
        steps = int(shape[1])
        return {relative_path(layer, w): steps for w in layer.weights
                if w.name.endswith("kernel")}


class Embedding(Rule):
    types = (keras.layers.Embedding,)

    def refusal(self, layer, node=None):
        return f"Embedding '{layer.name}' is left whole: its output dimensions are not removed"

    def kernel_positions(self, layer, inputs, outputs):
        return {"embeddings": 0}  # a lookup, no multiply-accumulates


_RULES = [
    Input(),
    Dense(),
    EinsumDense(),
    ConvTranspose(),  # before Conv: Conv2DTranspose is not a Conv2D, but keep the order explicit
    Conv(),
    Separable(),
    Depthwise(),
    BatchNorm(),
    GroupNorm(),
    MixingNorm(),
    PReLU(),
    MultiHeadAttention(),
    Recurrent(),
    Embedding(),
    Activation(),
    Rescaling(),
    Channelwise(),
    Merge(),
    Concatenate(),
    Flatten(),
]
_UNKNOWN = Rule()


def _keras_class(layer):
    for klass in type(layer).__mro__:
        if klass.__module__.startswith("keras."):
            return klass
    return None


class _Refused(Rule):
    """A subclass of a known layer that computes something else: treated as unknown."""

    def __init__(self, reason):
        self.reason = reason

    def refusal(self, layer, node=None):
        return self.reason


def rule_for(layer):
    """The rule of a layer (or of a Keras operation in a functional graph)."""
    if not isinstance(layer, keras.layers.Layer):
        return Merge() if type(layer).__name__ in Merge.OP_NAMES else _UNKNOWN
    if isinstance(layer, keras.Model) and not isinstance(layer, keras.layers.InputLayer):
        return _Refused(f"nested model '{layer.name}'")
    for rule in _RULES:
        if isinstance(layer, rule.types):
            klass = _keras_class(layer)
            if klass is not None and type(layer).call is not klass.call:
                return _Refused(f"'{layer.name}' ({type(layer).__name__}) overrides `call`")
            return rule
    return _UNKNOWN


def classify(layer, node=None):
    """(role, reason): the role of one call of `layer`, UNKNOWN with the reason if refused."""
    rule = rule_for(layer)
    reason = rule.refusal(layer, node)
    return (UNKNOWN, reason) if reason is not None else (rule.role, None)
