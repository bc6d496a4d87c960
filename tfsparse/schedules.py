"""Sparsity schedules: pure functions of a step (or epoch) to a sparsity.

A schedule answers two questions for a step: `schedule(step)` is the target
sparsity there, and `schedule.should_prune(step)` whether the masks are
recomputed there. The unit of `step` is the method's: training steps for
MagnitudePruning (as in tfmot), epochs for ASNI and OptG.

`ConstantSparsity` and `PolynomialDecay` keep tfmot's argument names and
semantics (tfmot 0.8, `pruning_schedule.py`): pruning happens at steps
`begin_step + i * frequency` up to `end_step` (inclusive; `-1` means
forever), and the polynomial reaches `final_sparsity` at `end_step`.
"""

import math

import keras


def check_sparsity(value, name):
    """Returns `value` as a float, or raises unless it is a number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must be a number in [0, 1). Received: {name}={value!r}")
    return float(value)


def _check_steps(begin_step, end_step, frequency, allow_forever):
    if begin_step < 0:
        raise ValueError(f"`begin_step` must be >= 0. Received: begin_step={begin_step}")
    if end_step == -1 and not allow_forever:
        raise ValueError(
            "`end_step` must be given for a decaying schedule (-1 means "
            f"'never ends'). Received: end_step={end_step}"
        )
    if end_step != -1 and end_step < begin_step:
        raise ValueError(
            "`end_step` must be >= `begin_step` (or -1). Received: "
            f"begin_step={begin_step}, end_step={end_step}"
        )
    if frequency <= 0:
        raise ValueError(f"`frequency` must be > 0. Received: frequency={frequency}")


class Schedule:
    """Base class: `__call__(step) -> sparsity`, `should_prune(step) -> bool`."""

    def __call__(self, step):
        raise NotImplementedError

    def should_prune(self, step):
        return True

    def get_config(self):
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class _StepRangeSchedule(Schedule):
    def __init__(self, begin_step, end_step, frequency, allow_forever):
        _check_steps(begin_step, end_step, frequency, allow_forever)
        self.begin_step = int(begin_step)
        self.end_step = int(end_step)
        self.frequency = int(frequency)

    def should_prune(self, step):
        in_range = step >= self.begin_step and (self.end_step == -1 or step <= self.end_step)
        return in_range and (step - self.begin_step) % self.frequency == 0


@keras.saving.register_keras_serializable(package="tfsparse")
class ConstantSparsity(_StepRangeSchedule):
    """The same sparsity at every pruning step (tfmot's ConstantSparsity)."""

    def __init__(self, target_sparsity, begin_step=0, end_step=-1, frequency=100):
        super().__init__(begin_step, end_step, frequency, allow_forever=True)
        self.target_sparsity = check_sparsity(target_sparsity, "target_sparsity")

    def __call__(self, step):
        return self.target_sparsity

    def get_config(self):
        return {
            "target_sparsity": self.target_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "frequency": self.frequency,
        }


@keras.saving.register_keras_serializable(package="tfsparse")
class PolynomialDecay(_StepRangeSchedule):
    """Zhu & Gupta's gradual schedule (tfmot's PolynomialDecay).

    s(t) = s_f + (s_i - s_f) * (1 - p)^power, p = clip((t - begin) / (end - begin), 0, 1).
    With power 3 (the default) it prunes fast early and slowly late.
    """

    def __init__(
        self,
        initial_sparsity,
        final_sparsity,
        begin_step,
        end_step,
        power=3,
        frequency=100,
    ):
        super().__init__(begin_step, end_step, frequency, allow_forever=False)
        self.initial_sparsity = check_sparsity(initial_sparsity, "initial_sparsity")
        self.final_sparsity = check_sparsity(final_sparsity, "final_sparsity")
        self.power = power

    def __call__(self, step):
        if self.end_step == self.begin_step:  # a jump to the final sparsity
            progress = 1.0 if step >= self.begin_step else 0.0
        else:
            progress = min(1.0, max(0.0, (step - self.begin_step) / (self.end_step - self.begin_step)))
        return self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * (
            1.0 - progress
        ) ** self.power

    def get_config(self):
        return {
            "initial_sparsity": self.initial_sparsity,
            "final_sparsity": self.final_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "power": self.power,
            "frequency": self.frequency,
        }


@keras.saving.register_keras_serializable(package="tfsparse")
class Sigmoid(Schedule):
    """ASNI-I's schedule: S(t) = M * sigmoid((t - 0.5 T) / k), per epoch.

    Damadi et al., arXiv:2202.09284. `magnitude` is M as a fraction (0.98,
    not 98), `total_epochs` is T and `scale` is k, in epochs. M is an
    asymptote, not the final sparsity: see `Sigmoid.from_target`.
    """

    def __init__(self, magnitude, total_epochs, scale):
        self.magnitude = check_sparsity(magnitude, "magnitude")
        if total_epochs < 1:
            raise ValueError(f"`total_epochs` must be >= 1. Received: total_epochs={total_epochs}")
        if scale <= 0:
            raise ValueError(f"`scale` must be > 0. Received: scale={scale}")
        self.total_epochs = int(total_epochs)
        self.scale = float(scale)

    def __call__(self, epoch):
        return self.magnitude * _sigmoid((epoch - 0.5 * self.total_epochs) / self.scale)

    @classmethod
    def from_target(cls, target_sparsity, total_epochs, scale=None, at_epoch=None):
        """Derives M so that S(at_epoch) equals `target_sparsity`.

        `at_epoch` defaults to T - 2, the epoch whose network the ASNI paper
        reports. `scale=None` chooses k with `default_scale`.
        """
        target = check_sparsity(target_sparsity, "target_sparsity")
        at_epoch = total_epochs - 2 if at_epoch is None else at_epoch
        if scale is None:
            scale = cls.default_scale(total_epochs, target, at_epoch)
        magnitude = target / _sigmoid((at_epoch - 0.5 * total_epochs) / scale)
        if magnitude >= 1.0:
            raise ValueError(
                f"target_sparsity={target} cannot be reached at epoch {at_epoch} "
                f"with total_epochs={total_epochs} and scale={scale} (it would "
                f"need M={magnitude:.3f} >= 1). {_reach_advice(target, total_epochs, scale, at_epoch)}"
            )
        return cls(magnitude, total_epochs, scale)

    @staticmethod
    def default_scale(total_epochs, target_sparsity=None, at_epoch=None):
        """k for a budget of `total_epochs`: T / 10, at most 5.

        T / 10 is the paper's own choice at both of its budgets (k = 5 over
        50 epochs, k = 2 over 20). With a target, k is also small enough
        that S(at_epoch) passes the target with a margin of 0.5 in logit, so
        M stays below 1 on short budgets.
        """
        scale = min(5.0, total_epochs / 10)
        if target_sparsity is None:
            return scale
        at_epoch = total_epochs - 2 if at_epoch is None else at_epoch
        lead = at_epoch - 0.5 * total_epochs
        if lead <= 0:
            # S(at_epoch) <= M / 2: only targets below 1/2 are reachable, with a large k.
            if target_sparsity >= 0.5:
                raise ValueError(
                    f"target_sparsity={target_sparsity} cannot be reached with total_epochs="
                    f"{total_epochs}: the reported network is the one after epoch T - 2 = {at_epoch}, "
                    f"where the sigmoid has not passed 1/2. {_reach_advice(target_sparsity, total_epochs, None, at_epoch)}"
                )
            return max(scale, 5.0)
        return min(scale, lead / (_logit(target_sparsity) + 0.5))

    def get_config(self):
        return {"magnitude": self.magnitude, "total_epochs": self.total_epochs, "scale": self.scale}


@keras.saving.register_keras_serializable(package="tfsparse")
class SigmoidStep(Schedule):
    """OptG's schedule: s(e) = s_target * sigmoid(beta * (e - E/2)), per epoch.

    Zhang et al., arXiv:2201.12826. With beta = 1 it is nearly a step at E/2.

    With `end_at_target=True` (our addition) the values are divided by
    sigmoid(beta * (E/2 - 1)), so the last epoch, e = E - 1, has exactly the
    target: over the paper's 100 epochs the factor differs from 1 by 1e-21,
    but over 10 epochs the plain formula stops at 0.982 of the target.
    """

    def __init__(self, target_sparsity, total_epochs, beta=1.0, end_at_target=False):
        self.target_sparsity = check_sparsity(target_sparsity, "target_sparsity")
        if total_epochs < 1:
            raise ValueError(f"`total_epochs` must be >= 1. Received: total_epochs={total_epochs}")
        self.total_epochs = int(total_epochs)
        self.beta = float(beta)
        self.end_at_target = bool(end_at_target)

    def __call__(self, epoch):
        value = _sigmoid(self.beta * (epoch - 0.5 * self.total_epochs))
        if self.end_at_target:
            value = min(value / _sigmoid(self.beta * (0.5 * self.total_epochs - 1)), 1.0)
        return self.target_sparsity * value

    def get_config(self):
        return {
            "target_sparsity": self.target_sparsity,
            "total_epochs": self.total_epochs,
            "beta": self.beta,
            "end_at_target": self.end_at_target,
        }


class FunctionSchedule(Schedule):
    """Wraps any callable `step -> sparsity`; prunes every `frequency` steps."""

    def __init__(self, function, frequency=100):
        if not callable(function):
            raise TypeError(f"`function` must be callable. Received: function={function!r}")
        if frequency <= 0:
            raise ValueError(f"`frequency` must be > 0. Received: frequency={frequency}")
        self.function = function
        self.frequency = int(frequency)

    def __call__(self, step):
        return check_sparsity(float(self.function(step)), f"schedule({step})")

    def should_prune(self, step):
        return step % self.frequency == 0

    def get_config(self):
        return {
            "function": keras.saving.serialize_keras_object(self.function),
            "frequency": self.frequency,
        }


def get(schedule, frequency=100):
    """A `Schedule` from a Schedule or a callable `step -> sparsity`."""
    if isinstance(schedule, Schedule):
        return schedule
    if callable(schedule):
        return FunctionSchedule(schedule, frequency)
    raise TypeError(
        "`schedule` must be a tfsparse.schedules.Schedule or a callable "
        f"step -> sparsity. Received: schedule={schedule!r}"
    )


def _sigmoid(x):
    # Two forms so that exp never overflows (a steep schedule far from its middle).
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def _logit(p):
    return math.log(p / (1.0 - p))


def _reach_advice(target, total_epochs, scale, at_epoch):
    """How to make S(at_epoch) = target reachable: a smaller k or more epochs."""
    margin = total_epochs - at_epoch  # epochs after the reported one (2 by default)
    # S(T - margin) > target  <=>  (T / 2 - margin) / k > logit(target)
    if scale is None:
        return f"Train for at least {2 * margin + 1} epochs."
    epochs = math.floor(2 * (scale * _logit(target) + margin)) + 1
    lead = at_epoch - 0.5 * total_epochs
    smaller = f"a scale below {lead / _logit(target):.3g}, " if lead > 0 else ""
    return f"Use {smaller}at least {epochs} epochs with scale={scale}, or leave scale unset to have it chosen."

