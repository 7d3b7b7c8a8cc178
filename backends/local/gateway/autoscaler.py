"""The local autoscaler: target tracking on SageMakerVariantInvocationsPerInstance, as Application
Auto Scaling does it for a SageMaker endpoint variant, for the endpoints of one EndpointManager.

The manager reports every invocation (`record_invocation`); every `interval` seconds (and at once
when a policy is registered) the autoscaler looks at each endpoint that has a policy, turns the
invocations of the last `window` seconds into invocations per minute, asks core.scaling for the
desired capacity and, when the cooldowns allow it, calls `set_instance_count`. Registering a policy
brings the instance count within [min_capacity, max_capacity] right away, cooldowns or not. Each
scaling activity (successful or failed) is kept, the last 20 per endpoint, and shown in the
endpoint's description. Nothing here may take the gateway down: errors are logged and the loop
goes on.

The policy is what the local backend registers (PUT /_local/endpoints/{name}/autoscaling):
    {"min_capacity": 1, "max_capacity": 4,
     "policy": <PutScalingPolicy arguments from core.scaling.target_tracking_policy>}
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
from core.scaling import METRIC, cooldown_allows, desired_capacity

if TYPE_CHECKING:
    from backends.local.gateway.endpoints import EndpointManager

log = logging.getLogger(__name__)

MAX_ACTIVITIES = 20


@dataclass(frozen=True)
class TrackingPolicy:
    min_capacity: int
    max_capacity: int
    target: float  # invocations per instance per minute
    scale_in_cooldown: float  # seconds
    scale_out_cooldown: float


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
                            _number(config, "ScaleOutCooldown", where, float, 300))
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
    return parsed


class InvocationCounter:
    """Invocations per endpoint over a sliding window, kept in 100 buckets of window/100 seconds
    (a bucket that straddles the window's start counts whole: at most 1 % of the window too much)."""

    BUCKETS = 100

    def __init__(self, window: float, clock: Callable[[], float] = time.monotonic):
        if not window > 0:
            raise ValueError(f"window must be > 0, got {window!r}")
        self.window = window
        self.clock = clock
        self._width = window / self.BUCKETS
        self._buckets: dict[str, deque[list[int]]] = {}  # name -> [bucket index, count], oldest first

    def add(self, name: str, n: int = 1) -> None:
        index = math.floor(self.clock() / self._width)
        buckets = self._buckets.setdefault(name, deque())
        if buckets and buckets[-1][0] == index:
            buckets[-1][1] += n
        else:
            buckets.append([index, n])
            self._prune(buckets, index)

    def count(self, name: str) -> int:
        buckets = self._buckets.get(name)
        if not buckets:
            return 0
        self._prune(buckets, math.floor(self.clock() / self._width))
        return sum(n for _, n in buckets)

    def per_minute(self, name: str) -> float:
        return self.count(name) * 60.0 / self.window

    def forget(self, name: str) -> None:
        self._buckets.pop(name, None)

    def _prune(self, buckets: deque, index: int) -> None:
        while buckets and buckets[0][0] <= index - self.BUCKETS - 1:
            buckets.popleft()


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


class Autoscaler:
    def __init__(self, manager: EndpointManager, *, interval: float = 10.0, window: float = 60.0,
                 failure_backoff: float = 30.0, clock: Callable[[], float] = time.monotonic):
        if not interval > 0:
            raise ValueError(f"interval must be > 0, got {interval!r}")
        self.manager = manager
        self.interval = interval
        self.failure_backoff = failure_backoff
        self.clock = clock
        self.counter = InvocationCounter(window, clock)
        self._tracks: dict[str, _Track] = {}
        self._loop_task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None

    @property
    def window(self) -> float:
        return self.counter.window

    # -- what the manager tells it ---------------------------------------------------
    def record_invocation(self, name: str) -> None:
        self.counter.add(name)

    def policy_changed(self, name: str) -> None:
        """A policy was registered (or removed): look at the endpoint now, not at the next tick."""
        self._tracks.setdefault(name, _Track()).registering = True
        if self._wake is not None:
            self._wake.set()

    def forget(self, name: str) -> None:
        """The endpoint is being deleted: drop its counts and history, stop a scaling it has under way."""
        track = self._tracks.pop(name, None)
        self.counter.forget(name)
        if track is not None and track.task is not None:
            track.task.cancel()

    def activities(self, name: str) -> list[dict]:
        track = self._tracks.get(name)
        return [dict(a) for a in track.activities] if track else []

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
                await asyncio.wait_for(self._wake.wait(), self.interval)
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
        current = info.instance_count
        if track.registering:
            track.registering = False
            target = max(policy.min_capacity, min(policy.max_capacity, current))
            if target != current:
                return self._start(name, track, current, target, "registration",
                                   f"scalable target registered with capacity [{policy.min_capacity}, "
                                   f"{policy.max_capacity}]: {current} instance(s) is outside it")
        per_minute = self.counter.per_minute(name)
        desired = desired_capacity(per_minute, current, policy.target, policy.min_capacity, policy.max_capacity)
        if desired == current:
            return None
        direction = "out" if desired > current else "in"
        now = self.clock()
        since = lambda t: None if t is None else now - t  # noqa: E731
        if not cooldown_allows(direction, since(track.last_out), since(track.last_in),
                               policy.scale_out_cooldown, policy.scale_in_cooldown):
            return None
        failed_at = track.failed.get(direction)
        if failed_at is not None and now - failed_at < self.failure_backoff:
            return None
        reason = (f"{METRIC} {per_minute / max(current, 1):.1f}/min ({per_minute:.1f} invocations/min over the "
                  f"last {self.window:g} s on {current} instance(s)) against a target of {policy.target:g}: "
                  f"{'scaling out' if direction == 'out' else 'scaling in'} to {desired} "
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
