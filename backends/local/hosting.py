"""Hosting on the local backend: endpoints in the local gateway (each instance a model_worker process
running the artifact's own code/inference.py), autoscaled by the gateway's target tracking. Updates
shift traffic in hosting.traffic_shift's steps and roll back on the gateway's own counters of the
new model's 5xx errors and latency; the last step switches at once (locally there is no bake after it).
hosting.initial_instance_count sizes a new endpoint; an update keeps the count the endpoint has (as
RetainAllVariantProperties does), so a release never undoes what autoscaling did."""
from __future__ import annotations

import logging

from backends.local.gateway.client import GatewayConnection
from backends.local.gateway.instances import MAX_LOCAL_INSTANCES
from backends.local.store import LocalStore
from backends.types import EndpointState, ModelVersion, ScalingState
from core.config import AutoscalingConfig, HostingConfig
from core.scaling import resource_id, scalable_target, target_tracking_policy
from core.traffic import gateway_shift

log = logging.getLogger(__name__)


class LocalHosting:
    def __init__(self, gateway: GatewayConnection, store: LocalStore):
        self.gateway = gateway
        self.store = store

    def deploy_endpoint(self, name: str, model: ModelVersion, hosting: HostingConfig) -> EndpointState:
        info = self.gateway.client().put_endpoint(
            name, str(self.store.path(model.model_artifact)), hosting.initial_instance_count, model.label,
            hosting.model_environment(), gateway_shift(hosting.traffic_shift))
        return self._state(info, hosting.variant_name)

    def describe_endpoint(self, name: str) -> EndpointState | None:
        info = self._hosted(name)
        return self._state(info, "AllTraffic") if info else None

    def delete_endpoint(self, name: str) -> bool:
        return self.gateway.running() and self.gateway.client().delete_endpoint(name)

    def register_autoscaling(self, endpoint_name: str, variant_name: str, config: AutoscalingConfig,
                             time_scale: float = 1.0) -> ScalingState:
        """time_scale (local only): the gateway follows the policy with its minutes and cooldowns compressed
        that many times (core.target_tracking), for a load test or a demonstration; 1 is real time."""
        target = scalable_target(endpoint_name, variant_name, config)
        policy = target_tracking_policy(endpoint_name, variant_name, config)
        # Each local instance is a process on this machine: the configuration's range (made for AWS,
        # up to 1000) is followed up to the gateway's cap, and the log says so.
        low, high = (min(target[key], MAX_LOCAL_INSTANCES) for key in ("MinCapacity", "MaxCapacity"))
        if (low, high) != (target["MinCapacity"], target["MaxCapacity"]):
            log.warning("endpoint %s: autoscaling %d..%d is capped locally to %d..%d instances (MAX_LOCAL_INSTANCES; "
                        "AWS gets the configured range)", endpoint_name, target["MinCapacity"],
                        target["MaxCapacity"], low, high)
        self.gateway.client().set_autoscaling(endpoint_name, {"min_capacity": low, "max_capacity": high,
                                                              "policy": policy, "time_scale": time_scale})
        return ScalingState(resource_id(endpoint_name, variant_name), low, high, policy)

    def deregister_autoscaling(self, endpoint_name: str, variant_name: str) -> bool:
        info = self._hosted(endpoint_name)
        if not info or not info.get("autoscaling"):
            return False
        return self.gateway.client().delete_autoscaling(endpoint_name)

    def _hosted(self, name: str) -> dict | None:
        """The gateway's record of the endpoint; None when it is not hosted (or no gateway runs)."""
        if not self.gateway.running():
            return None
        return next((e for e in self.gateway.client().status()["endpoints"] if e["name"] == name), None)

    def _state(self, info: dict, variant: str) -> EndpointState:
        return EndpointState(name=info["name"], status=info["status"], model_version=info["model_version"],
                             instance_count=info["instance_count"], variant_name=variant,
                             invoke_url=f"{self.gateway.url}/endpoints/{info['name']}/invocations")
