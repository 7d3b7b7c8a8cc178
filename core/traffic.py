"""How an endpoint update moves traffic to a new model and when it rolls back by itself (SageMaker's
deployment guardrails), as documents for SageMaker and CloudWatch and as the steps the local gateway
takes. Pure: both backends read the same configuration the same way."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # core.config checks its settings with this module's arithmetic
    from core.config import TrafficShiftConfig

NAMESPACE = "AWS/SageMaker"
# How long a blue/green update may take (BlueGreenUpdatePolicy.MaximumExecutionTimeoutInSeconds, which
# SageMaker takes within 600..28800 s and wants above the total of its waits): bringing up the new fleet
# and its health checks, each step's bake time, then the wait before the old fleet is removed. The
# allowance is what the fixed 3600 s used before left for the new fleet with the default 300 s bake.
PROVISIONING_ALLOWANCE_S = 3000
TERMINATION_WAIT_S = 300  # the old fleet stays this long after the shift (BlueGreenUpdatePolicy, 0..3600)
MAX_EXECUTION_S = 28800


def traffic_steps(shift: TrafficShiftConfig) -> list[int]:
    """The percentages of traffic the new model takes, step by step, ending at 100."""
    if shift.type == "canary":
        return [shift.canary_percent, 100]
    if shift.type == "linear":
        steps = list(range(shift.linear_step_percent, 100, shift.linear_step_percent))
        return steps + [100]
    return [100]


def deployment_seconds(steps: int, wait_seconds: int) -> int:
    """How long an update of `steps` steps baked `wait_seconds` each may take, uncapped."""
    return PROVISIONING_ALLOWANCE_S + steps * wait_seconds + TERMINATION_WAIT_S


def longest_bake_s(steps: int) -> int:
    """The longest bake time per step with which an update of `steps` steps fits SageMaker's limit."""
    return (MAX_EXECUTION_S - PROVISIONING_ALLOWANCE_S - TERMINATION_WAIT_S) // steps


def max_execution_s(shift: TrafficShiftConfig) -> int:
    """BlueGreenUpdatePolicy.MaximumExecutionTimeoutInSeconds for `shift` (config refuses a shift that
    needs more than SageMaker's 28800 s)."""
    return min(deployment_seconds(len(traffic_steps(shift)), shift.wait_seconds), MAX_EXECUTION_S)


def blue_green_policy(shift: TrafficShiftConfig) -> dict:
    """DeploymentConfig.BlueGreenUpdatePolicy of UpdateEndpoint."""
    return {"TrafficRoutingConfiguration": traffic_routing(shift), "TerminationWaitInSeconds": TERMINATION_WAIT_S,
            "MaximumExecutionTimeoutInSeconds": max_execution_s(shift)}


def traffic_routing(shift: TrafficShiftConfig) -> dict:
    """BlueGreenUpdatePolicy.TrafficRoutingConfiguration of UpdateEndpoint."""
    if shift.type == "canary":
        return {"Type": "CANARY", "WaitIntervalInSeconds": shift.wait_seconds,
                "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": shift.canary_percent}}
    if shift.type == "linear":
        return {"Type": "LINEAR", "WaitIntervalInSeconds": shift.wait_seconds,
                "LinearStepSize": {"Type": "CAPACITY_PERCENT", "Value": shift.linear_step_percent}}
    return {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": shift.wait_seconds}


def alarm_names(endpoint_name: str) -> list[str]:
    return [f"{endpoint_name}-5xx-errors", f"{endpoint_name}-model-latency"]


def rollback_alarms(endpoint_name: str, variant_name: str, shift: TrafficShiftConfig) -> list[dict]:
    """PutMetricAlarm arguments of the alarms an update rolls back on: the variant's 5xx errors (a sum
    per minute) and its model latency (an average per minute; CloudWatch reports microseconds)."""
    dimensions = [{"Name": "EndpointName", "Value": endpoint_name}, {"Name": "VariantName", "Value": variant_name}]
    errors, latency = alarm_names(endpoint_name)
    common = {"Namespace": NAMESPACE, "Dimensions": dimensions, "Period": 60, "EvaluationPeriods": 1,
              "ComparisonOperator": "GreaterThanThreshold", "TreatMissingData": "notBreaching"}
    return [
        {"AlarmName": errors, "MetricName": "Invocation5XXErrors", "Statistic": "Sum",
         "Threshold": float(shift.max_5xx_errors),
         "AlarmDescription": f"5xx errors of {endpoint_name}: an update rolls back on it (sagemaker-flows)", **common},
        {"AlarmName": latency, "MetricName": "ModelLatency", "Statistic": "Average",
         "Threshold": float(shift.max_model_latency_ms * 1000),
         "AlarmDescription": f"model latency of {endpoint_name}: an update rolls back on it (sagemaker-flows)", **common},
    ]


def gateway_shift(shift: TrafficShiftConfig) -> dict:
    """What the local gateway is told: the same steps, bake time and thresholds."""
    return {"steps": traffic_steps(shift), "wait_seconds": shift.wait_seconds,
            "max_5xx_errors": shift.max_5xx_errors, "max_model_latency_ms": shift.max_model_latency_ms}
