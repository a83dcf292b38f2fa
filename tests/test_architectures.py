"""Issue 16's matrix in CI: every entry point on small real architectures either keeps its
guarantee or refuses with a ValueError from keras_sparse_momentum naming the layer.

The cells are those of the `architectures` benchmark section (benchmarks/architectures.py,
which documents each guarantee); here they run on its smallest models, and every cell's
outcome is pinned: which ones hold (with their numbers re-checked) and which refuse (with
the layer the refusal must name). No shape error, no silently changed function.
"""

import pytest
from architectures import mobilenet_v3_block

from benchmarks import architectures as arch_bench
from keras_sparse_momentum.surgery.strip import TOLERANCE

# keras.applications' MobileNetV3Small costs ~2 CPU-minutes here; the benchmark runs it, CI
# runs a block with the same constructs (keras.ops hard-swish, depthwise, squeeze-excite).
TINY = {"MobileNetV3 block": mobilenet_v3_block}
MODELS = ("ViT block (MultiHeadAttention)", "Embedding + LSTM", "GRU", "Conv1D + BN",
          "MobileNetV3 block")
# Entry points whose refusal is the right answer, and the layer the message must name.
REFUSED = {
    ("Embedding + LSTM", "csgd"): "lstm", ("Embedding + LSTM", "gsm_csgd"): "lstm",
    ("Embedding + LSTM", "aofp"): "lstm",
    ("GRU", "csgd"): "gru_1", ("GRU", "gsm_csgd"): "gru_1", ("GRU", "aofp"): "gru_1",
}
STRIPS = ("strip", "csgd", "aofp", "gsm_csgd", "export")


@pytest.fixture(scope="module", params=MODELS)
def arch(request):
    return arch_bench.Architecture(request.param, build=TINY.get(request.param))


@pytest.mark.parametrize("entry", arch_bench.ENTRY_POINTS)
def test_entry_point_holds_or_refuses_naming_the_layer(arch, entry):
    cell = arch_bench.run_cell(arch, entry)
    layer = REFUSED.get((arch.name, entry))
    if layer is not None:
        assert cell.outcome == "refused", cell
        assert f"'{layer}'" in cell.detail and arch_bench.names_a_layer(arch, cell.detail)
        return
    assert cell.outcome == "ok", cell.detail
    if entry in ("gsm", "prune_to_ratio"):
        assert cell.numbers["nonzero"] == cell.numbers["expected"] > 0
    if entry in STRIPS:
        assert 0 <= cell.relative_error <= TOLERANCE
    if entry in ("csgd", "aofp", "gsm_csgd"):  # something was removed: not a trivial strip
        assert cell.numbers["params_after"] < cell.numbers["params"]
    if entry == "gsm_csgd":  # issue 16's Conv1D bug needed filters GSM had zeroed whole
        assert cell.numbers["gsm_dead_filters"] > 0


def _nudged(model):
    """The float64 copy of `model` with one bias moved by 1e-3 (a strip that changed it)."""
    changed = arch_bench.float64_copy(model)
    changed.get_layer("logits").bias.assign([1e-3] + [0.0] * 9)
    return changed


def test_the_float64_recheck_does_not_pass_a_changed_function():
    """A strip whose float32 error exceeds the tolerance is judged on the float64 copy: the
    same strip made there must agree exactly and keep the same shapes, and the float32 error
    must stay within the source's own float32 rounding; here the float32 error fails it."""
    arch = arch_bench.Architecture("Conv1D + BN")
    wide = arch_bench.float64_copy(arch.model)
    assert wide.inputs[0].dtype == "float64"
    assert {l.compute_dtype for l in wide.layers[1:]} == {"float64"}
    exact = lambda model: model  # noqa: E731 - a strip that changes nothing
    error, ok, numbers = arch_bench._strip_check(arch, arch.model, arch.model, exact)
    assert (error, ok, numbers) == (0.0, True, {})

    changed = _nudged(arch.model)  # a float64 model: its float32 error is 0
    error, ok, numbers = arch_bench._strip_check(arch, arch.model, changed, exact)
    assert not ok and error > arch_bench.TOLERANCE  # above the source's float32 noise
    assert numbers["float64_relative_error"] == 0.0
    assert numbers["float32_noise_of_reference"] < 1e-6


def test_the_float64_recheck_wants_an_exact_strip_with_the_same_shapes(monkeypatch):
    """With the float32 error inside the source's noise, a float64 strip that changes the
    function, or keeps other weights than the float32 one, fails the recheck."""
    arch = arch_bench.Architecture("Conv1D + BN")
    monkeypatch.setattr(arch_bench, "TOLERANCE", -1.0)  # every check goes to float64

    def with_one_more_weight(model):
        model.add_weight(shape=(1,), initializer="zeros", trainable=False, name="extra")
        return model

    assert arch_bench._strip_check(arch, arch.model, arch.model, lambda m: m)[1]
    assert not arch_bench._strip_check(arch, arch.model, arch.model, with_one_more_weight)[1]
    error, ok, numbers = arch_bench._strip_check(arch, arch.model, arch.model, _nudged)
    assert not ok and numbers["float64_relative_error"] > arch_bench.FLOAT64_TOLERANCE
