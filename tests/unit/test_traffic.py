"""core.traffic: the steps, SageMaker's traffic routing, and the rollback alarms' documents."""
from core.config import TrafficShiftConfig
from core.traffic import gateway_shift, rollback_alarms, traffic_routing, traffic_steps


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
