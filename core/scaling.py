"""Application Auto Scaling documents for a SageMaker endpoint variant (pure; both backends use them)."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from core.config import AutoscalingConfig

SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
METRIC = "SageMakerVariantInvocationsPerInstance"


def resource_id(endpoint_name: str, variant_name: str) -> str:
    return f"endpoint/{endpoint_name}/variant/{variant_name}"


def policy_name(endpoint_name: str) -> str:
    return f"{endpoint_name}-invocations-per-instance"


def scalable_target(endpoint_name: str, variant_name: str, config: AutoscalingConfig) -> dict:
    """Arguments of RegisterScalableTarget."""
    return {
        "ServiceNamespace": "sagemaker",
        "ResourceId": resource_id(endpoint_name, variant_name),
        "ScalableDimension": SCALABLE_DIMENSION,
        "MinCapacity": config.min_capacity,
        "MaxCapacity": config.max_capacity,
    }


def target_tracking_policy(endpoint_name: str, variant_name: str, config: AutoscalingConfig) -> dict:
    """Arguments of PutScalingPolicy: track invocations per instance per minute."""
    return {
        "PolicyName": policy_name(endpoint_name),
        "ServiceNamespace": "sagemaker",
        "ResourceId": resource_id(endpoint_name, variant_name),
        "ScalableDimension": SCALABLE_DIMENSION,
        "PolicyType": "TargetTrackingScaling",
        "TargetTrackingScalingPolicyConfiguration": {
            "TargetValue": float(config.target_invocations_per_instance),
            "PredefinedMetricSpecification": {"PredefinedMetricType": METRIC},
            "ScaleInCooldown": config.scale_in_cooldown_seconds,
            "ScaleOutCooldown": config.scale_out_cooldown_seconds,
        },
    }


def variants_to_deregister(current: Mapping[str, str | None], variant_name: str, instance_type: str) -> list[str]:
    """The variants of an endpoint (`current`: variant name -> instance type) whose autoscaling must be
    deregistered before an UpdateEndpoint to one variant `variant_name` on `instance_type`.

    AWS ("Update endpoints that use auto scaling", SageMaker developer guide) refuses the update only
    when it changes the instance type of a variant registered for autoscaling, or removes such a
    variant (a renamed variant is a removed one); a new model on the same variant is allowed.
    """
    return sorted(name for name, kind in current.items() if name != variant_name or kind != instance_type)


def capacity_to_keep(variants: Sequence[Mapping], variant_name: str, default: int) -> int:
    """The instance count an update keeps: the desired count (else the current one) of the variant
    `variant_name` in DescribeEndpoint's ProductionVariants, else of the variant it replaces (the
    first); `default` when the endpoint reports none."""
    variant = next((v for v in variants if v.get("VariantName") == variant_name), variants[0] if variants else {})
    count = variant.get("DesiredInstanceCount", variant.get("CurrentInstanceCount"))
    return int(count) if count else default


def cooldown_allows(direction: str, seconds_since_last_out: float | None, seconds_since_last_in: float | None,
                    scale_out_cooldown: float, scale_in_cooldown: float) -> bool:
    """Whether a scaling activity in `direction` ("out" or "in") may start now (None: there was none yet).

    Application Auto Scaling's target tracking semantics, simplified:
    - a scale-out waits for the scale-out cooldown of the previous scale-out (AWS lets a larger
      scale-out through earlier; that exception is left out), and is never held back by a scale-in
      cooldown (a scale-out during one ends it);
    - a scale-in is conservative: it waits for the scale-in cooldown counted from the last scaling
      activity of either direction, and for any scale-out cooldown still running.
    """
    since_out = math.inf if seconds_since_last_out is None else seconds_since_last_out
    since_in = math.inf if seconds_since_last_in is None else seconds_since_last_in
    if direction == "out":
        return since_out >= scale_out_cooldown
    if direction == "in":
        return since_in >= scale_in_cooldown and since_out >= max(scale_in_cooldown, scale_out_cooldown)
    raise ValueError(f"direction must be 'out' or 'in', got {direction!r}")
