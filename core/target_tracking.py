"""Target tracking the way Application Auto Scaling runs it for SageMakerVariantInvocationsPerInstance:
through two CloudWatch alarms on one-minute datapoints of invocations per instance.

- The high alarm fires when the last 3 of 3 datapoints are above the target: scale out.
- The low alarm fires when the last 15 of 15 datapoints are below 90 % of the target: scale in.
- While an alarm is firing, the capacity asked for is ceil(current x metric / target), clamped to the
  scalable target's range, and the cooldowns decide whether it may start now (core.scaling.cooldown_allows).

So a burst shorter than three minutes scales nothing, and an endpoint scales in a quarter of an
hour after its traffic fell. `time_scale` compresses the policy's minutes for demonstrations (a
time scale of 60 makes a datapoint one second and a 100 s cooldown 1.7 s) without changing the policy.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

PERIOD_SECONDS = 60.0  # one datapoint: a minute of InvocationsPerInstance
SCALE_OUT_DATAPOINTS = 3
SCALE_IN_DATAPOINTS = 15
SCALE_IN_RATIO = 0.9


@dataclass(frozen=True)
class Alarm:
    direction: str  # "out" or "in"
    metric: float  # the latest datapoint, invocations per instance per minute
    threshold: float
    datapoints: int


def firing_alarm(datapoints: Sequence[float], target: float) -> Alarm | None:
    """The alarm that is in ALARM after `datapoints` (oldest first, complete periods only), or None."""
    if not target > 0:
        raise ValueError(f"target must be > 0, got {target!r}")
    high = datapoints[-SCALE_OUT_DATAPOINTS:]
    if len(high) == SCALE_OUT_DATAPOINTS and all(v > target for v in high):
        return Alarm("out", high[-1], target, SCALE_OUT_DATAPOINTS)
    low_threshold = target * SCALE_IN_RATIO
    low = datapoints[-SCALE_IN_DATAPOINTS:]
    if len(low) == SCALE_IN_DATAPOINTS and all(v < low_threshold for v in low):
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


def period_seconds(time_scale: float = 1.0) -> float:
    """The length of one datapoint in real seconds under `time_scale`."""
    if not (time_scale >= 1 and math.isfinite(time_scale)):
        raise ValueError(f"time_scale must be >= 1, got {time_scale!r}")
    return PERIOD_SECONDS / time_scale
