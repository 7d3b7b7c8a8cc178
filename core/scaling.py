"""Application Auto Scaling documents for a SageMaker endpoint variant (pure; both backends use them)."""
from __future__ import annotations

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

