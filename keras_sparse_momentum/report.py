"""sparsity_report: how sparse a model is, per layer, and what it costs to run."""

import dataclasses
import math

import keras
import numpy as np

from keras_sparse_momentum import prunable as prunable_lib
from keras_sparse_momentum.surgery import flops as flops_lib
from keras_sparse_momentum.surgery import rules

@dataclasses.dataclass
class Row:
    """One prunable variable: its layer, shape, nonzeros and multiply-accumulates."""

    layer: str
    variable: str
    shape: tuple
    size: int
    nonzeros: int
    dense_macs: int | None
    effective_macs: int | None

    @property
    def sparsity(self):
        return 1.0 - self.nonzeros / self.size if self.size else 0.0


@dataclasses.dataclass
class SparsityReport:
    """Per-variable rows plus totals over the prunable weights.

    `compression` is N / nonzeros over the prunable weights (the ratio GSM and
    PruneToRatio are asked for); MACs are per example, dense vs counting only
    nonzero weights: a kernel's size (or nonzeros) times the times its layer
    applies it per example, as the layer family's rule counts them
    (`surgery/rules.py`: output positions of a convolution, input positions
    of a transposed one, sequence positions of a Dense or MultiHeadAttention
    projection, steps of a recurrent layer, none for an Embedding lookup;
    attention score products are not kernel MACs). None where a layer's
    shapes are unknown or its family has no rule.
    """

    model_name: str
    rows: list
    total_parameters: int
    nonzero_parameters: int

    @property
    def prunable(self):
        return sum(r.size for r in self.rows)

    @property
    def nonzeros(self):
        return sum(r.nonzeros for r in self.rows)

    @property
    def total_sparsity(self):
        return 1.0 - self.nonzeros / self.prunable if self.prunable else 0.0

    @property
    def compression(self):
        return self.prunable / self.nonzeros if self.nonzeros else math.inf

    def _macs(self, attribute):
        values = [getattr(r, attribute) for r in self.rows]
        return None if any(v is None for v in values) else sum(values)

    @property
    def dense_macs(self):
        return self._macs("dense_macs")

    @property
    def effective_macs(self):
        return self._macs("effective_macs")

    def to_dict(self):
        """Plain-Python form, for JSON logs and benchmarks."""
        return {
            "model": self.model_name,
            "rows": [dict(dataclasses.asdict(r), sparsity=r.sparsity) for r in self.rows],
            "prunable": self.prunable,
            "nonzeros": self.nonzeros,
            "total_sparsity": self.total_sparsity,
            "compression": self.compression,
            "total_parameters": self.total_parameters,
            "nonzero_parameters": self.nonzero_parameters,
            "dense_macs": self.dense_macs,
            "effective_macs": self.effective_macs,
        }

    def __str__(self):
        header = ("layer", "variable", "shape", "nonzeros", "sparsity", "MACs dense", "MACs eff.")
        lines = [
            (
                r.layer,
                r.variable,
                "x".join(str(d) for d in r.shape),
                f"{r.nonzeros:,}/{r.size:,}",
                f"{r.sparsity:.1%}",
                _fmt_macs(r.dense_macs),
                _fmt_macs(r.effective_macs),
            )
            for r in self.rows
        ]
        total = (
            "total",
            "",
            "",
            f"{self.nonzeros:,}/{self.prunable:,}",
            f"{self.total_sparsity:.1%}",
            _fmt_macs(self.dense_macs),
            _fmt_macs(self.effective_macs),
        )
        widths = [max(len(x[i]) for x in [header, total, *lines]) for i in range(len(header))]
        fmt = lambda cells: "  ".join(  # noqa: E731
            c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        )
        rule = "-" * len(fmt(header))
        macs = ""
        if self.dense_macs and self.effective_macs is not None:
            macs = f", MACs {self.dense_macs / max(self.effective_macs, 1):.1f}x fewer"
        return "\n".join(
            [
                f"Sparsity report for '{self.model_name}'",
                fmt(header),
                rule,
                *map(fmt, lines),
                rule,
                fmt(total),
                f"compression {self.compression:.1f}x over prunable weights{macs}; "
                f"all parameters: {self.nonzero_parameters:,} nonzero of "
                f"{self.total_parameters:,}",
            ]
        )


def _fmt_macs(value):
    if value is None:
        return "?"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f}{unit}"
    return str(value)


def _owner_layers(model):
    """Map each variable id to the innermost layer that holds it."""
    owners = {}
    layers = sorted(
        model._flatten_layers(include_self=False, recursive=True),
        key=lambda layer: len(layer.weights),
    )
    for layer in layers:
        for variable in layer.weights:
            owners.setdefault(id(variable), layer)
    return owners


def _shapes(values):
    return {key: tuple(v.shape) for key, v in values if hasattr(v, "shape")}


def _traced_calls(model, layers, input_shape):
    """{layer id: [(argument shapes, output shapes)]}, by running `model` once on zeros.

    For subclassed models, whose inner layers have no graph nodes: each
    layer's `call` is wrapped for the duration of one forward pass.
    """
    calls = {id(layer): [] for layer in layers}
    for layer in layers:
        original = layer.call

        def recording(*args, _layer=layer, _call=original, **kwargs):
            outputs = _call(*args, **kwargs)
            inputs = _shapes([*enumerate(args), *kwargs.items()])
            calls[id(_layer)].append((inputs, [tuple(y.shape) for y in keras.tree.flatten(outputs)]))
            return outputs

        layer.call = recording
    try:
        model(np.zeros((1, *input_shape), "float32"), training=False)
    finally:
        for layer in layers:
            del layer.call
    return calls


def _variable_positions(model, input_shape):
    """{variable id: applications per example}, from each layer's rule and its calls."""
    layers = [layer for layer in model._flatten_layers(include_self=False, recursive=True)
              if layer.weights]
    if input_shape is not None:
        traced = _traced_calls(model, layers, tuple(input_shape))
    positions = {}
    for layer in layers:
        rule = rules.rule_for(layer)
        if input_shape is not None:
            counts = [rule.kernel_positions(layer, *call) for call in traced[id(layer)]]
            counts = None if not counts or None in counts else {
                w: sum(c[w] for c in counts) for w in counts[0]}
        else:
            nodes = getattr(layer, "_inbound_nodes", [])
            counts = flops_lib.layer_positions(layer, nodes) if nodes else None
        for path, variable in rules.weights_by_path(layer).items():
            if counts and path in counts:
                positions.setdefault(id(variable), counts[path])
    return positions


def sparsity_report(model, prunable=None, input_shape=None):
    """Per-layer sparsity and multiply-accumulates of a built Keras model.

    Args:
        model: a built Keras model (Sequential, functional or subclassed).
        prunable: the `prunable` rule the model was pruned with (default:
            layer kernels of rank >= 2).
        input_shape: for subclassed models, the input shape without batch
            (e.g. `(28, 28, 1)`): the model is run once on zeros of that
            shape to see the layers' output shapes for the MAC counts. Not
            needed for Sequential and functional models.

    Returns:
        A `SparsityReport`; `print(report)` shows the table.
    """
    variables = prunable_lib.prunable_variables(model, prunable)
    owners = _owner_layers(model)
    positions_of = _variable_positions(model, input_shape)
    rows = []
    for variable in variables:
        value = keras.ops.convert_to_numpy(variable)
        layer = owners.get(id(variable))
        positions = positions_of.get(id(variable))
        rows.append(
            Row(
                layer=layer.name if layer is not None else "?",
                variable=variable.path,
                shape=tuple(value.shape),
                size=int(value.size),
                nonzeros=int(np.count_nonzero(value)),
                dense_macs=None if positions is None else int(value.size) * positions,
                effective_macs=(
                    None if positions is None else int(np.count_nonzero(value)) * positions
                ),
            )
        )
    weights = [keras.ops.convert_to_numpy(w) for w in model.weights]
    return SparsityReport(
        model_name=model.name,
        rows=rows,
        total_parameters=int(sum(w.size for w in weights)),
        nonzero_parameters=int(sum(np.count_nonzero(w) for w in weights)),
    )
