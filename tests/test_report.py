"""sparsity_report: exact counts, MACs and the table."""

import keras
import numpy as np
import pytest

import keras_sparse_momentum as ksm
import support


def _zero_fraction(variable, fraction, seed=0):
    value = keras.ops.convert_to_numpy(variable).copy()
    flat = value.reshape(-1)
    rng = np.random.default_rng(seed)
    flat[rng.permutation(flat.size)[: int(flat.size * fraction)]] = 0.0
    variable.assign(value)


def test_counts_and_compression_on_mlp():
    model = support.mlp(inputs=10, hidden=(20,), outputs=5)
    _zero_fraction(model.layers[0].kernel, 0.5)
    report = ksm.sparsity_report(model)
    assert [r.layer for r in report.rows] == [l.name for l in model.layers]
    assert [r.shape for r in report.rows] == [(10, 20), (20, 5)]
    assert report.rows[0].nonzeros == 100
    assert report.rows[1].nonzeros == 100
    assert report.prunable == 300
    assert report.nonzeros == 200
    assert report.compression == pytest.approx(1.5)
    assert report.total_sparsity == pytest.approx(1 / 3)
    # Dense MACs per example equal the kernel sizes; effective count only nonzeros.
    assert report.dense_macs == 300
    assert report.effective_macs == 200
    assert report.total_parameters == 300 + 25


def test_conv_macs_scale_with_output_positions():
    model = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, padding="same"), keras.layers.Flatten(),
         keras.layers.Dense(2)]
    )
    report = ksm.sparsity_report(model)
    assert report.rows[0].dense_macs == 3 * 3 * 3 * 4 * 64
    assert report.rows[1].dense_macs == 256 * 2


def test_table_and_dict():
    model = support.mlp()
    report = ksm.sparsity_report(model)
    text = str(report)
    assert "total" in text and "compression 1.0x" in text
    for layer in model.layers:
        assert layer.name in text
    data = report.to_dict()
    assert data["prunable"] == report.prunable and len(data["rows"]) == 3


def test_subclassed_model_needs_no_graph():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden = keras.layers.Dense(8)
            self.out = keras.layers.Dense(3)

        def call(self, x):
            return self.out(self.hidden(x))

    model = Net()
    model(np.zeros((1, 5), "float32"))
    report = ksm.sparsity_report(model, input_shape=(5,))
    assert report.prunable == 5 * 8 + 8 * 3
    assert report.dense_macs == 5 * 8 + 8 * 3
