"""The local autoscaler: target tracking on SageMakerVariantInvocationsPerInstance, as Application
Auto Scaling does it for a SageMaker endpoint variant, for the endpoints of one EndpointManager.

The manager reports every answered invocation with the instances serving then (`record_invocation`);
they become one-minute datapoints of invocations per instance (core.target_tracking.DatapointSeries).
After each complete period the autoscaler evaluates the policy's two alarms as CloudWatch does
(core.target_tracking.firing_alarm: 3 of 3 datapoints above the target scale out, 15 of 15 below
90 % of it scale in); while one fires, it asks for ceil(current x metric / target) within [min, max]
and, when the cooldowns allow it (core.scaling.cooldown_allows), calls `set_instance_count`. So a
burst shorter than three minutes scales nothing, as on AWS. Registering a policy brings the instance
count within [min_capacity, max_capacity] right away, cooldowns or not. Each scaling activity
(successful or failed) is kept, the last 20 per endpoint, and shown in the endpoint's description.
Nothing here may take the gateway down: errors are logged and the loop goes on.

The policy is what the local backend registers (PUT /_local/endpoints/{name}/autoscaling):
    {"min_capacity": 1, "max_capacity": 4, "time_scale": 1,
     "policy": <PutScalingPolicy arguments from core.scaling.target_tracking_policy>}
`time_scale` (optional, default 1) compresses the policy's minutes and cooldowns for a demonstration
or a load test (60: a datapoint a second); the policy itself is unchanged. A new time scale starts
the endpoint's datapoints over.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from backends.local.gateway.instances import MAX_LOCAL_INSTANCES
from core.scaling import METRIC, cooldown_allows
from core.target_tracking import DatapointSeries, capacity_for, check_time_scale, firing_alarm, period_seconds

if TYPE_CHECKING:
    from backends.local.gateway.endpoints import EndpointManager

log = logging.getLogger(__name__)

MAX_ACTIVITIES = 20


@dataclass(frozen=True)
class TrackingPolicy:
    min_capacity: int
    max_capacity: int
    target: float  # invocations per instance per minute
    scale_in_cooldown: float  # seconds, of the policy's (uncompressed) time
    scale_out_cooldown: float
    time_scale: float = 1.0

    @property
    def period(self) -> float:
        """One datapoint, in real seconds."""
        return period_seconds(self.time_scale)


def _number(container: dict, key: str, path: str, kind: type, default=None):
    value = container.get(key, default) if isinstance(container, dict) else None
    if value is None:
        raise ValueError(f"{path}{key} is missing")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not float(value).is_integer()):
        raise ValueError(f"{path}{key} must be {'an integer' if kind is int else 'a number'}, not {value!r}")
    return kind(value)


def parse_policy(autoscaling: dict) -> TrackingPolicy:
    """The target-tracking parameters of a registered policy; ValueError naming the field when it is not
    one we can follow (a capacity over MAX_LOCAL_INSTANCES included)."""
    if not isinstance(autoscaling, dict):
        raise ValueError(f"the autoscaling registration must be an object, not {type(autoscaling).__name__}")
    policy = autoscaling.get("policy")
    if not isinstance(policy, dict):
        raise ValueError("policy must be an object (PutScalingPolicy's arguments)")
    config = policy.get("TargetTrackingScalingPolicyConfiguration")
    if not isinstance(config, dict):
        raise ValueError("policy.TargetTrackingScalingPolicyConfiguration must be an object")
    where = "policy.TargetTrackingScalingPolicyConfiguration."
    spec = config.get("PredefinedMetricSpecification", {})
    metric = spec.get("PredefinedMetricType", METRIC) if isinstance(spec, dict) else None
    if metric != METRIC:
        raise ValueError(f"{where}PredefinedMetricSpecification.PredefinedMetricType: only {METRIC} can be "
                         f"tracked locally, not {metric!r}")
    parsed = TrackingPolicy(_number(autoscaling, "min_capacity", "", int), _number(autoscaling, "max_capacity", "", int),
                            _number(config, "TargetValue", where, float),
                            _number(config, "ScaleInCooldown", where, float, 300),
                            _number(config, "ScaleOutCooldown", where, float, 300),
                            _number(autoscaling, "time_scale", "", float, 1.0))
    if not 1 <= parsed.min_capacity <= parsed.max_capacity:
        raise ValueError(f"min_capacity..max_capacity must be a range starting at 1 or more, not "
                         f"[{parsed.min_capacity}, {parsed.max_capacity}]")
    if parsed.max_capacity > MAX_LOCAL_INSTANCES:
        raise ValueError(f"max_capacity {parsed.max_capacity} is over the local cap of {MAX_LOCAL_INSTANCES} instances "
                         f"per endpoint (MAX_LOCAL_INSTANCES: each is a process on this machine)")
    if not (parsed.target > 0 and math.isfinite(parsed.target)):
        raise ValueError(f"{where}TargetValue must be > 0, not {parsed.target}")
    if not (0 <= parsed.scale_in_cooldown < math.inf and 0 <= parsed.scale_out_cooldown < math.inf):
        raise ValueError(f"{where}ScaleInCooldown and ScaleOutCooldown must be >= 0")
    check_time_scale(parsed.time_scale)
    return parsed


@dataclass
class _Track:
    """What the autoscaler keeps per endpoint."""

    last_out: float | None = None  # clock() when the last scale-out ended (successfully)
    last_in: float | None = None
    failed: dict[str, float] = field(default_factory=dict)  # direction -> clock() of its last failure
    activities: deque = field(default_factory=lambda: deque(maxlen=MAX_ACTIVITIES))
    task: asyncio.Task | None = None
    registering: bool = False  # a policy was just registered: bring the count within its range
    warned: dict | None = None  # the unusable policy last warned about
    evaluated: int = -1  # the latest period whose datapoint the alarms were evaluated on


class Autoscaler:
    def __init__(self, manager: EndpointManager, *, interval: float = 10.0, failure_backoff: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        """interval: the longest the loop sleeps (it wakes sooner for a period that ends, or a registration)."""
        if not interval > 0:
            raise ValueError(f"interval must be > 0, got {interval!r}")
        self.manager = manager
        self.interval = interval
        self.failure_backoff = failure_backoff
        self.clock = clock
        self._series: dict[str, DatapointSeries] = {}
        self._tracks: dict[str, _Track] = {}
        self._loop_task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None

    # -- what the manager tells it ---------------------------------------------------
    def record_invocation(self, name: str, instances: int) -> None:
        """An invocation of `name` was answered while `instances` served it."""
        series = self._series.get(name)
        if series is None:
            series = self._series[name] = DatapointSeries(period_seconds(1.0), self.clock())
        series.add(self.clock(), instances)

    def policy_changed(self, name: str) -> None:
        """A policy was registered (or removed): look at the endpoint now, not at the next tick."""
        self._tracks.setdefault(name, _Track()).registering = True
        if self._wake is not None:
            self._wake.set()

    def forget(self, name: str) -> None:
        """The endpoint is being deleted: drop its datapoints and history, stop a scaling it has under way."""
        track = self._tracks.pop(name, None)
        self._series.pop(name, None)
        if track is not None and track.task is not None:
            track.task.cancel()

    def activities(self, name: str) -> list[dict]:
        track = self._tracks.get(name)
        return [dict(a) for a in track.activities] if track else []

    def datapoints(self, name: str) -> list[float | None]:
        """The endpoint's latest complete datapoints (invocations per instance per minute; None: a period
        without invocations, missing as on CloudWatch), oldest first."""
        series = self._series.get(name)
        if series is None:
            return []
        series.roll(self.clock())
        return list(series.points)

    def seconds_to_next_period(self) -> float:
        """How long until the next datapoint of any endpoint closes (at most `interval`)."""
        now = self.clock()
        ends = [s.period_end() - now for s in self._series.values()]
        return max(0.01, min([self.interval, *ends]))

    # -- the loop ------------------------------------------------------------------------
    async def start(self) -> None:
        if self._loop_task is None:
            self._wake = asyncio.Event()
            if any(t.registering for t in self._tracks.values()):
                self._wake.set()
            self._loop_task = asyncio.create_task(self._run(), name="endpoint-autoscaler")

    async def close(self) -> None:
        tasks = [t for t in [self._loop_task, *(tr.task for tr in self._tracks.values())] if t and not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop_task, self._wake = None, None

    async def _run(self) -> None:
        while True:
            try:
                sleep = self.seconds_to_next_period() + 0.005  # a hair past the boundary: the period has closed
            except Exception:
                log.exception("autoscaler: timing the next look failed; going on")
                sleep = self.interval
            try:
                await asyncio.wait_for(self._wake.wait(), sleep)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                self.evaluate()
            except Exception:
                log.exception("autoscaler: evaluation failed; going on")

    def evaluate(self) -> list[asyncio.Task]:
        """One look at every endpoint with a policy; returns the scaling activities it started."""
        started = []
        for info in self.manager.list():
            try:
                task = self._evaluate(info)
            except Exception:
                log.exception("autoscaler: evaluating endpoint %s failed; going on", info.name)
                continue
            if task is not None:
                started.append(task)
        return started

    def _evaluate(self, info) -> asyncio.Task | None:
        name = info.name
        track = self._tracks.get(name)
        if not info.autoscaling:
            if track is not None:
                track.registering = False
            return None
        if track is None:
            track = self._tracks[name] = _Track()
        if (track.task is not None and not track.task.done()) or self.manager.is_busy(name):
            return None  # a scaling, an update or a repair under way: look again next time
        try:
            policy = parse_policy(info.autoscaling)
        except ValueError as exc:
            if track.warned != info.autoscaling:
                track.warned = info.autoscaling
                log.warning("autoscaler: endpoint %s: ignoring its autoscaling policy: %s", name, exc)
            track.registering = False
            return None
        now = self.clock()
        series = self._series.get(name)
        if series is None or series.period != policy.period:  # a new time scale: the datapoints start over
            series = self._series[name] = DatapointSeries(policy.period, now)
            track.evaluated = -1
        series.roll(now)
        current = info.instance_count
        if track.registering:
            track.registering = False
            target = max(policy.min_capacity, min(policy.max_capacity, current))
            if target != current:
                return self._start(name, track, current, target, "registration",
                                   f"scalable target registered with capacity [{policy.min_capacity}, "
                                   f"{policy.max_capacity}]: {current} instance(s) is outside it")
        if series.closed == track.evaluated:
            return None  # the alarms are evaluated once per datapoint, as CloudWatch does
        track.evaluated = series.closed
        alarm = firing_alarm(list(series.points), policy.target)
        if alarm is None:
            return None
        desired = capacity_for(alarm, current, policy.target, policy.min_capacity, policy.max_capacity)
        if desired == current:
            return None
        since = lambda t: None if t is None else (now - t) * policy.time_scale  # noqa: E731 - in policy time
        if not cooldown_allows(alarm.direction, since(track.last_out), since(track.last_in),
                               policy.scale_out_cooldown, policy.scale_in_cooldown):
            return None
        failed_at = track.failed.get(alarm.direction)
        if failed_at is not None and now - failed_at < self.failure_backoff:
            return None
        minute = ("" if policy.time_scale == 1 else
                  f" (a minute is {policy.period:g} s at time scale {policy.time_scale:g})")
        reason = (f"{METRIC} {'above' if alarm.direction == 'out' else 'below'} {alarm.threshold:g}/min for "
                  f"{alarm.datapoints} of {alarm.datapoints} datapoints{minute}, the last "
                  f"{alarm.metric:.1f}/min on {current} instance(s) against a target of {policy.target:g}: "
                  f"{'scaling out' if alarm.direction == 'out' else 'scaling in'} to {desired} "
                  f"(capacity [{policy.min_capacity}, {policy.max_capacity}])")
        return self._start(name, track, current, desired, "policy", reason)

    def _start(self, name: str, track: _Track, current: int, target: int, cause: str, reason: str) -> asyncio.Task:
        track.task = asyncio.get_running_loop().create_task(
            self._scale(name, track, current, target, cause, reason), name=f"autoscale-{name}")
        return track.task

    async def _scale(self, name: str, track: _Track, current: int, target: int, cause: str, reason: str) -> None:
        direction = "out" if target > current else "in"
        activity = {"time": time.time(), "from": current, "to": target, "direction": direction, "cause": cause,
                    "reason": reason, "status": "InProgress"}
        track.activities.append(activity)
        log.info("autoscaler: endpoint %s: %d -> %d instance(s): %s", name, current, target, reason)
        try:
            await self.manager.set_instance_count(name, target)
        except Exception as exc:
            track.failed[direction] = self.clock()
            activity.update(status="Failed", error=f"{type(exc).__name__}: {exc}")
            if self._tracks.get(name) is track:  # not deleted meanwhile
                log.error("autoscaler: endpoint %s: scaling %d -> %d failed (next try in %.0f s at the "
                          "earliest): %s", name, current, target, self.failure_backoff, exc)
        except BaseException:
            activity.update(status="Cancelled")
            raise
        else:
            track.failed.pop(direction, None)
            if cause != "registration":  # cooldowns belong to the policy's own activities
                setattr(track, "last_out" if direction == "out" else "last_in", self.clock())
            activity.update(status="Successful")
        finally:
            activity["end_time"] = time.time()
