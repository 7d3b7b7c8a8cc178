"""SageMaker real-time endpoints: model, endpoint config and endpoint, each an upsert.

Names carry a hash of what they contain, so an unchanged deploy finds everything already there
and makes no call that changes anything (the re-run rule), and a changed one makes new resources
beside the old ones and moves the endpoint over blue/green: the old fleet serves until the new
one is healthy, and SageMaker rolls back by itself when it is not.

    model           <endpoint>-v<version>-<8 hex: artifact, image, role, environment>
    endpoint config <endpoint>-cfg-<8 hex: model name, instance type, count, variant>

Both are cut to SageMaker's 63 characters by shortening the endpoint part; delete() recognises
exactly these forms, so it removes what deploy() made and nothing of an endpoint beside it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Callable
from typing import Any

from botocore.exceptions import WaiterError

from backends.aws.errors import if_exists, or_none
from backends.errors import DeploymentFailedError, WaitTimedOutError
from backends.types import EndpointState, ModelVersion
from core.config import HostingConfig

log = logging.getLogger(__name__)

NAME_MAX = 63
SETTLING = {"Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting"}
RECREATE = {"Failed", "OutOfService"}  # nothing serves: delete and create again
TERMINATION_WAIT_S = 300
MAX_EXECUTION_S = 3600


class SageMakerEndpoints:
    def __init__(self, sagemaker, poll_seconds: float = 30.0, timeout_s: float = 3600):
        self._sm = sagemaker
        self.poll_seconds = poll_seconds
        self.timeout_s = timeout_s

    # -- deploy -----------------------------------------------------------------------
    def deploy(self, name: str, model: ModelVersion, image_uri: str, role_arn: str, hosting: HostingConfig,
               environment: dict[str, str] | None = None, tags: dict[str, str] | None = None, *,
               traffic_routing: dict | None = None, rollback_alarms: list[str] | None = None,
               before_update: Callable[[], None] | None = None,
               after_update: Callable[[], None] | None = None) -> EndpointState:
        """Create the endpoint, update it blue/green, or leave it as it is when nothing changed.

        before_update/after_update run around an UpdateEndpoint only (AWS refuses to update a
        variant registered with Application Auto Scaling); after_update runs even when the update
        fails or rolls back, since the old configuration then still serves.
        """
        env = {
            "SAGEMAKER_PROGRAM": "inference.py",
            "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
            "SAGEMAKER_CONTAINER_LOG_LEVEL": "20",
            **(environment or {}),
            "TOP_K": str(hosting.top_k),
            "MODEL_VERSION": model.label,
        }
        tag_list = [{"Key": k, "Value": v} for k, v in (tags or {}).items()]
        model_hash = _hash8({"artifact": model.model_artifact, "image": image_uri, "role": role_arn, "environment": env})
        model_name = _fit(name, f"-v{model.version}-{model_hash}")
        config_hash = _hash8({"model": model_name, "instance_type": hosting.instance_type,
                              "count": hosting.initial_instance_count, "variant": hosting.variant_name})
        config_name = _fit(name, f"-cfg-{config_hash}")

        if or_none(self._sm.describe_model, ModelName=model_name) is None:
            log.info("creating model %s", model_name)
            self._sm.create_model(
                ModelName=model_name, ExecutionRoleArn=role_arn,
                PrimaryContainer={"Image": image_uri, "ModelDataUrl": model.model_artifact, "Environment": env},
                **({"Tags": tag_list} if tag_list else {}))
        if or_none(self._sm.describe_endpoint_config, EndpointConfigName=config_name) is None:
            log.info("creating endpoint config %s", config_name)
            self._sm.create_endpoint_config(
                EndpointConfigName=config_name,
                ProductionVariants=[{"VariantName": hosting.variant_name, "ModelName": model_name,
                                     "InitialInstanceCount": hosting.initial_instance_count,
                                     "InstanceType": hosting.instance_type, "InitialVariantWeight": 1.0}],
                **({"Tags": tag_list} if tag_list else {}))

        current = self._raw(name)
        if current is not None and current["EndpointStatus"] in SETTLING:
            log.info("endpoint %s is %s; waiting for it to settle", name, current["EndpointStatus"])
            current = self._wait(name)
        if current is not None and current["EndpointStatus"] in RECREATE:
            log.warning("endpoint %s is %s (%s): deleting it to create it again", name, current["EndpointStatus"],
                        current.get("FailureReason", "no reason given"))
            self._sm.delete_endpoint(EndpointName=name)
            self._waiter("endpoint_deleted", name, "to be deleted")
            current = None

        if current is None:
            log.info("creating endpoint %s on %s", name, config_name)
            self._sm.create_endpoint(EndpointName=name, EndpointConfigName=config_name,
                                     **({"Tags": tag_list} if tag_list else {}))
            final = self._wait(name)
            self._check(name, final, config_name, updated=False)
        elif current["EndpointConfigName"] == config_name and current["EndpointStatus"] == "InService":
            log.info("endpoint %s already serves %s on %s", name, model.label, config_name)
            final = current
        else:
            final = self._update(name, config_name, traffic_routing, rollback_alarms, before_update, after_update)
        return self._state(name, final, model.label, hosting.variant_name)

    def _update(self, name: str, config_name: str, traffic_routing: dict | None, rollback_alarms: list[str] | None,
                before_update: Callable[[], None] | None, after_update: Callable[[], None] | None) -> dict:
        deployment: dict[str, Any] = {"BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": traffic_routing or {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0},
            "TerminationWaitInSeconds": TERMINATION_WAIT_S,
            "MaximumExecutionTimeoutInSeconds": MAX_EXECUTION_S,
        }}
        if rollback_alarms:
            deployment["AutoRollbackConfiguration"] = {"Alarms": [{"AlarmName": a} for a in rollback_alarms]}
        if before_update:
            before_update()
        try:
            log.info("updating endpoint %s to %s (blue/green)", name, config_name)
            self._sm.update_endpoint(EndpointName=name, EndpointConfigName=config_name, DeploymentConfig=deployment,
                                     RetainAllVariantProperties=False)
            final = self._wait(name)
            self._check(name, final, config_name, updated=True)
            return final
        finally:
            if after_update:
                after_update()

    def _check(self, name: str, described: dict | None, config_name: str, updated: bool) -> None:
        if described is None:
            raise DeploymentFailedError(f"endpoint {name} disappeared while deploying {config_name}")
        status = described["EndpointStatus"]
        if status != "InService":
            raise DeploymentFailedError(
                f"endpoint {name} is {status} after deploying {config_name}: "
                f"{described.get('FailureReason', 'no reason given')}")
        if updated and described.get("EndpointConfigName") != config_name:
            reason = described.get("FailureReason")
            raise DeploymentFailedError(
                f"endpoint {name} rolled back to {described.get('EndpointConfigName')}: the update to {config_name} "
                f"failed{': ' + reason if reason else ''}; the previous configuration still serves")

    # -- describe / delete --------------------------------------------------------------
    def describe(self, name: str) -> EndpointState | None:
        described = self._raw(name)
        if described is None:
            return None
        variants = described.get("ProductionVariants") or [{}]
        return self._state(name, described, self._model_label(described.get("EndpointConfigName")),
                           variants[0].get("VariantName", ""))

    def delete(self, name: str) -> bool:
        """Delete the endpoint and the configs and models deploy() made for it; False when none was there."""
        removed = if_exists(self._sm.delete_endpoint, EndpointName=name)
        if removed:
            log.info("deleting endpoint %s", name)
            self._waiter("endpoint_deleted", name, "to be deleted")
        for page in self._sm.get_paginator("list_endpoint_configs").paginate(NameContains=_head(name)):
            for config in page.get("EndpointConfigs", []):
                if _owned(config["EndpointConfigName"], name, _CONFIG_SUFFIX):
                    removed |= if_exists(self._sm.delete_endpoint_config,
                                         EndpointConfigName=config["EndpointConfigName"])
        for page in self._sm.get_paginator("list_models").paginate(NameContains=_head(name)):
            for model in page.get("Models", []):
                if _owned(model["ModelName"], name, _MODEL_SUFFIX):
                    removed |= if_exists(self._sm.delete_model, ModelName=model["ModelName"])
        return removed

    # -- helpers ------------------------------------------------------------------------
    def _raw(self, name: str) -> dict | None:
        return or_none(self._sm.describe_endpoint, EndpointName=name)

    def _wait(self, name: str) -> dict | None:
        """Wait (botocore's endpoint_in_service) until the endpoint is InService or Failed; its
        description then, None when it is gone."""
        self._waiter("endpoint_in_service", name, "to be InService")
        return self._raw(name)

    def _waiter(self, waiter: str, name: str, what: str) -> None:
        """A botocore waiter on the endpoint; a failure state is for the caller to read, a timeout raises."""
        delay = max(self.poll_seconds, 0.01)
        config = {"Delay": self.poll_seconds, "MaxAttempts": max(1, math.ceil(self.timeout_s / delay))}
        try:
            self._sm.get_waiter(waiter).wait(EndpointName=name, WaiterConfig=config)
        except WaiterError as exc:
            if "Max attempts exceeded" in str(exc):
                status = (exc.last_response or {}).get("EndpointStatus", "unknown")
                raise WaitTimedOutError(f"endpoint {name} still {status} after {self.timeout_s:.0f} s waiting for "
                                        f"it {what}") from None

    def _model_label(self, config_name: str | None) -> str:
        """MODEL_VERSION of the model behind the config ("" when it cannot be read)."""
        config = or_none(self._sm.describe_endpoint_config, EndpointConfigName=config_name) if config_name else None
        variants = (config or {}).get("ProductionVariants") or [{}]
        model_name = variants[0].get("ModelName")
        described = or_none(self._sm.describe_model, ModelName=model_name) if model_name else None
        return ((described or {}).get("PrimaryContainer") or {}).get("Environment", {}).get("MODEL_VERSION", "")

    def _state(self, name: str, described: dict, label: str, variant_name: str) -> EndpointState:
        variants = described.get("ProductionVariants") or []
        variant = next((v for v in variants if v.get("VariantName") == variant_name), variants[0] if variants else {})
        count = variant.get("CurrentInstanceCount", variant.get("DesiredInstanceCount", 0))
        region = self._sm.meta.region_name
        return EndpointState(name=name, status=described["EndpointStatus"], model_version=label,
                             instance_count=int(count or 0), variant_name=variant.get("VariantName", variant_name),
                             invoke_url=f"https://runtime.sagemaker.{region}.amazonaws.com/endpoints/{name}/invocations")


_MODEL_SUFFIX = re.compile(r"-v\d+-[0-9a-f]{8}")
_CONFIG_SUFFIX = re.compile(r"-cfg-[0-9a-f]{8}")


def _hash8(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:8]


def _fit(name: str, suffix: str) -> str:
    """name + suffix in 63 characters, the name shortened when needed."""
    return name[: NAME_MAX - len(suffix)].rstrip("-") + suffix


def _head(name: str) -> str:
    """The part of `name` every resource of it begins with, however much _fit shortened it."""
    return name[: NAME_MAX - len("-v1234567-12345678")].rstrip("-")


def _owned(resource: str, endpoint: str, suffix: re.Pattern) -> bool:
    """Whether `resource` is one that _fit(endpoint, <suffix>) makes."""
    for start in (m.start() for m in re.finditer("-", resource)):  # each place the suffix could begin
        head, tail = resource[:start], resource[start:]
        if suffix.fullmatch(tail) and head == endpoint[: NAME_MAX - len(tail)].rstrip("-"):
            return True
    return False

