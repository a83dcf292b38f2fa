"""tfmot column of `benchmarks/prox_nag_lenet5.py`: `prune_low_magnitude` on LeNet-5.

Runs in its own process because importing tensorflow_model_optimization flips
Keras into legacy (tf_keras) mode; for the same reason it imports neither
keras_sparse_momentum nor the Keras 3 benchmark modules. Called by
`benchmarks.prox_nag_lenet5` as

    TF_USE_LEGACY_KERAS=1 python -m benchmarks.tfmot_prox_worker '<json>'

The JSON object: {"data": path of mnist10k.npz, "weights": path of an .npz
holding the trained LeNet-5's `get_weights()` as arr_0, arr_1, ...,
"targets": [sparsity, ...], "epochs", "batch", "learning_rate", "momentum",
"end_step", "frequency", "seed", "batch_norm", "train_limit", "test_limit"}.
For each target it loads the trained weights into the tf_keras twin of
`prox_nag_lenet5.lenet5(keras, batch_norm)`, wraps it with
`prune_low_magnitude` + `PolynomialDecay(0 -> target, begin_step=0, end_step,
frequency)`, fine-tunes with Nesterov SGD and `UpdatePruningStep`, strips the
wrappers and evaluates. Prints one line `RESULTS <json list>`: test accuracy,
sparsity over the prunable kernels (Conv2D and Dense, as ksm counts them) and
fit seconds per target.
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


def lenet5(batch_norm):
    """The tf_keras twin of `benchmarks.prox_nag_lenet5.lenet5` (same layers, same order)."""
    layers = tf_keras.layers

    def block(layer):
        return [layer, layers.BatchNormalization(), layers.ReLU()] if batch_norm else [layer]

    activation = None if batch_norm else "relu"
    return tf_keras.Sequential(
        [tf_keras.Input((28, 28, 1))]
        + block(layers.Conv2D(6, 5, padding="same", use_bias=not batch_norm,
                              activation=activation))
        + [layers.MaxPooling2D()]
        + block(layers.Conv2D(16, 5, use_bias=not batch_norm, activation=activation))
        + [layers.MaxPooling2D(), layers.Flatten()]
        + block(layers.Dense(120, use_bias=not batch_norm, activation=activation))
        + block(layers.Dense(84, use_bias=not batch_norm, activation=activation))
        + [layers.Dense(10)],
    )


def load_data(path, train_limit=None, test_limit=None):
    """mnist10k as `benchmarks.data.load_mnist` gives it: float32 in [0, 1], (n, 28, 28, 1)."""
    with np.load(path) as data:
        x_train, y_train, x_test, y_test = (data[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    scale = lambda x: (x.astype("float32") / 255.0)[..., None]  # noqa: E731
    return (scale(x_train[:train_limit]), y_train[:train_limit].astype("int32"),
            scale(x_test[:test_limit]), y_test[:test_limit].astype("int32"))


def load_weights(path):
    with np.load(path) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


def kernel_sparsity(model):
    """1 - nonzeros / size over the kernels of Conv2D and Dense layers."""
    kernels = [np.asarray(layer.kernel) for layer in model.layers
               if getattr(layer, "kernel", None) is not None]
    size = sum(k.size for k in kernels)
    return 1.0 - sum(int(np.count_nonzero(k)) for k in kernels) / size


def run_target(job, target, data, weights):
    x, y, x_test, y_test = data
    tf_keras.utils.set_random_seed(job["seed"])
    model = lenet5(job["batch_norm"])
    model.set_weights(weights)
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=float(target), begin_step=0,
        end_step=int(job["end_step"]), frequency=int(job["frequency"]),
    )
    model = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
    model.compile(
        optimizer=tf_keras.optimizers.SGD(job["learning_rate"], momentum=job["momentum"],
                                          nesterov=True),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    model.fit(x, y, batch_size=job["batch"], epochs=job["epochs"], verbose=0,
              callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    seconds = time.perf_counter() - start
    model = tfmot.sparsity.keras.strip_pruning(model)
    model.compile(loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    return {"target": float(target), "accuracy": float(accuracy),
            "sparsity": kernel_sparsity(model), "fit_s": round(seconds, 1),
            "versions": {"tfmot": tfmot.__version__, "tf_keras": tf_keras.__version__}}


def main(argv):
    job = json.loads(argv[1])
    data = load_data(job["data"], job["train_limit"], job["test_limit"])
    weights = load_weights(job["weights"])
    results = [run_target(job, target, data, weights) for target in job["targets"]]
    print("RESULTS " + json.dumps(results), flush=True)


if __name__ == "__main__":
    main(sys.argv)
