"""tfmot baseline: `prune_low_magnitude` + `PolynomialDecay` on the tf_keras twin.

Runs in its own process because importing tensorflow_model_optimization flips
Keras into legacy (tf_keras) mode. Called by `benchmarks.accuracy` as

    TF_USE_LEGACY_KERAS=1 python -m benchmarks.tfmot_worker '<json list of jobs>'

Each job: {"model", "compression", "seed", "epochs", "batch", "learning_rate",
"momentum", "end_fraction", "frequency", "train_limit", "test_limit"}. Prints
one line `RESULTS <json list>` with test accuracy, sparsity, per-layer
densities and seconds for each job.
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
import tf_keras  # noqa: E402

from benchmarks import data, models  # noqa: E402


def run_job(job):
    x, y, x_test, y_test = data.load_mnist(job["train_limit"], job["test_limit"])
    tf_keras.utils.set_random_seed(job["seed"])
    steps = int(np.ceil(len(x) / job["batch"])) * job["epochs"]
    target = 1.0 - 1.0 / job["compression"]
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0,
        final_sparsity=target,
        begin_step=0,
        end_step=max(1, int(job["end_fraction"] * steps)),
        frequency=job["frequency"],
    )
    model = tfmot.sparsity.keras.prune_low_magnitude(
        models.build(tf_keras, job["model"]), pruning_schedule=schedule
    )
    model.compile(
        optimizer=tf_keras.optimizers.SGD(job["learning_rate"], momentum=job["momentum"]),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    model.fit(
        x, y, batch_size=job["batch"], epochs=job["epochs"], verbose=0,
        callbacks=[tfmot.sparsity.keras.UpdatePruningStep()],
    )
    seconds = time.perf_counter() - start
    model = tfmot.sparsity.keras.strip_pruning(model)
    model.compile(
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    layers = models.layer_densities(model)
    size = sum(r[1] for r in layers)
    nonzeros = sum(r[2] for r in layers)
    return {
        "test_acc": float(accuracy),
        "sparsity": 1.0 - nonzeros / size,
        "layers": layers,
        "seconds": seconds,
        "versions": {"tfmot": tfmot.__version__, "tf_keras": tf_keras.__version__},
    }


def main(argv):
    jobs = json.loads(argv[1])
    results = [run_job(job) for job in jobs]
    print("RESULTS " + json.dumps(results), flush=True)


if __name__ == "__main__":
    main(sys.argv)
