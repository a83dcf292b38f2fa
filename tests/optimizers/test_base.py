"""PruningSGD and the argument checks every pruning optimizer shares (optimizers/base.py)."""

import copy
import re

import keras
import numpy as np
import pytest
from keras import ops

from keras_sparse_momentum.optimizers import base
from support import tensorflow_only


class Sub(base.PruningSGD):
    """A subclass: messages name the class the user constructed."""


def _dense_stack(layers, dtype="float32"):
    return keras.Sequential(
        [keras.Input((3,), dtype=dtype)]
        + [keras.layers.Dense(2, dtype=dtype, name=f"d{i}") for i in range(layers)],
        name="m",
    )


def _rule(variable):  # a user's own `prunable`, not registered with Keras
    return variable.path == "m/d0/kernel"


# -- argument checks ------------------------------------------------------------


def test_is_int_accepts_ints_but_not_bools_or_floats():
    assert [base.is_int(v) for v in (0, 7, -3)] == [True, True, True]
    assert [base.is_int(v) for v in (True, False, 2.0, "2", None)] == [False] * 5


@pytest.mark.parametrize("value, closed_right", [(0, False), (0.0, False), (0.999, False),
                                                 (0, True), (1, True), (1.0, True)])
def test_unit_interval_accepts_its_ends_as_floats(value, closed_right):
    checked = base.check_unit_interval(value, "momentum", "Owner", closed_right=closed_right)
    assert checked == value and type(checked) is float


@pytest.mark.parametrize("value, closed_right, interval", [
    (1, False, "[0, 1)"), (1.0, False, "[0, 1)"), (-1e-12, False, "[0, 1)"),
    (1 + 1e-12, True, "[0, 1]"), (-1e-12, True, "[0, 1]"), (float("nan"), True, "[0, 1]"),
    (True, True, "[0, 1]"), (False, False, "[0, 1)"), ("0.5", False, "[0, 1)"),
    (None, True, "[0, 1]"),
])
def test_unit_interval_names_argument_range_and_value(value, closed_right, interval):
    with pytest.raises(ValueError) as caught:
        base.check_unit_interval(value, "momentum", "Owner", closed_right=closed_right)
    assert str(caught.value) == (
        f"Owner: `momentum` must be a number in {interval}. Received: momentum={value!r}")


def test_unit_interval_is_half_open_by_default():
    with pytest.raises(ValueError, match=re.escape("in [0, 1). Received: momentum=1")):
        base.check_unit_interval(1, "momentum", "Owner")


@pytest.mark.parametrize("value", [0, 0.0, 3, 1e300])
def test_non_negative_accepts_zero_and_large_finite_numbers_as_floats(value):
    checked = base.check_non_negative(value, "l1", "Owner")
    assert checked == value and type(checked) is float


@pytest.mark.parametrize("value", [-1e-12, -1, float("inf"), float("nan"), True, "1", None])
def test_non_negative_names_argument_range_and_value(value):
    with pytest.raises(ValueError) as caught:
        base.check_non_negative(value, "l1", "Owner")
    assert str(caught.value) == f"Owner: `l1` must be a finite number >= 0. Received: l1={value!r}"


def test_constructor_errors_name_the_class_constructed():
    with pytest.raises(ValueError) as caught:
        Sub(momentum=1.0)
    assert str(caught.value) == "Sub: `momentum` must be a number in [0, 1). Received: momentum=1.0"
    with pytest.raises(ValueError) as caught:
        Sub(weight_decay=-1)
    assert str(caught.value) == (
        "Sub: `weight_decay` must be a finite number >= 0. Received: weight_decay=-1")


def test_defaults_are_momentum_sgd_without_decay():
    config = base.PruningSGD().get_config()
    assert config["learning_rate"] == pytest.approx(0.01, rel=1e-7)  # a float32 variable
    assert (config["momentum"], config["nesterov"], config["prunable"]) == (0.9, False, None)
    assert base.PruningSGD().weight_decay == 0.0


def test_constructor_normalises_what_keras_would_refuse_or_store_raw():
    opt = base.PruningSGD(learning_rate=1, momentum=0, nesterov=1, weight_decay=None, name="mine")
    config = opt.get_config()
    assert type(config["learning_rate"]) is float and config["learning_rate"] == 1.0
    assert config["momentum"] == 0.0 and config["nesterov"] is True
    assert opt.weight_decay == 0.0 and type(opt.weight_decay) is float
    assert opt.name == "mine" and config["name"] == "mine"
    # Keras's own decoupled decay stays off: the coefficient is the coupled one.
    assert config["weight_decay"] == 0.0
    assert base.PruningSGD(weight_decay=3).weight_decay == 3.0


# -- which variables are prunable / decayed ----------------------------------------


def test_prunable_flags_count_and_membership():
    model = _dense_stack(2)  # d0: kernel (3, 2), bias; d1: kernel (2, 2), bias
    opt = base.PruningSGD()
    opt.build(model.trainable_variables)
    assert opt.prunable_count == 3 * 2 + 2 * 2
    kernel0, bias0, kernel1, bias1 = model.trainable_variables
    assert [opt.is_prunable(v) for v in model.trainable_variables] == [True, False, True, False]
    assert opt.is_prunable(keras.Variable(np.zeros((3, 2)), name="kernel")) is False
    assert opt.prunable_trainables(model.trainable_variables) == [kernel0, kernel1]

    own = base.PruningSGD(prunable=_rule)
    own.build(model.trainable_variables)
    assert own.prunable_count == 6
    assert own.prunable_trainables(model.trainable_variables) == [kernel0]


def test_build_twice_keeps_the_first_flags():
    model = _dense_stack(2)
    opt = base.PruningSGD()
    opt.build(model.trainable_variables)
    opt.build(model.trainable_variables[:2])  # built already: a no-op
    assert opt.prunable_count == 10


def test_nothing_to_prune_names_the_count_and_the_first_eight_variables():
    model = _dense_stack(5)  # 10 trainable variables
    opt = Sub(prunable=lambda v: False)
    with pytest.raises(ValueError) as caught:
        opt.build(model.trainable_variables)
    names = [f"m/d{i}/{kind}" for i in range(4) for kind in ("kernel", "bias")]
    assert str(caught.value) == (
        f"Sub found nothing to prune: none of the 10 trainable variables {names} is "
        "selected by `prunable` (default: kernels of Dense/Conv layers). Pass "
        "`prunable=callable` or use a plain Keras optimizer.")


@tensorflow_only("float64 variables (JAX runs without jax_enable_x64: Keras makes them float32)")
@pytest.mark.parametrize("nesterov", [False, True])
def test_coupled_decay_in_float64_matches_numpy_exactly(nesterov):
    """g + wd * w on rank >= 2 variables not excluded, in the variable's dtype (float64 here).

    Biases (rank 1) and the excluded kernel get the plain gradient. As in Keras's
    SGD, the hyperparameters are float32 numbers (the learning rate is a float32
    variable; `ops.cast` of a Python float goes through a float32 tensor), the
    gradients and weights stay float64: a float32 rounding of the gradient shows
    at 1e-9.
    """
    model = _dense_stack(2, dtype="float64")
    variables = model.trainable_variables
    lr, momentum, wd = 0.1, 0.9, 0.3
    opt = base.PruningSGD(lr, momentum=momentum, nesterov=nesterov, weight_decay=wd)
    opt.exclude_from_weight_decay(var_list=[variables[2]])  # d1/kernel
    rng = np.random.default_rng(0)
    values = [v.numpy().copy() for v in variables]
    velocities = [np.zeros_like(v) for v in values]
    decayed = [True, False, False, False]  # d0/kernel only: d1/kernel is excluded, biases are rank 1
    lr64, momentum64, wd64 = (float(np.float32(h)) for h in (lr, momentum, wd))
    for _ in range(2):
        grads = [rng.standard_normal(v.shape) for v in values]
        opt.apply([keras.ops.convert_to_tensor(g, "float64") for g in grads], variables)
        for i, (g, decay) in enumerate(zip(grads, decayed)):
            g = g + wd64 * values[i] if decay else g
            velocities[i] = momentum64 * velocities[i] - lr64 * g
            step = momentum64 * velocities[i] - lr64 * g if nesterov else velocities[i]
            values[i] = values[i] + step
    for variable, expected in zip(variables, values):
        assert variable.dtype == "float64"
        np.testing.assert_allclose(variable.numpy(), expected, rtol=0, atol=1e-14)


# -- serialisation ----------------------------------------------------------------


def test_config_without_prunable_stores_none():
    config = base.PruningSGD().get_config()
    assert config["prunable"] is None
    assert base.PruningSGD.from_config(config).prunable is None


def test_config_round_trip_of_user_objects_needs_and_uses_custom_objects():
    class Halving(keras.optimizers.schedules.LearningRateSchedule):  # unregistered, local
        def __call__(self, step):
            return 0.1 * 0.5 ** ops.floor(step / 10)

        def get_config(self):
            return {}

    opt = base.PruningSGD(Halving(), weight_decay=1e-4, prunable=_rule)
    config = opt.get_config()
    assert isinstance(config["prunable"], dict) and config["prunable"]["config"] == "_rule"
    kept = copy.deepcopy(config)
    custom = {"_rule": _rule, "Halving": Halving}
    clone = base.PruningSGD.from_config(config, custom_objects=custom)
    assert clone.prunable is _rule and clone._is_prunable is _rule
    assert isinstance(clone._learning_rate, Halving)
    assert clone.get_config() == config
    assert config == kept  # the caller's config is not mutated
    with pytest.raises(TypeError, match="Could not locate function '_rule'"):
        base.PruningSGD.from_config(config, custom_objects={"Halving": Halving})
    with pytest.raises(TypeError, match="Could not locate class 'Halving'"):
        base.PruningSGD.from_config(config, custom_objects={"_rule": _rule})
