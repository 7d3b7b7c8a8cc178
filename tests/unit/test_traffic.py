"""core.traffic: the steps, SageMaker's traffic routing, and the rollback alarms' documents."""
from core.config import TrafficShiftConfig
from core.traffic import (blue_green_policy, gateway_shift, longest_bake_s, max_execution_s, rollback_alarms,
                          traffic_routing, traffic_steps)


def test_steps_end_at_all_traffic():
    assert traffic_steps(TrafficShiftConfig()) == [100]
    assert traffic_steps(TrafficShiftConfig(type="canary", canary_percent=5)) == [5, 100]
    assert traffic_steps(TrafficShiftConfig(type="linear", linear_step_percent=30)) == [30, 60, 90, 100]
    assert traffic_steps(TrafficShiftConfig(type="linear", linear_step_percent=50)) == [50, 100]


def test_routing_is_what_update_endpoint_takes():
    assert traffic_routing(TrafficShiftConfig(wait_seconds=0)) == {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0}
    assert traffic_routing(TrafficShiftConfig(type="canary", canary_percent=20, wait_seconds=600)) == {
        "Type": "CANARY", "WaitIntervalInSeconds": 600, "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 20}}
    assert traffic_routing(TrafficShiftConfig(type="linear", linear_step_percent=25)) == {
        "Type": "LINEAR", "WaitIntervalInSeconds": 300, "LinearStepSize": {"Type": "CAPACITY_PERCENT", "Value": 25}}


def test_alarms_watch_the_variant_in_cloudwatch_units():
    errors, latency = rollback_alarms("p-dev-endpoint", "AllTraffic", TrafficShiftConfig(max_5xx_errors=3,
                                                                                         max_model_latency_ms=250))
    dimensions = [{"Name": "EndpointName", "Value": "p-dev-endpoint"}, {"Name": "VariantName", "Value": "AllTraffic"}]
    assert (errors["MetricName"], errors["Statistic"], errors["Threshold"]) == ("Invocation5XXErrors", "Sum", 3.0)
    assert (latency["MetricName"], latency["Statistic"], latency["Threshold"]) == ("ModelLatency", "Average", 250000.0)
    assert errors["Dimensions"] == latency["Dimensions"] == dimensions and errors["Namespace"] == "AWS/SageMaker"
    assert gateway_shift(TrafficShiftConfig(type="canary", wait_seconds=7)) == {
        "steps": [10, 100], "wait_seconds": 7, "max_5xx_errors": 0, "max_model_latency_ms": 2000}


def test_an_update_may_last_as_long_as_its_bakes_and_the_termination_wait_need():
    # 3000 s to bring up the new fleet + every step's bake + 300 s before the old fleet goes.
    assert blue_green_policy(TrafficShiftConfig()) == {
        "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 300},
        "TerminationWaitInSeconds": 300, "MaximumExecutionTimeoutInSeconds": 3600}
    assert max_execution_s(TrafficShiftConfig(type="canary", wait_seconds=3600)) == 3000 + 2 * 3600 + 300
    assert max_execution_s(TrafficShiftConfig(type="linear", linear_step_percent=25, wait_seconds=1800)) == (
        3000 + 4 * 1800 + 300)
    # Ten linear steps: the longest bake that fits SageMaker's 28800 s gives exactly that.
    assert longest_bake_s(10) == 2550
    assert max_execution_s(TrafficShiftConfig(type="linear", linear_step_percent=10, wait_seconds=2550)) == 28800
