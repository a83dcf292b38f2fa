"""The backend seam: every call of the optimizers that differs between backends.

The pruning optimizers need one hook per training step over *all* gradients
(GSM's global top-Q, C-SGD's cluster merge), taken on gradients that are
already global so that every replica or process decides the same. Where that
hook sits depends on the backend; everything else in the package is
`keras.ops` and runs unchanged on both.

TensorFlow. Keras's TF optimizer all-reduces the gradients of the
`tf.distribute` replicas inside `_backend_update_step`
(`_all_reduce_sum_gradients`) and then, in cross-replica context
(`tf.__internal__.distribute.interim.maybe_merge_call`), applies
`update_step` to each variable. `update_step` is run with the same
arguments, `transform_gradients` between the two. Variables arrive as
`tf.Variable`s (mirrored ones under a strategy) and are read with
`tf.convert_to_tensor`; an `Embedding` gradient is a `tf.IndexedSlices`,
densified before it is ranked or merged.

JAX. The train step is one pure function traced by `jax.jit`; the optimizer
runs inside a `StatelessScope` whose mapping gives every Keras variable
(model and optimizer) its traced value. Gradients are already global: under
`keras.distribution` (`DataParallel`, one or several processes) the batch is
sharded and XLA's partitioner inserts the all-reduce into the gradient
computation itself, so the hook is `transform_gradients` followed by
`update_step` per variable, as Keras's own generic optimizer does. Gradients
are always dense arrays.

Torch is refused (`check_backend`): the same generic path would apply, but it
is untested.
"""

import keras
from keras import ops

SUPPORTED = ("tensorflow", "jax")
BACKEND = keras.backend.backend()

if BACKEND == "tensorflow":
    import tensorflow as tf


def check_backend():
    """Fail early, with the fix, on a backend the optimizers do not support."""
    if BACKEND not in SUPPORTED:
        raise RuntimeError(
            "keras-sparse-momentum optimizers support the Keras backends "
            f"{' and '.join(SUPPORTED)}; Keras is using '{BACKEND}'. Set "
            "KERAS_BACKEND=tensorflow or KERAS_BACKEND=jax before importing keras."
        )


def dense_gradient(gradient):
    """The gradient as a dense tensor (TF's `IndexedSlices` from Embedding are densified)."""
    if BACKEND == "tensorflow" and isinstance(gradient, tf.IndexedSlices):
        return tf.convert_to_tensor(gradient)
    return gradient


def read(variable):
    """The current value of a variable handed to `transform_gradients`, as a tensor."""
    if BACKEND == "tensorflow":
        return tf.convert_to_tensor(variable)  # a (mirrored) tf.Variable
    return ops.convert_to_tensor(variable)  # a Keras variable, read in the stateless scope


def update_all(optimizer, grads, trainable_variables, learning_rate):
    """`optimizer._backend_update_step` with `transform_gradients` on global gradients.

    TensorFlow: all-reduce across replicas, transform once (in replica
    context, identically on each replica), then the per-variable
    `update_step` in cross-replica context, exactly as Keras's TF optimizer.
    JAX: transform, then `update_step` per variable (gradients are global).
    """
    if BACKEND == "tensorflow":
        variables = [
            v.value if isinstance(v, keras.Variable) else v for v in trainable_variables
        ]
        reduced = optimizer._all_reduce_sum_gradients(list(zip(grads, variables)))
        grads = optimizer.transform_gradients([g for g, _ in reduced], variables)
        tf.__internal__.distribute.interim.maybe_merge_call(
            optimizer._distributed_tf_update_step,
            optimizer._distribution_strategy,
            list(zip(grads, variables)),
            learning_rate,
        )
        return
    variables = list(trainable_variables)
    grads = optimizer.transform_gradients(list(grads), variables)
    for gradient, variable in zip(grads, variables):
        optimizer.update_step(gradient, variable, learning_rate)
