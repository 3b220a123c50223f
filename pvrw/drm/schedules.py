"""Picklable schedules evaluated in agent steps, as DrQ-v2 / DrM's ``utils.schedule`` strings are.

SB3 schedules take ``progress_remaining`` (1 -> 0), which depends on the ``total_timesteps`` given to ``learn()``.
DrM's exploration schedule is defined in agent steps (``'linear(1.0,0.1,500000)'`` is evaluated at the number of steps
since the "awakening" step), so these classes take a step count. They are plain classes (not lambdas) so that a saved
model loads anywhere, see SB3 2.7.0 "non-portable schedules".
"""

from __future__ import annotations

import re
from typing import Union

import numpy as np


class StepSchedule:
    """Base class: a value as a function of an agent-step count."""

    def __call__(self, step: float) -> float:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self).__name__, *sorted(vars(self).items())))


class ConstantStepSchedule(StepSchedule):
    """
    A constant value (DrQ-v2 schedule string ``'0.2'``).

    :param value: the value returned at every step
    """

    def __init__(self, value: float):
        self.value = float(value)

    def __call__(self, step: float) -> float:
        return self.value

    def __repr__(self) -> str:
        return repr(self.value)


class LinearStepSchedule(StepSchedule):
    """
    ``linear(init,final,duration)``: ``(1 - mix) * init + mix * final`` with ``mix = clip(step / duration, 0, 1)``.

    :param init: value at step 0
    :param final: value from ``duration`` steps on
    :param duration: number of agent steps of the linear ramp
    """

    def __init__(self, init: float, final: float, duration: float):
        if duration <= 0:
            raise ValueError(f"duration must be > 0, got {duration}")
        self.init, self.final, self.duration = float(init), float(final), float(duration)

    def __call__(self, step: float) -> float:
        mix = float(np.clip(step / self.duration, 0.0, 1.0))
        return (1.0 - mix) * self.init + mix * self.final

    def __repr__(self) -> str:
        return f"linear({self.init:g},{self.final:g},{self.duration:g})"


class TwoPhaseLinearStepSchedule(StepSchedule):
    """
    ``step_linear(init,final1,duration1,final2,duration2)``: two consecutive linear ramps (DrQ-v2 ``utils.schedule``).

    :param init: value at step 0
    :param final1: value at ``duration1``
    :param duration1: length of the first ramp, in agent steps
    :param final2: value from ``duration1 + duration2`` on
    :param duration2: length of the second ramp, in agent steps
    """

    def __init__(self, init: float, final1: float, duration1: float, final2: float, duration2: float):
        if duration1 <= 0 or duration2 <= 0:
            raise ValueError(f"durations must be > 0, got {duration1} and {duration2}")
        self.init, self.final1, self.duration1 = float(init), float(final1), float(duration1)
        self.final2, self.duration2 = float(final2), float(duration2)

    def __call__(self, step: float) -> float:
        if step <= self.duration1:
            mix = float(np.clip(step / self.duration1, 0.0, 1.0))
            return (1.0 - mix) * self.init + mix * self.final1
        mix = float(np.clip((step - self.duration1) / self.duration2, 0.0, 1.0))
        return (1.0 - mix) * self.final1 + mix * self.final2

    def __repr__(self) -> str:
        return f"step_linear({self.init:g},{self.final1:g},{self.duration1:g},{self.final2:g},{self.duration2:g})"


ScheduleSpec = Union[float, int, str, StepSchedule]

_LINEAR = re.compile(r"^\s*linear\((.+),(.+),(.+)\)\s*$")
_STEP_LINEAR = re.compile(r"^\s*step_linear\((.+),(.+),(.+),(.+),(.+)\)\s*$")


def parse_step_schedule(spec: ScheduleSpec) -> StepSchedule:
    """
    Turn a DrQ-v2 schedule spec into a schedule object.

    :param spec: a number, a DrQ-v2 string (``'0.1'``, ``'linear(1.0,0.1,500000)'``,
        ``'step_linear(1.0,0.5,1e5,0.1,4e5)'``) or an existing :class:`StepSchedule` (returned as is)
    :return: the schedule, callable with an agent-step count
    """
    if isinstance(spec, StepSchedule):
        return spec
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return ConstantStepSchedule(spec)
    if isinstance(spec, str):
        try:
            return ConstantStepSchedule(float(spec))
        except ValueError:
            pass
        try:
            match = _LINEAR.match(spec)
            if match:
                return LinearStepSchedule(*(float(g) for g in match.groups()))
            match = _STEP_LINEAR.match(spec)
            if match:
                return TwoPhaseLinearStepSchedule(*(float(g) for g in match.groups()))
        except ValueError as error:
            raise ValueError(f"Invalid schedule {spec!r}: {error}") from error
    raise ValueError(
        f"Unknown schedule {spec!r}: use a number, 'linear(init,final,duration)', "
        "'step_linear(init,final1,duration1,final2,duration2)' or a pvrw.drm.schedules.StepSchedule"
    )
