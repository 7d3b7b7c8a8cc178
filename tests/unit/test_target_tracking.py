"""Target tracking on invocations per instance: the pure decisions, and the local autoscaler with a fake
manager and clock: one-minute datapoints (none for a minute without invocations), CloudWatch's alarms
(3 of 3 above the target to scale out, 15 of 15 below 90 % of it to scale in), cooldowns, registration,
failures, and the time scale."""
import asyncio
from types import SimpleNamespace

import pytest

from backends.local.gateway.autoscaler import Autoscaler, parse_policy
from core.config import AutoscalingConfig
from core.loadtest import LoadTestSettings
from core.scaling import cooldown_allows, scalable_target, target_tracking_policy
from core.target_tracking import DatapointSeries


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


def registration(config: AutoscalingConfig, name: str = "ep", time_scale: float | None = None) -> dict:
    """What the local backend PUTs to /_local/endpoints/{name}/autoscaling."""
    target = scalable_target(name, "AllTraffic", config)
    return {"min_capacity": target["MinCapacity"], "max_capacity": target["MaxCapacity"],
            "policy": target_tracking_policy(name, "AllTraffic", config),
            **({} if time_scale is None else {"time_scale": time_scale})}


def test_parse_policy():
    config = AutoscalingConfig(min_capacity=2, max_capacity=5, target_invocations_per_instance=7.5,
                               scale_in_cooldown_seconds=30, scale_out_cooldown_seconds=10)
    policy = parse_policy(registration(config))
    assert (policy.min_capacity, policy.max_capacity, policy.target) == (2, 5, 7.5)
    assert (policy.scale_in_cooldown, policy.scale_out_cooldown, policy.time_scale, policy.period) == (30, 10, 1, 60)
    assert parse_policy(registration(config, time_scale=60)).period == 1
    bad_metric = registration(config)
    bad_metric["policy"]["TargetTrackingScalingPolicyConfiguration"]["PredefinedMetricSpecification"] = {
        "PredefinedMetricType": "SageMakerVariantCPUUtilization"}
    for bad in ({"min": 1, "max": 3}, {**registration(config), "min_capacity": 9}, bad_metric,
                {**registration(config), "policy": None}):
        with pytest.raises(ValueError):
            parse_policy(bad)
    for scale in (0.5, 601, "60", True, float("nan")):
        with pytest.raises(ValueError, match="time_scale"):
            parse_policy(registration(config, time_scale=scale))


class Clock:
    def __init__(self, now: float = 960.0):  # a multiple of 60: a minute starts now
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_datapoints_are_invocations_per_instance_per_minute():
    clock = Clock()
    series = DatapointSeries(60.0, clock.now)
    for _ in range(30):
        series.add(clock.now, 1)
    clock.now += 30
    for _ in range(20):
        series.add(clock.now, 2)  # with two instances serving, each invocation counts half
    assert list(series.points) == [] and series.closed == -1  # the minute is not over
    clock.now += 30
    series.roll(clock.now)
    assert list(series.points) == [40.0]
    clock.now += 120.5  # two quiet minutes: missing datapoints (SageMaker emits none without invocations)
    series.add(clock.now, 1)
    assert list(series.points) == [40.0, None, None] and series.period_end() == clock.now - 0.5 + 60
    clock.now += 60 * 15  # fifteen minutes later: only the 15 datapoints the alarms look at are kept
    series.roll(clock.now)
    assert list(series.points) == [1.0] + [None] * 14
    clock.now += 3600
    series.roll(clock.now)
    assert list(series.points) == [None] * 15
    fast = DatapointSeries(1.0, clock.now)  # time scale 60: a one-second datapoint, still a rate per minute
    for _ in range(3):
        fast.add(clock.now, 1)
    fast.roll(clock.now + 1)
    assert list(fast.points) == [180.0]


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


class Scenario:
    """An autoscaler on a fake manager and clock, driven a period at a time."""

    def __init__(self, count: int, failure_backoff: float = 30.0):
        self.clock, self.manager = Clock(), FakeManager(count)
        self.scaler = Autoscaler(self.manager, interval=10.0, failure_backoff=failure_backoff, clock=self.clock)

    async def tick(self):
        await asyncio.gather(*self.scaler.evaluate())

    async def register(self, config: AutoscalingConfig, time_scale: float | None = None):
        self.manager.autoscaling = registration(config, time_scale=time_scale)
        self.scaler.policy_changed("ep")
        await self.tick()

    async def periods(self, n: int, invocations: int = 0, seconds: float = 60.0):
        """n periods of `seconds`, each with `invocations` answered; the alarms look after each."""
        for _ in range(n):
            for _ in range(invocations):
                self.scaler.record_invocation("ep", self.manager.count)
            self.clock.now += seconds
            await self.tick()

    def activity(self, index: int = -1) -> dict:
        return self.scaler.activities("ep")[index]


def test_registration_clamps_at_once_and_low_traffic_scales_in_after_fifteen_minutes():
    async def scenario():
        run = Scenario(count=8)
        await run.tick()  # no policy: nothing
        assert run.manager.calls == []
        await run.register(AutoscalingConfig(min_capacity=1, max_capacity=6, target_invocations_per_instance=10,
                                             scale_in_cooldown_seconds=300, scale_out_cooldown_seconds=100))
        assert run.manager.calls == [6]  # registration brings 8 into [1, 6] at once
        assert (run.activity()["from"], run.activity()["to"], run.activity()["cause"]) == (8, 6, "registration")
        await run.periods(14, invocations=1)  # a request a minute (1/6 per instance): the low alarm needs fifteen
        assert run.manager.calls == [6]
        await run.periods(1, invocations=1)
        assert run.manager.calls == [6, 1]  # ceil(6 x 0.17 / 10) within [1, 6]
        last = run.activity()
        assert (last["direction"], last["cause"], last["status"]) == ("in", "policy", "Successful")
        assert "below 9/min for 15 of 15 datapoints" in last["reason"]
        await run.scaler.close()

    asyncio.run(scenario())


def test_without_traffic_nothing_scales_in_as_on_aws():
    """SageMaker emits no InvocationsPerInstance datapoint for a minute without invocations, and target
    tracking's alarms treat missing data as missing: an idle endpoint keeps its instances."""
    async def scenario():
        run = Scenario(count=1)
        await run.register(AutoscalingConfig(min_capacity=1, max_capacity=4, target_invocations_per_instance=10,
                                             scale_in_cooldown_seconds=0, scale_out_cooldown_seconds=0))
        await run.periods(3, invocations=40)
        assert run.manager.calls == [4]
        await run.periods(120)  # two hours without a request
        assert run.manager.calls == [4] and run.scaler.datapoints("ep") == [None] * 15
        await run.periods(7, invocations=4)  # a request every quarter minute: 1 a minute per instance
        await run.periods(1)  # a minute without one breaks the run of fifteen
        await run.periods(14, invocations=4)
        assert run.manager.calls == [4]
        await run.periods(1, invocations=4)
        assert run.manager.calls == [4, 1]  # ceil(4 x 1 / 10)
        assert "below 9/min for 15 of 15 datapoints, the last 1.0/min on 4 instance(s)" in run.activity()["reason"]
        await run.scaler.close()

    asyncio.run(scenario())


def replay(settings: LoadTestSettings, config: AutoscalingConfig) -> list[tuple[float, int, int]]:
    """A load test's schedule through the autoscaler (each request answered at once, each scaling done at
    once): (seconds from the start, from, to) of each change of the instance count."""
    async def scenario():
        run = Scenario(count=1)
        await run.register(config, time_scale=settings.time_scale)
        start, tick = run.clock.now, 60 / settings.time_scale / 10
        due = [start + p.offset for p in settings.schedule()]
        changes = []
        for step in range(1, int(settings.duration() / tick) + 1):
            now = start + step * tick
            while due and due[0] <= now:
                run.clock.now = due.pop(0)
                run.scaler.record_invocation("ep", run.manager.count)
            run.clock.now, before = now, run.manager.count
            await run.tick()
            if run.manager.count != before:
                changes.append((round(now - start), before, run.manager.count))
        await run.scaler.close()
        return changes

    return asyncio.run(scenario())


def test_the_readmes_load_test_scales_out_then_in_while_a_low_rate_goes_on():
    demo = AutoscalingConfig(min_capacity=1, max_capacity=4, target_invocations_per_instance=10,
                             scale_in_cooldown_seconds=100, scale_out_cooldown_seconds=100)
    # README: loadtest --demo --rates 4,0.3 --step-seconds 100 --time-scale 12 (a datapoint every 5 s).
    # 4 rps is 240 a minute: out to 4 after three datapoints; 0.3 rps on 4 instances is 4.5 a minute each,
    # below 9: in after fifteen, and again after the 8.3 s cooldown (on 3: 6 a minute each).
    assert replay(LoadTestSettings(rates=[4, 0.3], step_seconds=100, time_scale=12), demo) == [
        (15, 1, 4), (175, 4, 3), (190, 3, 2)]
    # Its former form ended on quiet: without traffic there are no datapoints, and nothing scales in.
    assert replay(LoadTestSettings(rates=[0, 4], step_seconds=50, idle_seconds=75, time_scale=20), demo) == [
        (57, 1, 4)]


def test_three_minutes_above_the_target_scale_out_then_the_cooldowns_hold():
    async def scenario():
        run = Scenario(count=1)
        await run.register(AutoscalingConfig(min_capacity=1, max_capacity=6, target_invocations_per_instance=10,
                                             scale_in_cooldown_seconds=300, scale_out_cooldown_seconds=100))
        await run.periods(2, invocations=25)  # a two-minute burst ...
        await run.periods(1)
        await run.periods(2, invocations=25)  # ... and another: never three minutes above in a row
        assert run.manager.calls == []
        await run.periods(1, invocations=25)
        assert run.manager.calls == [3]  # ceil(1 x 25 / 10)
        assert "above 10/min for 3 of 3 datapoints, the last 25.0/min on 1 instance(s)" in run.activity()["reason"]
        await run.periods(1, invocations=150)  # 50 a minute on each of 3: the alarm fires, the cooldown holds
        assert run.manager.calls == [3]
        await run.periods(1, invocations=150)  # 120 s after the scale-out: past its 100 s cooldown
        assert run.manager.calls == [3, 6]  # ceil(3 x 50 / 10) = 15, at most 6
        await run.periods(1, invocations=600)  # at the maximum: nothing more to ask
        assert run.manager.calls == [3, 6]
        await run.periods(14, invocations=1)
        assert run.manager.calls == [3, 6]
        await run.periods(1, invocations=1)  # fifteen minutes of a request each, and long past both cooldowns
        assert run.manager.calls == [3, 6, 1]
        await run.scaler.close()

    asyncio.run(scenario())


def test_a_scale_in_waits_for_its_cooldown_after_a_scale_out():
    async def scenario():
        run = Scenario(count=1)
        # The scale-in cooldown is longer than the low alarm's fifteen minutes.
        await run.register(AutoscalingConfig(min_capacity=1, max_capacity=4, target_invocations_per_instance=10,
                                             scale_in_cooldown_seconds=1200, scale_out_cooldown_seconds=0))
        await run.periods(3, invocations=40)
        assert run.manager.calls == [4]
        await run.periods(19, invocations=1)  # the alarm fires after 15, the cooldown holds until 20 minutes passed
        assert run.manager.calls == [4]
        await run.periods(1, invocations=1)
        assert run.manager.calls == [4, 1]
        await run.scaler.close()

    asyncio.run(scenario())


def test_a_failed_scaling_is_recorded_and_retried_after_the_backoff():
    async def scenario():
        run = Scenario(count=1, failure_backoff=90.0)
        await run.register(AutoscalingConfig(min_capacity=1, max_capacity=3, target_invocations_per_instance=10,
                                             scale_in_cooldown_seconds=0, scale_out_cooldown_seconds=0))
        run.manager.fail = True
        await run.periods(3, invocations=20)
        assert run.manager.calls == [2]
        failed = run.activity()
        assert failed["status"] == "Failed" and "no capacity" in failed["error"] and failed["end_time"] >= failed["time"]
        await run.periods(1, invocations=20)  # 60 s later: still within the 90 s backoff
        assert run.manager.calls == [2]
        run.manager.fail = False
        await run.periods(1, invocations=20)
        assert run.manager.calls == [2, 2] and run.manager.count == 2 and run.activity()["status"] == "Successful"

        run.manager.autoscaling = {"min": 1, "max": 3}  # a policy it cannot follow: ignored, no crash
        run.scaler.policy_changed("ep")
        await run.periods(20)
        assert run.manager.calls == [2, 2]
        run.scaler.forget("ep")
        assert run.scaler.activities("ep") == [] and run.scaler.datapoints("ep") == []
        await run.scaler.close()

    asyncio.run(scenario())


def test_time_scale_compresses_the_minutes_and_the_cooldowns_not_the_policy():
    async def scenario():
        run = Scenario(count=1)
        config = AutoscalingConfig(min_capacity=1, max_capacity=4, target_invocations_per_instance=60,
                                   scale_in_cooldown_seconds=120, scale_out_cooldown_seconds=120)
        await run.register(config, time_scale=60)  # a datapoint a second, cooldowns of 2 s
        assert run.scaler.seconds_to_next_period() == pytest.approx(1.0)
        await run.periods(2, invocations=2, seconds=1)  # 2 a second is 120 a minute, twice the target
        assert run.manager.calls == [] and run.scaler.datapoints("ep") == [120.0, 120.0]
        await run.periods(1, invocations=2, seconds=1)
        assert run.manager.calls == [2]  # ceil(1 x 120 / 60): the target still means 1 request a second
        assert "a minute is 1 s at time scale 60" in run.activity()["reason"]
        await run.periods(1, invocations=8, seconds=1)  # 240 a minute per instance; the 2 s cooldown holds
        assert run.manager.calls == [2]
        await run.periods(1, invocations=8, seconds=1)
        assert run.manager.calls == [2, 4]
        await run.periods(14, invocations=1, seconds=1)  # 1 a second on 4 instances: 15 a minute each
        assert run.manager.calls == [2, 4]
        await run.periods(1, invocations=1, seconds=1)  # fifteen seconds below 54
        assert run.manager.calls == [2, 4, 1]

        await run.periods(2, invocations=2, seconds=1)
        await run.register(config)  # back to real time: the datapoints start over
        assert run.scaler.datapoints("ep") == [] and run.scaler.seconds_to_next_period() == pytest.approx(10.0)
        await run.periods(1, invocations=2, seconds=1)
        assert run.manager.calls == [2, 4, 1]
        await run.scaler.close()

    asyncio.run(scenario())


def test_activities_are_capped():
    async def scenario():
        run = Scenario(count=1)
        await run.register(AutoscalingConfig(min_capacity=1, max_capacity=2, target_invocations_per_instance=100,
                                             scale_in_cooldown_seconds=0, scale_out_cooldown_seconds=0), time_scale=60)
        for _ in range(12):
            await run.periods(3, invocations=2, seconds=1)  # 120 a minute on 1 instance
            await run.periods(15, invocations=1, seconds=1)  # 30 a minute on each of 2
        activities = run.scaler.activities("ep")
        assert len(activities) == 20 and activities[-1]["time"] >= activities[0]["time"]
        assert [a["to"] for a in activities] == [2, 1] * 10

    asyncio.run(scenario())
