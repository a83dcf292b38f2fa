"""Tiny models, data and helpers shared by the tests."""

import keras
import numpy as np
import pytest


def mlp(inputs=16, hidden=(32, 24), outputs=4, name=None):
    """A small Sequential MLP."""
    layers = [keras.Input((inputs,))]
    layers += [keras.layers.Dense(h, activation="relu") for h in hidden]
    layers += [keras.layers.Dense(outputs)]
    return keras.Sequential(layers, name=name)


def classification_data(n=256, inputs=16, classes=4, seed=0):
    """Linearly separable-ish synthetic data."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, inputs)).astype("float32")
    w = rng.standard_normal((inputs, classes)).astype("float32")
    y = np.argmax(x @ w, axis=1).astype("int32")
    return x, y


def compile_for_test(model, optimizer, jit_compile="auto", metrics=None):
    """Compile with a logits loss; "auto" is eager on TensorFlow/CPU, jit on JAX (each's default)."""
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=metrics,
        jit_compile=jit_compile,
    )
    return model


def kernels(model):
    return [v for v in model.trainable_variables if v.name == "kernel"]


def nonzeros(variables):
    return sum(int(np.count_nonzero(keras.ops.convert_to_numpy(v))) for v in variables)


def top_magnitude_masks(arrays, keep):
    """Independent reference of the global cut: a full sort, not the package's partition.

    The `keep` entries of largest |value| over all arrays together survive; among
    equal magnitudes the earlier array, then the lower flat index, wins; zeros
    never count as kept.
    """
    flat = np.concatenate([np.abs(np.asarray(a, np.float64)).ravel() for a in arrays])
    order = np.lexsort((np.arange(flat.size), -flat))  # descending |value|, then index
    kept = np.zeros(flat.size, bool)
    kept[order[:keep]] = True
    kept &= flat != 0
    ends = np.cumsum([np.size(a) for a in arrays])[:-1]
    return [part.reshape(np.shape(a)) for part, a in zip(np.split(kept, ends), arrays)]


class Trajectory(keras.callbacks.Callback):
    """Records every weight of the model after every step."""

    def __init__(self):
        super().__init__()
        self.steps = []

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append([keras.ops.convert_to_numpy(w) for w in self.model.weights])


def tensorflow_only(what):
    """Skip a test that is TensorFlow-only by nature (`what` says why) on other backends."""
    return pytest.mark.skipif(
        keras.backend.backend() != "tensorflow", reason=f"TensorFlow only: {what}"
    )


def jit(fn):
    """`fn` compiled with XLA by the backend's own compiler (tf.function or jax.jit)."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(fn)
    import tensorflow as tf

    return tf.function(fn, jit_compile=True)
