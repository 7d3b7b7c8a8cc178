"""SageMaker real-time endpoints: model, endpoint config and endpoint, each an upsert.

Names carry a hash of what they contain, so an unchanged deploy finds everything already there
and makes no call that changes anything (the re-run rule), and a changed one makes new resources
beside the old ones and moves the endpoint over blue/green: the old fleet serves until the new
one is healthy, and SageMaker rolls back by itself when it is not.

    model           <endpoint>-v<version>-<8 hex: artifact, image, role, environment>
    endpoint config <endpoint>-cfg-<8 hex: model name, instance type, variant>

The instance count is not part of the config's name: an endpoint is created with
hosting.initial_instance_count, and an update keeps the count the variant has then (autoscaling
may have changed it), so a re-run on a scaled-out endpoint finds nothing to change.

Both are cut to SageMaker's 63 characters by shortening the endpoint part; delete() recognises
exactly these forms, so it removes what deploy() made and nothing of an endpoint beside it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
from collections.abc import Callable
from typing import Any, ContextManager

from backends.aws.errors import ROLE_PROPAGATION_BUDGET_S, if_exists, or_none, while_role_propagates
from backends.aws.waiters import wait_until
from backends.errors import DeploymentFailedError
from backends.types import EndpointState, ModelVersion
from backends.waiting import SYSTEM_CLOCK, Clock
from core.config import HostingConfig
from core.scaling import capacity_to_keep, variants_to_deregister

log = logging.getLogger(__name__)

NAME_MAX = 63
SETTLING = {"Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting"}
RECREATE = {"Failed", "OutOfService"}  # nothing serves: delete and create again
TERMINATION_WAIT_S = 300
MAX_EXECUTION_S = 3600
# Around an update that AWS refuses while the given variants are registered for autoscaling:
# deregisters them, and registers them again afterwards (EndpointAutoscaling.deregistered_for_update).
WithoutAutoscaling = Callable[[list[str]], ContextManager[Any]]


class SageMakerEndpoints:
    def __init__(self, sagemaker, poll_seconds: float = 30.0, timeout_s: float = 3600, *,
                 role_budget_s: float = ROLE_PROPAGATION_BUDGET_S, clock: Clock = SYSTEM_CLOCK):
        self._sm = sagemaker
        self.poll_seconds = poll_seconds
        self.timeout_s = timeout_s
        self.role_budget_s, self.clock = role_budget_s, clock

    # -- deploy -----------------------------------------------------------------------
    def deploy(self, name: str, model: ModelVersion, image_uri: str, role_arn: str, hosting: HostingConfig,
               environment: dict[str, str] | None = None, tags: dict[str, str] | None = None, *,
               traffic_routing: dict | None = None, rollback_alarms: list[str] | None = None,
               without_autoscaling: WithoutAutoscaling | None = None) -> EndpointState:
        """Create the endpoint, update it blue/green, or leave it as it is when nothing changed.

        An update keeps the variant's current instance count. without_autoscaling(variants) wraps
        an update only when AWS requires those variants' autoscaling removed first (the update
        changes their instance type or removes them); a new model on the same variant needs nothing.
        """
        env = {
            "SAGEMAKER_PROGRAM": "inference.py",
            "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
            "SAGEMAKER_CONTAINER_LOG_LEVEL": "20",
            **(environment or {}),
            **hosting.model_environment(),
            "MODEL_VERSION": model.label,
        }
        tag_list = [{"Key": k, "Value": v} for k, v in (tags or {}).items()]
        model_hash = _hash8({"artifact": model.model_artifact, "image": image_uri, "role": role_arn, "environment": env})
        model_name = _fit(name, f"-v{model.version}-{model_hash}")
        config_hash = _hash8({"model": model_name, "instance_type": hosting.instance_type,
                              "variant": hosting.variant_name})
        config_name = _fit(name, f"-cfg-{config_hash}")

        current = self._settled(name)
        count = (capacity_to_keep(current.get("ProductionVariants") or [], hosting.variant_name,
                                  hosting.initial_instance_count)
                 if current is not None else hosting.initial_instance_count)
        if or_none(self._sm.describe_model, ModelName=model_name) is None:
            log.info("creating model %s", model_name)
            # A role made moments ago may not be assumable by SageMaker yet: retried within a budget.
            while_role_propagates(
                self._sm.create_model, budget_s=self.role_budget_s, clock=self.clock,
                ModelName=model_name, ExecutionRoleArn=role_arn,
                PrimaryContainer={"Image": image_uri, "ModelDataUrl": model.model_artifact, "Environment": env},
                **({"Tags": tag_list} if tag_list else {}))
        if or_none(self._sm.describe_endpoint_config, EndpointConfigName=config_name) is None:
            log.info("creating endpoint config %s (%d x %s)", config_name, count, hosting.instance_type)
            self._sm.create_endpoint_config(
                EndpointConfigName=config_name,
                ProductionVariants=[{"VariantName": hosting.variant_name, "ModelName": model_name,
                                     "InitialInstanceCount": count,
                                     "InstanceType": hosting.instance_type, "InitialVariantWeight": 1.0}],
                **({"Tags": tag_list} if tag_list else {}))

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
            blocking = variants_to_deregister(self._variant_types(current), hosting.variant_name,
                                              hosting.instance_type)
            guard = (without_autoscaling(blocking) if blocking and without_autoscaling
                     else contextlib.nullcontext())
            with guard:
                final = self._update(name, config_name, traffic_routing, rollback_alarms)
        return self._state(name, final, model.label, hosting.variant_name)

    def _settled(self, name: str) -> dict | None:
        """The endpoint once no operation is in progress on it; None when there is none (a Failed
        or OutOfService one is deleted, to be created again)."""
        current = self._raw(name)
        if current is not None and current["EndpointStatus"] in SETTLING:
            log.info("endpoint %s is %s; waiting for it to settle", name, current["EndpointStatus"])
            current = self._wait(name)
        if current is not None and current["EndpointStatus"] in RECREATE:
            log.warning("endpoint %s is %s (%s): deleting it to create it again", name, current["EndpointStatus"],
                        current.get("FailureReason", "no reason given"))
            self._sm.delete_endpoint(EndpointName=name)
            self._wait_deleted(name)
            current = None
        return current

    def _variant_types(self, described: dict) -> dict[str, str | None]:
        """The endpoint's variants and their instance types (None where its config cannot be read)."""
        config_name = described.get("EndpointConfigName")
        config = or_none(self._sm.describe_endpoint_config, EndpointConfigName=config_name) if config_name else None
        if config is not None:
            return {v["VariantName"]: v.get("InstanceType") for v in config.get("ProductionVariants", [])}
        return {v["VariantName"]: None for v in described.get("ProductionVariants", [])}

    def _update(self, name: str, config_name: str, traffic_routing: dict | None,
                rollback_alarms: list[str] | None) -> dict:
        deployment: dict[str, Any] = {"BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": traffic_routing or {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0},
            "TerminationWaitInSeconds": TERMINATION_WAIT_S,
            "MaximumExecutionTimeoutInSeconds": MAX_EXECUTION_S,
        }}
        if rollback_alarms:
            deployment["AutoRollbackConfiguration"] = {"Alarms": [{"AlarmName": a} for a in rollback_alarms]}
        log.info("updating endpoint %s to %s (blue/green)", name, config_name)
        # RetainAllVariantProperties: a variant of the same name keeps its latest DesiredInstanceCount
        # (and weight) whatever the new config's InitialInstanceCount says ("Update endpoints that use
        # auto scaling", step 6), so a count autoscaling changed since we described it is kept too.
        # Autoscaling itself needs no suspending: AWS blocks it while the update is in progress.
        self._sm.update_endpoint(EndpointName=name, EndpointConfigName=config_name, DeploymentConfig=deployment,
                                 RetainAllVariantProperties=True)
        final = self._wait(name)
        self._check(name, final, config_name, updated=True)
        return final

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
            self._wait_deleted(name)
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
        wait_until(self._sm, "endpoint_in_service", what=f"endpoint {name} to be InService",
                   timeout_s=self.timeout_s, poll_seconds=self.poll_seconds, EndpointName=name)
        return self._raw(name)

    def _wait_deleted(self, name: str) -> None:
        failed = wait_until(self._sm, "endpoint_deleted", what=f"endpoint {name} to be deleted",
                            timeout_s=self.timeout_s, poll_seconds=self.poll_seconds, EndpointName=name)
        if failed is not None:
            raise DeploymentFailedError(f"endpoint {name} could not be deleted: it is {failed.get('EndpointStatus')} "
                                        f"({failed.get('FailureReason', 'no reason given')})")

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

