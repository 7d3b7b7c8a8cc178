"""Application Auto Scaling of a SageMaker endpoint variant (service "application-autoscaling").

The documents come from core.scaling (the same ones the local backend uses). RegisterScalableTarget
and PutScalingPolicy are upserts in AWS, so register() is idempotent; deregister() and describe()
tolerate a variant that was never registered. AWS refuses an UpdateEndpoint that changes the instance
type of a variant registered for autoscaling, or removes one ("Update endpoints that use auto
scaling", SageMaker developer guide); deregistered_for_update() deregisters exactly those variants
around such an update and registers the same target and policies again after it.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from backends.aws.errors import if_exists
from backends.types import ScalingState
from core.config import AutoscalingConfig
from core.scaling import SCALABLE_DIMENSION, policy_name, resource_id, scalable_target, target_tracking_policy

NAMESPACE = "sagemaker"
# The parts of a described policy that PutScalingPolicy takes back.
_POLICY_KEYS = ("PolicyName", "ServiceNamespace", "ResourceId", "ScalableDimension", "PolicyType",
                "TargetTrackingScalingPolicyConfiguration", "StepScalingPolicyConfiguration",
                "PredictiveScalingPolicyConfiguration")


class EndpointAutoscaling:
    """Target tracking on SageMakerVariantInvocationsPerInstance for one endpoint variant at a time."""

    def __init__(self, autoscaling_client):
        self.client = autoscaling_client

    # -- reads ------------------------------------------------------------------------
    def _target(self, rid: str) -> dict | None:
        targets = self.client.describe_scalable_targets(
            ServiceNamespace=NAMESPACE, ResourceIds=[rid], ScalableDimension=SCALABLE_DIMENSION)["ScalableTargets"]
        return next((t for t in targets
                     if t["ResourceId"] == rid and t["ScalableDimension"] == SCALABLE_DIMENSION), None)

    def _policies(self, rid: str) -> list[dict]:
        policies, token = [], None
        while True:
            kwargs = {"ServiceNamespace": NAMESPACE, "ResourceId": rid, "ScalableDimension": SCALABLE_DIMENSION}
            if token:
                kwargs["NextToken"] = token
            page = self.client.describe_scaling_policies(**kwargs)
            policies += [p for p in page.get("ScalingPolicies", [])
                         if p["ResourceId"] == rid and p["ScalableDimension"] == SCALABLE_DIMENSION]
            token = page.get("NextToken")
            if not token:
                return policies

    def describe(self, endpoint_name: str, variant_name: str) -> ScalingState | None:
        """The registered target and this project's policy, or None if the variant is not registered."""
        rid = resource_id(endpoint_name, variant_name)
        target = self._target(rid)
        if target is None:
            return None
        name = policy_name(endpoint_name)
        policy = next((p for p in self._policies(rid) if p["PolicyName"] == name), None)
        # The PutScalingPolicy arguments, as core.scaling makes them (no PolicyARN: it changes on re-creation).
        document = {k: policy[k] for k in _POLICY_KEYS if k in policy} if policy else {}
        return ScalingState(rid, target["MinCapacity"], target["MaxCapacity"], document)

    # -- writes -----------------------------------------------------------------------
    def register(self, endpoint_name: str, variant_name: str, config: AutoscalingConfig) -> ScalingState:
        """Register the variant (1..100 by default) and put the target tracking policy; both are upserts."""
        self.client.register_scalable_target(**scalable_target(endpoint_name, variant_name, config))
        policy = target_tracking_policy(endpoint_name, variant_name, config)
        self.client.put_scaling_policy(**policy)
        state = self.describe(endpoint_name, variant_name)
        if state is not None and state.policy:
            return state
        return ScalingState(resource_id(endpoint_name, variant_name), config.min_capacity, config.max_capacity, policy)

    def deregister(self, endpoint_name: str, variant_name: str) -> bool:
        """Delete the policy and the scalable target; False if nothing was registered."""
        rid = resource_id(endpoint_name, variant_name)
        target = self._target(rid)
        if_exists(self.client.delete_scaling_policy, PolicyName=policy_name(endpoint_name), ServiceNamespace=NAMESPACE,
                  ResourceId=rid, ScalableDimension=SCALABLE_DIMENSION)
        if target is None:
            return False
        return if_exists(self.client.deregister_scalable_target, ServiceNamespace=NAMESPACE, ResourceId=rid,
                         ScalableDimension=SCALABLE_DIMENSION)

    @contextlib.contextmanager
    def deregistered_for_update(self, endpoint_name: str, variants: list[str], updated_variant: str) -> Iterator[list[str]]:
        """Deregister those of `variants` that are registered for the duration; yields their names.

        Afterwards the same target (capacities, suspended state) and policies are registered again:
        on `updated_variant` when the update succeeded (the variant the endpoint serves with now),
        on the variants they came from when it failed (the old configuration still serves).
        """
        saved: list[tuple[str, dict, list[dict]]] = []
        for variant in variants:
            rid = resource_id(endpoint_name, variant)
            target = self._target(rid)
            if target is None:
                continue
            policies = self._policies(rid)
            for policy in policies:
                if_exists(self.client.delete_scaling_policy, PolicyName=policy["PolicyName"],
                          ServiceNamespace=NAMESPACE, ResourceId=rid, ScalableDimension=SCALABLE_DIMENSION)
            if_exists(self.client.deregister_scalable_target, ServiceNamespace=NAMESPACE, ResourceId=rid,
                      ScalableDimension=SCALABLE_DIMENSION)
            saved.append((variant, target, policies))
        if not saved:
            yield []
            return
        updated = False
        try:
            yield [variant for variant, _, _ in saved]
            updated = True
        finally:
            if updated:  # one registration for the variant that now serves: its own, else the first one's
                variant, target, policies = next((s for s in saved if s[0] == updated_variant), saved[0])
                self._restore(resource_id(endpoint_name, updated_variant), target, policies)
            else:
                for variant, target, policies in saved:
                    self._restore(resource_id(endpoint_name, variant), target, policies)

    def _restore(self, rid: str, target: dict, policies: list[dict]) -> None:
        restore = {"ServiceNamespace": NAMESPACE, "ResourceId": rid, "ScalableDimension": SCALABLE_DIMENSION,
                   "MinCapacity": target["MinCapacity"], "MaxCapacity": target["MaxCapacity"]}
        if target.get("SuspendedState"):
            restore["SuspendedState"] = target["SuspendedState"]
        self.client.register_scalable_target(**restore)
        for policy in policies:
            self.client.put_scaling_policy(**{**{k: policy[k] for k in _POLICY_KEYS if k in policy},
                                              "ResourceId": rid})
