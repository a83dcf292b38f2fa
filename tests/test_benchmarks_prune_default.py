"""benchmarks/prune_default.py: the default-vs-explicit comparison and its table (no training)."""

import types

import numpy as np

from benchmarks import prune_default


def test_run_compares_the_default_with_the_explicit_schedule_weight_for_weight(monkeypatch):
    """Fake training: SGD's default run matches its explicit run, ProxNAG's differs by 0.5."""
    def fine_tune(optimizer, schedule, weights, arrays, job):
        offset = 0.5 if (optimizer, schedule) == ("proxnag", None) else 0.0
        accuracy = {None: 0.95, "end": 0.90}.get(schedule, 0.95)
        record = {**job, "optimizer": optimizer, "schedule": schedule or "default",
                  "resolved": schedule or prune_default.EXPLICIT[optimizer],
                  "accuracy": accuracy, "sparsity": 0.9, "seconds": 1.0}
        return record, [w + offset for w in weights]

    monkeypatch.setattr(prune_default, "pretrain", lambda arrays, seed, epochs: [np.ones(3)])
    monkeypatch.setattr(prune_default, "fine_tune", fine_tune)
    monkeypatch.setattr(prune_default.bench_data, "load_mnist", lambda *limits: (None,) * 4)
    opts = types.SimpleNamespace(quick=False, seeds=2, checkpoint=None)
    records = prune_default.run(opts)["records"]
    assert len(records) == 2 * len(prune_default.RUNS)
    default = {r["optimizer"]: r for r in records if r["schedule"] == "default"}
    assert default["sgd"]["identical_to_explicit"] is True
    assert default["sgd"]["max_weight_difference"] == 0.0
    assert default["proxnag"]["identical_to_explicit"] is False
    assert default["proxnag"]["max_weight_difference"] == 0.5
    table = prune_default.render({"records": records}, out=None)
    assert "| SGD | default | polynomial | 2 | 95.00 ± 0.00 | [95.00, 95.00] | 90.00 | 2/2 | +5.00 |" in table
    assert "| ProxNAG | default | prox_iterative | 2 | 95.00 ± 0.00 | [95.00, 95.00] | 90.00 | 0/2 | +5.00 |" in table
    assert "| SGD | end | end | 2 | 90.00 ± 0.00 |" in table
