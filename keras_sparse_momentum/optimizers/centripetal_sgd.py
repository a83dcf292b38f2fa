"""Centripetal SGD (Ding et al., CVPR 2019)."""

import logging
import math
import warnings

import keras
import numpy as np
from keras import ops

from keras_sparse_momentum import backend
from keras_sparse_momentum.optimizers import base
from keras_sparse_momentum.surgery.cluster_plan import KERNEL, STATISTIC, ClusterPlan

_LOG = logging.getLogger("keras_sparse_momentum")
# Above this relative intra-cluster distance the final merge visibly changes the model.
_UNCONVERGED = 0.05
# The distance the warning's suggested strength aims at (well below _UNCONVERGED).
_AIM = 0.01


def _cluster_mean(x, axis, ids, sizes):
    """x with every slice along `axis` replaced by the mean of its cluster's slices.

    `ids` gives each slice's cluster, `sizes` each cluster's size (numpy
    constants). A segment sum and a gather: O(size of x), where the product
    with the (C, C) merge matrix costs O(C) per entry and embeds C^2 constants
    per variable in the traced step (ConvNeXt-Tiny's 3,072-unit FFNs: 38 MB
    each, gigabytes in all).
    """
    moved = ops.moveaxis(x, axis, 0)
    sums = ops.segment_sum(moved, ids, num_segments=len(sizes))
    scale = (1.0 / sizes).reshape((-1,) + (1,) * (len(moved.shape) - 1))
    means = ops.multiply(sums, ops.cast(scale, x.dtype))
    return ops.moveaxis(ops.take(means, ids, axis=0), 0, axis)


@keras.saving.register_keras_serializable(package="keras_sparse_momentum")
class CentripetalSGD(base.PruningSGD):
    """Centripetal SGD: train clustered filters to become identical, then strip them.

    Reference: Ding, Ding, Guo, Han. "Centripetal SGD for Pruning Very Deep
    Convolutional Networks with Complicated Structure", CVPR 2019.

    A `ClusterPlan` splits the filters of every prunable layer into clusters
    (layers tied by residual additions share one clustering). For filter `i`
    of cluster `H` (rows of the reshaped kernel) the gradient is replaced by

    ```python
    g_i' = mean_{j in H}(g_j) + weight_decay * w_i
           + centripetal_strength * (w_i - mean_{j in H}(w_j))
    ```

    followed by (Nesterov) momentum, so the filters of a cluster receive the
    same data gradient and their differences decay geometrically. Singleton
    clusters reduce to momentum SGD with coupled decay. The layer's bias and
    the per-channel parameters of the following layers (BatchNorm gamma/beta,
    PReLU alpha) get the same merge with `0.1 * centripetal_strength` and no
    decay; DepthwiseConv kernels in a clustered space get the full strength.
    The merge is a segment mean per variable along its channel axis (a
    segment sum over the cluster ids, then a gather), linear in the
    variable's size and XLA-compatible.

    At the end of `fit` (`finalize_variable_values`, after any EMA swap) every
    cluster is made exactly identical: kernels, biases, BatchNorm gamma/beta
    and (if the plan is bound to the model, as `ClusterPlan.from_model` does)
    moving statistics are replaced by their cluster means. The largest relative
    intra-cluster distance seen just before is stored in
    `last_cluster_distance` and logged; above 0.05 a warning gives the
    `centripetal_strength` that would close the clusters within the same
    number of steps (estimated from the distance reached and the learning
    rates used). Then `ksm.strip(model, plan)` removes all but one filter per
    cluster without changing the function.

    Args:
        plan: a `ClusterPlan` (or its `to_dict()`).
        learning_rate: float or schedule. Defaults to 0.01.
        momentum: float in [0, 1). Defaults to 0.9 (paper).
        weight_decay: coupled L2 coefficient >= 0 on kernels (rank >= 2).
            Defaults to 1e-4 (paper, CIFAR).
        centripetal_strength: eps >= 0. Defaults to 3e-3 (paper, CIFAR; 0.05
            on ImageNet). With eps = 0 clusters only stop diverging.
        nesterov: Nesterov momentum. Defaults to True (paper).
        prunable: None or a callable; only used to check that the model has
            something prunable (the plan decides what is merged).
        **kwargs: the standard Keras optimizer arguments.
    """

    def __init__(
        self,
        plan,
        learning_rate=0.01,
        momentum=0.9,
        weight_decay=1e-4,
        centripetal_strength=3e-3,
        nesterov=True,
        prunable=None,
        name=None,
        **kwargs,
    ):
        owner = type(self).__name__
        if isinstance(plan, dict):
            plan = ClusterPlan.from_dict(plan)
        if not isinstance(plan, ClusterPlan):
            raise ValueError(
                f"{owner}: `plan` must be a ksm.ClusterPlan (ClusterPlan.from_model"
                f"(model, keep_ratio)) or its to_dict(). Received: plan={plan!r}"
            )
        strength = base.check_non_negative(centripetal_strength, "centripetal_strength", owner)
        super().__init__(
            learning_rate=learning_rate,
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            prunable=prunable,
            name=name,
            **kwargs,
        )
        self.plan = plan
        self.centripetal_strength = strength
        self.last_cluster_distance = None

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        trained = {m.path for m in self.plan.merges if m.kind != STATISTIC}
        merges = {v.path: m for m, v in self.plan.planned(variables) if m.kind != STATISTIC}
        missing = sorted(trained - {m.path for m in merges.values()})
        if missing:
            raise ValueError(
                f"{type(self).__name__}: the plan merges variables the model does not "
                f"train: {missing[:6]}. Make the plan from this model (and keep the "
                "clustered layers trainable)."
            )
        self.plan.check_bound(variables)
        self._merges = []
        for variable in variables:
            merge = merges.get(variable.path)
            if merge is None:
                self._merges.append(None)
                continue
            width = variable.shape[merge.axis]
            strength = self.centripetal_strength * (1.0 if merge.kind == KERNEL else 0.1)
            ids, sizes = merge.segments(width)
            self._merges.append((merge.axis, ids, sizes.astype(np.float32), strength))

    def transform_gradients(self, grads, variables):
        """g -> cluster-mean(g) + eps * (w - cluster-mean(w)) on every planned variable."""
        grads = list(grads)
        for i, variable in enumerate(variables):
            entry = self._merges[self._get_variable_index(variable)]
            if entry is None or grads[i] is None:
                continue
            axis, ids, sizes, strength = entry
            dtype = variable.dtype
            gradient = ops.cast(backend.dense_gradient(grads[i]), dtype)
            weights = backend.read(variable)
            pulled = ops.multiply(weights, ops.cast(strength, dtype))
            # mean(g) + eps (w - mean(w)) == mean(g - eps w) + eps w: one cluster mean, not two.
            grads[i] = ops.add(
                _cluster_mean(ops.subtract(gradient, pulled), axis, ids, sizes), pulled)
        return grads

    def finalize_variable_values(self, var_list):
        """EMA swap (if any), then every cluster made exactly identical."""
        super().finalize_variable_values(var_list)
        variables = list(var_list)
        model = self.plan.model
        if model is not None:
            variables += model.non_trainable_weights
        elif any(m.kind == STATISTIC for m in self.plan.merges):
            warnings.warn(
                f"{type(self).__name__}: the plan is not bound to a model, so BatchNorm "
                "moving statistics were not equalised; call `plan.bind(model)` before "
                "`fit` (plans restored from a config are unbound).",
                stacklevel=2,
            )
        self.last_cluster_distance = self.plan.equalize(variables)
        message = (
            f"{type(self).__name__}: largest relative intra-cluster distance before the "
            f"final merge: {self.last_cluster_distance:.3g}"
        )
        _LOG.info(message)
        if self.last_cluster_distance > _UNCONVERGED:
            warnings.warn(
                f"{message}; the clusters had not converged, so merging them changes "
                f"the model. {self._suggestion()}",
                stacklevel=2,
            )

    def _suggestion(self):
        """The concrete change: the strength that would close the clusters in this budget.

        A difference within a cluster shrinks by about
        `lr * centripetal_strength / (1 - momentum)` of itself per step (small
        steps), so over the `T` steps run, raising the strength by `d`
        shrinks it by a further factor `exp(-d * sum(lr) / (1 - momentum))`;
        `d` is chosen to take the distance reached down to _AIM.
        """
        steps = int(ops.convert_to_numpy(self.iterations))
        rate = self._learning_rate
        if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
            points = np.linspace(0, max(steps - 1, 0), num=min(steps, 64) or 1)
            mean_rate = float(np.mean([ops.convert_to_numpy(rate(int(p))) for p in points]))
        else:
            mean_rate = float(ops.convert_to_numpy(rate))
        reach = steps * mean_rate / (1.0 - self.momentum)
        if reach <= 0:
            return "Train longer or raise `centripetal_strength`."
        needed = self.centripetal_strength + math.log(self.last_cluster_distance / _AIM) / reach
        return (
            f"For this budget ({steps:,} steps) use centripetal_strength={needed:.2g} "
            f"instead of {self.centripetal_strength:g} (estimated to close the clusters to "
            f"{_AIM:g}), or train longer."
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "plan": self.plan.to_dict(),
                "centripetal_strength": self.centripetal_strength,
            }
        )
        return config
