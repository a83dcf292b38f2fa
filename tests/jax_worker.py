"""One process of the two-process JAX data-parallel test (and the runs it is compared with).

`python tests/jax_worker.py PROCESS_ID PORT OUT_DIR` joins a two-process JAX
cluster on 127.0.0.1:PORT (CPU collectives over gloo), trains each run of
`METHODS` (GSM; ProxNAG, then PruneToRatio's final cut; SGD under
PruneToRatio's polynomial schedule) under
`keras.distribution.DataParallel` over both processes' devices with this
process's shard of each global batch, and writes the final weights to
OUT_DIR/<method>_<process>.npz. `fit_method` is also what the test runs in
one process over the same global batches.
"""

import os
import sys

if __name__ == "__main__":
    os.environ["KERAS_BACKEND"] = "jax"
    os.environ.setdefault("JAX_THREEFRY_PARTITIONABLE", "0")

import keras  # noqa: E402
import numpy as np  # noqa: E402

METHODS = ("gsm", "prox_nag_end", "sgd_polynomial")
PROCESSES = 2
GLOBAL_BATCH = 32
EPOCHS = 2


def data():
    """256 examples; global batch i is examples [32 i, 32 i + 32)."""
    from support import classification_data

    return classification_data()


def local_shard(x, process):
    """This process's half of every global batch, in order (what it feeds to `fit`)."""
    local = GLOBAL_BATCH // PROCESSES
    batches = x.reshape(-1, PROCESSES, local, *x.shape[1:])
    return batches[:, process].reshape(-1, *x.shape[1:])


def fit_method(method, x, y, batch_size):
    """Train the small MLP of the tests with `method`; returns the model."""
    import keras_sparse_momentum as ksm
    from support import compile_for_test, mlp

    callbacks = []
    if method == "gsm":
        optimizer = ksm.GSMMomentum(0.05, momentum=0.9, compression=8, nesterov=True)
    elif method == "prox_nag_end":  # ProxNAG's sparse iterate, then the cut to exactly 80 %
        optimizer = ksm.ProxNAG(0.05, momentum=0.9, l1=0.03)
        callbacks = [ksm.PruneToRatio(sparsity=0.8, schedule="end")]
    else:  # SGD with PruneToRatio's masks, held inside the step, raised every 2 steps
        optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
        callbacks = [ksm.PruneToRatio(sparsity=0.8, schedule="polynomial", frequency=2)]
    keras.utils.set_random_seed(0)
    model = compile_for_test(mlp(), optimizer, jit_compile=True)
    model.fit(x, y, batch_size=batch_size, epochs=EPOCHS, shuffle=False, verbose=0,
              callbacks=callbacks)
    return model


def local_values(model):
    """This process's copy of every weight (replicated arrays: the first local shard)."""
    return [np.asarray(w.value.addressable_shards[0].data) for w in model.weights]


def main(process, port, out):
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=PROCESSES,
        process_id=process, initialization_timeout=120,
    )
    # Each process feeds its own shard of every global batch (no tf.data auto-sharding).
    distribution = keras.distribution.DataParallel(devices=jax.devices(), auto_shard_dataset=False)
    keras.distribution.set_distribution(distribution)
    x, y = data()
    x, y = local_shard(x, process), local_shard(y, process)
    for method in METHODS:
        model = fit_method(method, x, y, GLOBAL_BATCH // PROCESSES)
        np.savez(os.path.join(out, f"{method}_{process}.npz"), *local_values(model))
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
