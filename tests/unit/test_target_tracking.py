"""Target tracking on invocations per instance: the pure decisions, and the autoscaler's bookkeeping
(policy parsing, the sliding invocation count, cooldowns, registration) with a fake manager and clock."""
import asyncio
from types import SimpleNamespace

import pytest

from backends.local.gateway.autoscaler import Autoscaler, InvocationCounter, parse_policy
from core.config import AutoscalingConfig
from core.scaling import cooldown_allows, desired_capacity, scalable_target, target_tracking_policy


@pytest.mark.parametrize("invocations, current, target, low, high, expected", [
    (0, 3, 10.0, 1, 4, 1),  # no traffic: the minimum
    (0, 1, 10.0, 2, 4, 2),
    (10, 1, 10.0, 1, 4, 1),  # exactly on target
    (11, 1, 10.0, 1, 4, 2),
    (20, 5, 10.0, 1, 8, 2),  # does not depend on the current count
    (30, 1, 10.0, 1, 8, 3),
    (0.3, 1, 0.1, 1, 8, 3),  # float noise does not add an instance
    (1000, 1, 10.0, 1, 4, 4),  # clamped to the maximum
    (5, 4, 10.0, 2, 4, 2),  # and to the minimum
    (45.5, 2, 7.5, 1, 100, 7),
])
def test_desired_capacity(invocations, current, target, low, high, expected):
    assert desired_capacity(invocations, current, target, low, high) == expected


@pytest.mark.parametrize("args", [(10, 1, 0.0, 1, 4), (10, 1, -1.0, 1, 4), (10, 1, 10.0, 3, 2), (-1, 1, 10.0, 1, 4)])
def test_desired_capacity_refuses_bad_arguments(args):
    with pytest.raises(ValueError):
        desired_capacity(*args)


def test_cooldowns():
    # Nothing happened yet: both directions are free.
    assert cooldown_allows("out", None, None, 60, 300) and cooldown_allows("in", None, None, 60, 300)
    # A scale-out waits for its own cooldown ...
    assert not cooldown_allows("out", 59, None, 60, 300)
    assert cooldown_allows("out", 60, None, 60, 300)
    # ... and never for the scale-in cooldown.
    assert cooldown_allows("out", None, 1, 60, 300)
    assert cooldown_allows("out", 100, 1, 60, 300)
    # A scale-in waits for the scale-in cooldown after a scale-in ...
    assert not cooldown_allows("in", None, 299, 60, 300)
    assert cooldown_allows("in", None, 300, 60, 300)
    # ... after a scale-out too, and for a scale-out cooldown still running.
    assert not cooldown_allows("in", 299, None, 60, 300)
    assert cooldown_allows("in", 300, None, 60, 300)
    assert not cooldown_allows("in", 99, None, 100, 10)
    assert cooldown_allows("in", 100, 1000, 100, 10)
    # Zero cooldowns never block.
    assert cooldown_allows("out", 0, 0, 0, 0) and cooldown_allows("in", 0, 0, 0, 0)
    with pytest.raises(ValueError):
        cooldown_allows("sideways", None, None, 0, 0)


def registration(config: AutoscalingConfig, name: str = "ep") -> dict:
    """What the local backend PUTs to /_local/endpoints/{name}/autoscaling."""
    target = scalable_target(name, "AllTraffic", config)
    return {"min_capacity": target["MinCapacity"], "max_capacity": target["MaxCapacity"],
            "policy": target_tracking_policy(name, "AllTraffic", config)}


def test_parse_policy():
    config = AutoscalingConfig(min_capacity=2, max_capacity=5, target_invocations_per_instance=7.5,
                               scale_in_cooldown_seconds=30, scale_out_cooldown_seconds=10)
    policy = parse_policy(registration(config))
    assert (policy.min_capacity, policy.max_capacity, policy.target) == (2, 5, 7.5)
    assert (policy.scale_in_cooldown, policy.scale_out_cooldown) == (30, 10)
    bad_metric = registration(config)
    bad_metric["policy"]["TargetTrackingScalingPolicyConfiguration"]["PredefinedMetricSpecification"] = {
        "PredefinedMetricType": "SageMakerVariantCPUUtilization"}
    for bad in ({"min": 1, "max": 3}, {**registration(config), "min_capacity": 9}, bad_metric,
                {**registration(config), "policy": None}):
        with pytest.raises(ValueError):
            parse_policy(bad)


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_invocation_counter_slides():
    clock = Clock()
    counter = InvocationCounter(60.0, clock)
    for _ in range(30):
        counter.add("a")
    clock.now += 30
    counter.add("a", 10)
    assert counter.count("a") == 40 and counter.per_minute("a") == 40 and counter.count("b") == 0
    clock.now += 31
    assert counter.count("a") == 10
    clock.now += 30
    assert counter.count("a") == 0
    short = InvocationCounter(2.0, clock)
    short.add("a", 3)
    assert short.per_minute("a") == 90  # 3 in 2 s is 90 a minute
    short.forget("a")
    assert short.count("a") == 0


class FakeManager:
    """Just what the autoscaler uses of an EndpointManager."""

    def __init__(self, count: int = 1):
        self.count, self.autoscaling, self.calls, self.fail = count, None, [], False

    def list(self):
        return [SimpleNamespace(name="ep", instance_count=self.count, autoscaling=self.autoscaling)]

    def is_busy(self, name):
        return False

    async def set_instance_count(self, name, count):
        self.calls.append(count)
        if self.fail:
            raise RuntimeError("no capacity")
        self.count = count


def test_autoscaler_decisions():
    async def scenario():
        clock, manager = Clock(), FakeManager(count=5)
        scaler = Autoscaler(manager, window=60.0, interval=10.0, failure_backoff=30.0, clock=clock)

        async def tick():
            await asyncio.gather(*scaler.evaluate())

        await tick()  # no policy: nothing
        assert manager.calls == []
        config = AutoscalingConfig(min_capacity=1, max_capacity=3, target_invocations_per_instance=10,
                                   scale_in_cooldown_seconds=100, scale_out_cooldown_seconds=20)
        manager.autoscaling = registration(config)
        scaler.policy_changed("ep")
        await tick()  # registration brings 5 into [1, 3] at once
        assert manager.calls == [3]
        [first] = scaler.activities("ep")
        assert (first["from"], first["to"], first["cause"], first["status"]) == (5, 3, "registration", "Successful")

        await tick()  # no traffic: scale in to the minimum (registration started no cooldown)
        assert manager.calls == [3, 1] and scaler.activities("ep")[-1]["direction"] == "in"

        for _ in range(25):  # 25 a minute against 10 per instance: 3
            scaler.record_invocation("ep")
        await tick()
        assert manager.calls == [3, 1, 3]
        last = scaler.activities("ep")[-1]
        assert (last["from"], last["to"], last["status"]) == (1, 3, "Successful") and "25.0" in last["reason"]

        clock.now += 61  # the traffic has left the window: scale-in waits out its cooldown
        await tick()
        assert manager.calls == [3, 1, 3]
        clock.now += 40
        await tick()
        assert manager.calls == [3, 1, 3, 1]

        manager.fail = True  # a failed scale-out is recorded and retried after the backoff only
        for _ in range(15):
            scaler.record_invocation("ep")
        await tick()
        await tick()
        assert manager.calls == [3, 1, 3, 1, 2]
        failed = scaler.activities("ep")[-1]
        assert failed["status"] == "Failed" and "no capacity" in failed["error"]
        manager.fail = False
        clock.now += 61  # past the backoff, and the 15 before have left the window
        for _ in range(15):
            scaler.record_invocation("ep")
        await tick()
        assert manager.calls == [3, 1, 3, 1, 2, 2] and manager.count == 2

        manager.autoscaling = {"min": 1, "max": 3}  # a policy it cannot follow: ignored, no crash
        scaler.policy_changed("ep")
        clock.now += 1000
        await tick()
        assert manager.calls[-1] == 2 and len(manager.calls) == 6

        scaler.forget("ep")
        assert scaler.activities("ep") == []
        await scaler.close()

    asyncio.run(scenario())


def test_activities_are_capped():
    async def scenario():
        clock, manager = Clock(), FakeManager()
        scaler = Autoscaler(manager, window=1.0, clock=clock)
        config = AutoscalingConfig(min_capacity=1, max_capacity=2, target_invocations_per_instance=1,
                                   scale_in_cooldown_seconds=0, scale_out_cooldown_seconds=0)
        manager.autoscaling = registration(config)
        for i in range(30):
            if i % 2 == 0:
                scaler.record_invocation("ep")
            await asyncio.gather(*scaler.evaluate())
            clock.now += 2
        activities = scaler.activities("ep")
        assert len(activities) == 20 and activities[-1]["time"] >= activities[0]["time"]
        assert [a["to"] for a in activities] == [2, 1] * 10

    asyncio.run(scenario())
