"""Target tracking the way Application Auto Scaling runs it for SageMakerVariantInvocationsPerInstance:
through two CloudWatch alarms on one-minute datapoints of invocations per instance.

- The high alarm fires when the last 3 of 3 datapoints are above the target: scale out.
- The low alarm fires when the last 15 of 15 datapoints are below 90 % of the target: scale in.
- A minute without invocations has no datapoint: SageMaker emits InvocationsPerInstance only for
  invocations, and missing datapoints put the alarms in INSUFFICIENT_DATA, where Application Auto
  Scaling does not scale until datapoints come again (its target tracking considerations). So an
  endpoint without traffic is never scaled in; traffic at a low rate is.
  (CloudWatch may look a few periods further back for real datapoints; here an alarm's own periods
  must all have one.)
- While an alarm is firing, the capacity asked for is ceil(current x metric / target), clamped to the
  scalable target's range, and the cooldowns decide whether it may start now (core.scaling.cooldown_allows).

So a burst shorter than three minutes scales nothing, and an endpoint scales in a quarter of an
hour after its traffic fell to a low rate (not after it stopped). `time_scale` compresses the
policy's minutes for demonstrations (a time scale of 60 makes a datapoint one second and a 100 s
cooldown 1.7 s) without changing the policy:
a datapoint stays a rate per minute (the invocations of its shorter period, times 60 / its length), so
the target means the same requests per second at any time scale.
"""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

PERIOD_SECONDS = 60.0  # one datapoint: a minute of InvocationsPerInstance
SCALE_OUT_DATAPOINTS = 3
SCALE_IN_DATAPOINTS = 15
SCALE_IN_RATIO = 0.9
MAX_TIME_SCALE = 600.0  # a datapoint of 0.1 s: finer than that, the gateway's own timing would show


@dataclass(frozen=True)
class Alarm:
    direction: str  # "out" or "in"
    metric: float  # the latest datapoint, invocations per instance per minute
    threshold: float
    datapoints: int


def firing_alarm(datapoints: Sequence[float | None], target: float) -> Alarm | None:
    """The alarm that is in ALARM after `datapoints` (oldest first, complete periods only; None: a period
    without invocations, which breaches neither alarm), or None."""
    if not target > 0:
        raise ValueError(f"target must be > 0, got {target!r}")
    high = datapoints[-SCALE_OUT_DATAPOINTS:]
    if len(high) == SCALE_OUT_DATAPOINTS and all(v is not None and v > target for v in high):
        return Alarm("out", high[-1], target, SCALE_OUT_DATAPOINTS)
    low_threshold = target * SCALE_IN_RATIO
    low = datapoints[-SCALE_IN_DATAPOINTS:]
    if len(low) == SCALE_IN_DATAPOINTS and all(v is not None and v < low_threshold for v in low):
        return Alarm("in", low[-1], low_threshold, SCALE_IN_DATAPOINTS)
    return None


def capacity_for(alarm: Alarm, current: int, target: float, min_capacity: int, max_capacity: int) -> int:
    """What the firing alarm asks for: ceil(current x metric / target) within [min, max], never against
    the alarm's direction (a scale-out alarm never asks for fewer instances, nor a scale-in for more)."""
    if current < 1:
        return max(min_capacity, 1)
    wanted = math.ceil(current * alarm.metric / target - 1e-9)
    wanted = max(wanted, current) if alarm.direction == "out" else min(wanted, current)
    return max(min_capacity, min(max_capacity, wanted))


def check_time_scale(time_scale: float) -> float:
    """`time_scale` when it is a number within 1..MAX_TIME_SCALE; ValueError naming it otherwise."""
    if isinstance(time_scale, bool) or not isinstance(time_scale, (int, float)) \
            or not 1 <= time_scale <= MAX_TIME_SCALE:
        raise ValueError(f"time_scale must be a number within 1..{MAX_TIME_SCALE:g}, got {time_scale!r}")
    return float(time_scale)


def period_seconds(time_scale: float = 1.0) -> float:
    """The length of one datapoint in real seconds under `time_scale`."""
    return PERIOD_SECONDS / check_time_scale(time_scale)


@dataclass
class DatapointSeries:
    """InvocationsPerInstance of one endpoint in datapoints of `period` seconds, as SageMaker emits it:
    each invocation adds 1 / the instances serving when it completed, and a period's datapoint is its
    sum as a rate per minute. Periods are aligned to multiples of `period` on the caller's clock; only
    complete periods are datapoints, and a period without invocations is a missing one (None), as
    SageMaker emits no datapoint for it."""

    period: float
    started: float  # the clock when the series began (its first period is counted from its boundary)
    points: deque = field(default_factory=lambda: deque(maxlen=SCALE_IN_DATAPOINTS))  # float | None, oldest first
    closed: int = -1  # the index of the latest complete period (-1: none yet)
    _index: int | None = None
    _sum: float = 0.0
    _count: int = 0  # invocations in the open period

    def add(self, now: float, instances: int) -> None:
        self.roll(now)
        self._sum += 1.0 / max(instances, 1)
        self._count += 1

    def roll(self, now: float) -> None:
        """Close every period that ended by `now`."""
        index = math.floor(now / self.period)
        if self._index is None:
            self._index = math.floor(self.started / self.period)
        if index <= self._index:
            return
        self.points.append(self._sum * PERIOD_SECONDS / self.period if self._count else None)
        self.points.extend([None] * min(index - self._index - 1, SCALE_IN_DATAPOINTS))
        self._sum, self._count, self._index, self.closed = 0.0, 0, index, index - 1

    def period_end(self) -> float:
        """When the open period closes, on the caller's clock."""
        index = self._index if self._index is not None else math.floor(self.started / self.period)
        return (index + 1) * self.period
