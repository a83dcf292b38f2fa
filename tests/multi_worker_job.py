"""One worker of the two-process MultiWorkerMirroredStrategy job of test_multi_worker.py.

Usage: TF_CONFIG=... python multi_worker_job.py OUT_DIR. Writes OUT_DIR/worker_<i>.json:
for plain `keras.optimizers.SGD` (the control) and GSMMomentum, whether Keras's
`fit` trains under the strategy (else the error and the Keras function that
raised it); and GSMMomentum's step count and nonzeros after the same steps in a
custom training loop (`strategy.run` + `optimizer.apply_gradients`), with its
weights in OUT_DIR/gsm_<i>.npz.
"""

import json
import os
import sys
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["KERAS_BACKEND"] = "tensorflow"

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

# Must come before anything else initialises TensorFlow's runtime.
strategy = tf.distribute.MultiWorkerMirroredStrategy()

import keras  # noqa: E402

keras.config.disable_traceback_filtering()  # keep Keras's frames: the test names where fit fails

import keras_sparse_momentum as ksm  # noqa: E402
from support import classification_data, mlp  # noqa: E402

GLOBAL_BATCH, STEPS = 32, 8


def dataset():
    x, y = classification_data(n=GLOBAL_BATCH * STEPS)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH).with_options(options)


def build(name):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = mlp()
        optimizer = (
            keras.optimizers.SGD(0.05, momentum=0.9)
            if name == "sgd"
            else ksm.GSMMomentum(0.05, momentum=0.9, weight_decay=0.0, compression=8)
        )
        model.compile(optimizer=optimizer,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        optimizer.build(model.trainable_variables)
    return model


def fit(name):
    model = build(name)
    try:
        model.fit(dataset(), epochs=1, verbose=0)
    except Exception as error:  # the upstream failure is the point of the control
        frames = [frame.name for frame in traceback.extract_tb(error.__traceback__)]
        return {"ok": False, "error": f"{type(error).__name__}: {str(error)[:80]}",
                "raised_in": [f for f in frames if f in ("_maybe_symbolic_build", "reduce")]}
    return {"ok": True, "steps": int(model.optimizer.iterations.numpy())}


def custom_loop(name):
    """The same steps with `strategy.run`: Keras's optimizer all-reduces the gradients."""
    model = build(name)
    per_example = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)

    @tf.function
    def step(batch):
        def replica_step(x, y):
            with tf.GradientTape() as tape:
                loss = tf.nn.compute_average_loss(
                    per_example(y, model(x, training=True)), global_batch_size=GLOBAL_BATCH)
            grads = tape.gradient(loss, model.trainable_variables)
            model.optimizer.apply_gradients(zip(grads, model.trainable_variables))

        strategy.run(replica_step, args=batch)

    for batch in strategy.experimental_distribute_dataset(dataset()):
        step(batch)
    model.optimizer.finalize_variable_values(model.trainable_variables)  # as fit's end does
    return model


def main(out):
    task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    start = time.perf_counter()
    report = {"fit": {name: fit(name) for name in ("sgd", "gsm")}}
    report["fit_seconds"] = time.perf_counter() - start
    model = custom_loop("gsm")
    np.savez(os.path.join(out, f"gsm_{task}.npz"), *model.get_weights())
    report["custom_loop"] = {
        "steps": int(model.optimizer.iterations.numpy()),
        "kept_count": model.optimizer.kept_count,
        "nonzero_kernels": sum(
            int(np.count_nonzero(v.numpy())) for v in model.trainable_variables
            if v.name == "kernel"),
        "seconds": time.perf_counter() - start,
    }
    with open(os.path.join(out, f"worker_{task}.json"), "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(sys.argv[1])
