import re

import pytest

from tfsparse import schedules


def test_polynomial_decay_matches_tfmot_formula_and_steps():
    s = schedules.PolynomialDecay(0.0, 0.9, begin_step=0, end_step=1000, frequency=100)
    assert s(0) == 0.0 and s(1000) == pytest.approx(0.9) and s(5000) == pytest.approx(0.9)
    assert s(500) == pytest.approx(0.9 - 0.9 * 0.5 ** 3)
    assert [t for t in range(0, 1300) if s.should_prune(t)] == list(range(0, 1001, 100))


def test_constant_sparsity_forever_and_offset_begin():
    s = schedules.ConstantSparsity(0.5, begin_step=10, frequency=5)
    assert s(3) == 0.5
    assert not s.should_prune(5) and s.should_prune(10) and s.should_prune(10_005) and not s.should_prune(11)


@pytest.mark.parametrize("kwargs, message", [
    (dict(initial_sparsity=0.0, final_sparsity=1.0, begin_step=0, end_step=10), r"final_sparsity.*\[0, 1\).*1\.0"),
    (dict(initial_sparsity=-0.1, final_sparsity=0.5, begin_step=0, end_step=10), r"initial_sparsity=-0\.1"),
    (dict(initial_sparsity=0.0, final_sparsity=0.5, begin_step=10, end_step=5), r"begin_step=10, end_step=5"),
    (dict(initial_sparsity=0.0, final_sparsity=0.5, begin_step=0, end_step=-1), r"end_step=-1"),
    (dict(initial_sparsity=0.0, final_sparsity=0.5, begin_step=0, end_step=10, frequency=0), r"frequency=0"),
])
def test_bad_schedule_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        schedules.PolynomialDecay(**kwargs)


def test_sigmoid_from_target_reaches_target_at_T_minus_2():
    s = schedules.Sigmoid.from_target(0.97, total_epochs=50, scale=5)
    assert s(48) == pytest.approx(0.97)
    assert s.magnitude > 0.97 and s(0) < 0.01
    with pytest.raises(ValueError, match="cannot be reached"):
        schedules.Sigmoid.from_target(0.97, total_epochs=4, scale=5)


@pytest.mark.parametrize("epochs", [5, 6, 8, 12, 20, 50])
@pytest.mark.parametrize("target", [0.5, 0.9, 0.95, 0.98, 0.995])
def test_sigmoid_default_scale_reaches_any_target_from_5_epochs(epochs, target):
    s = schedules.Sigmoid.from_target(target, total_epochs=epochs)
    assert s(epochs - 2) == pytest.approx(target) and s.magnitude < 1.0
    assert s.scale <= min(5.0, epochs / 10) and s(0) < s(epochs - 2)


def test_sigmoid_default_scale_is_the_papers_at_its_budgets():
    assert schedules.Sigmoid.default_scale(50) == 5.0  # LeNet-300-100: T = 50, k = 5
    assert schedules.Sigmoid.default_scale(20) == 2.0  # Conv-2: T = 20, k = 2
    assert schedules.Sigmoid.from_target(0.9, total_epochs=50).scale == 5.0


@pytest.mark.parametrize("target, epochs, scale", [(0.95, 8, 5.0), (0.95, 12, 5.0), (0.98, 4, 1.0), (0.9, 20, 9.0)])
def test_sigmoid_unreachable_target_advice_works(target, epochs, scale):
    with pytest.raises(ValueError, match="cannot be reached") as error:
        schedules.Sigmoid.from_target(target, total_epochs=epochs, scale=scale)
    advice = str(error.value)
    more_epochs = int(re.search(r"at least (\d+) epochs with scale", advice).group(1))
    assert schedules.Sigmoid.from_target(target, more_epochs, scale)(more_epochs - 2) == pytest.approx(target)
    with pytest.raises(ValueError, match="cannot be reached"):
        schedules.Sigmoid.from_target(target, more_epochs - 1, scale)
    smaller = re.search(r"a scale below ([0-9.]+)", advice)
    if epochs > 4:
        limit = float(smaller.group(1))
        assert schedules.Sigmoid.from_target(target, epochs, 0.98 * limit).magnitude < 1.0
    else:
        assert smaller is None  # no scale helps: S(T - 2) <= M / 2
    assert "leave scale unset" in advice


@pytest.mark.parametrize("epochs", [3, 4])
def test_sigmoid_too_few_epochs_for_a_high_target_says_how_many(epochs):
    with pytest.raises(ValueError, match=rf"total_epochs={epochs}.*at least 5 epochs"):
        schedules.Sigmoid.from_target(0.9, total_epochs=epochs)


def test_sigmoid_step_is_nearly_a_step_at_half():
    s = schedules.SigmoidStep(0.9, total_epochs=40)
    assert s(10) < 0.001 and s(20) == pytest.approx(0.45) and s(30) > 0.8999


@pytest.mark.parametrize("schedule", [
    schedules.PolynomialDecay(0.1, 0.8, 3, 300, power=2, frequency=7),
    schedules.ConstantSparsity(0.3, 2, 50, 4),
    schedules.Sigmoid(0.98, 50, 5),
    schedules.SigmoidStep(0.95, 30, beta=2.0),
])
def test_schedules_serialize(schedule):
    import keras

    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert type(clone) is type(schedule) and clone.get_config() == schedule.get_config()
    assert [clone(t) for t in range(0, 60, 3)] == [schedule(t) for t in range(0, 60, 3)]


def test_callable_schedule_is_wrapped_and_checked():
    s = schedules.get(lambda step: step / 1000, frequency=10)
    assert s(500) == 0.5 and s.should_prune(20) and not s.should_prune(21)
    with pytest.raises(ValueError, match=r"schedule\(2000\)"):
        s(2000)
