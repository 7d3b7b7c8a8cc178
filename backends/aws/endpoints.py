"""SageMaker real-time endpoints: model, endpoint config and endpoint, each an upsert.

Names carry a hash of what they contain, so an unchanged deploy finds everything already there
and makes no call that changes anything (the re-run rule), and a changed one makes new resources
beside the old ones and moves the endpoint over blue/green: the old fleet serves until the new
one is healthy, and SageMaker rolls back by itself when it is not.

    model           <endpoint>-v<version>-<8 hex: artifact, image, role, environment>
    endpoint config <endpoint>-cfg-<8 hex: model name, instance type, variant, instance count>

An endpoint is created with hosting.initial_instance_count, and an update keeps the count the
variant has then (autoscaling may have changed it). The count is in the config's name, so an
endpoint created again (after Failed) never reuses a config made with another count; whether a
re-run has anything to change is decided by what the endpoint's config serves (model, instance
type, variant), not by its name, so a re-run on a scaled-out endpoint finds nothing to change.

Every create and update is safe to send twice. botocore's standard retry mode resends a request
whose connection dropped (ConnectionClosedError, ReadTimeoutError) although the first one may have
gone through, and SageMaker answers such a resend "Cannot create already existing ..." or "Cannot
update in-progress endpoint": both are taken as "done" and checked against what was asked for.

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

from botocore.exceptions import ClientError

from backends.aws.errors import (
    ROLE_PROPAGATION_BUDGET_S, already_exists, error_code, error_message, if_exists, or_none, while_role_propagates,
)
from backends.aws.waiters import wait_until
from backends.errors import DeploymentFailedError
from backends.types import EndpointState, ModelVersion
from backends.waiting import SYSTEM_CLOCK, Clock
from core.config import HostingConfig
from core.scaling import capacity_to_keep, variants_to_deregister
from core.traffic import blue_green_policy

log = logging.getLogger(__name__)

NAME_MAX = 63
SETTLING = {"Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting"}
# Nothing serves: delete and create again (DeleteEndpoint is all AWS allows on a Failed endpoint). An
# UpdateRollbackFailed one still serves (a mix of both configurations, says DescribeEndpoint's reference)
# and AWS has it brought back to InService by an update, so it is updated like an InService one.
RECREATE = {"Failed", "OutOfService"}
# Around an update that AWS refuses while the given variants are registered for autoscaling:
# deregisters them, and registers them again afterwards (EndpointAutoscaling.deregistered_for_update).
WithoutAutoscaling = Callable[[list[str]], ContextManager[Any]]


class SageMakerEndpoints:
    """timeout_s: how long an endpoint may take to be created or deleted, or to roll back after an
    update ran out of its own time limit (an update is waited for that limit plus timeout_s)."""

    def __init__(self, sagemaker, poll_seconds: float = 30.0, timeout_s: float = 3600, *,
                 role_budget_s: float = ROLE_PROPAGATION_BUDGET_S, clock: Clock = SYSTEM_CLOCK):
        self._sm = sagemaker
        self.poll_seconds = poll_seconds
        self.timeout_s = timeout_s
        self.role_budget_s, self.clock = role_budget_s, clock

    # -- deploy -----------------------------------------------------------------------
    def deploy(self, name: str, model: ModelVersion, image_uri: str, role_arn: str, hosting: HostingConfig,
               environment: dict[str, str] | None = None, tags: dict[str, str] | None = None, *,
               rollback_alarms: list[str] | None = None,
               without_autoscaling: WithoutAutoscaling | None = None) -> EndpointState:
        """Create the endpoint, update it blue/green (as hosting.traffic_shift says), or leave it as it
        is when nothing changed.

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
        wanted = {"VariantName": hosting.variant_name, "ModelName": model_name, "InstanceType": hosting.instance_type}
        policy = blue_green_policy(hosting.traffic_shift)
        # An update runs for up to the policy's own limit, then SageMaker rolls it back.
        update_wait_s = policy["MaximumExecutionTimeoutInSeconds"] + self.timeout_s

        current = self._settled(name, update_wait_s)
        current_config = self._config(current)
        if current is not None and current["EndpointStatus"] == "InService" and _serves(current_config, wanted):
            log.info("endpoint %s already serves %s on %s", name, model.label, current["EndpointConfigName"])
            return self._state(name, current, model.label, hosting.variant_name)

        count = (capacity_to_keep(current.get("ProductionVariants") or [], hosting.variant_name,
                                  hosting.initial_instance_count)
                 if current is not None else hosting.initial_instance_count)
        config_name = _fit(name, "-cfg-" + _hash8({"model": model_name, "instance_type": hosting.instance_type,
                                                   "variant": hosting.variant_name, "count": count}))
        if or_none(self._sm.describe_model, ModelName=model_name) is None:
            log.info("creating model %s", model_name)
            # A role made moments ago may not be assumable by SageMaker yet: retried within a budget.
            container = {"Image": image_uri, "ModelDataUrl": model.model_artifact, "Environment": env}
            if not _create(lambda: while_role_propagates(
                    self._sm.create_model, budget_s=self.role_budget_s, clock=self.clock, ModelName=model_name,
                    ExecutionRoleArn=role_arn, PrimaryContainer=container, **({"Tags": tag_list} if tag_list else {}))):
                existing = self._sm.describe_model(ModelName=model_name)
                have = existing.get("PrimaryContainer") or {}
                if existing.get("ExecutionRoleArn") != role_arn or any(have.get(k) != v for k, v in container.items()):
                    raise DeploymentFailedError(f"model {model_name} exists with another container or role: "
                                                "delete it and deploy again")
        if or_none(self._sm.describe_endpoint_config, EndpointConfigName=config_name) is None:
            log.info("creating endpoint config %s (%d x %s)", config_name, count, hosting.instance_type)
            if not _create(lambda: self._sm.create_endpoint_config(
                    EndpointConfigName=config_name,
                    ProductionVariants=[{**wanted, "InitialInstanceCount": count, "InitialVariantWeight": 1.0}],
                    **({"Tags": tag_list} if tag_list else {}))):
                existing = self._sm.describe_endpoint_config(EndpointConfigName=config_name)
                if not _serves(existing, wanted):
                    raise DeploymentFailedError(f"endpoint config {config_name} exists but does not serve "
                                                f"{model_name} on {hosting.instance_type}: delete it and deploy again")

        if current is None:
            log.info("creating endpoint %s on %s", name, config_name)
            created = _create(lambda: self._sm.create_endpoint(EndpointName=name, EndpointConfigName=config_name,
                                                               **({"Tags": tag_list} if tag_list else {})))
            final = self._wait(name, self.timeout_s)
            if not created and final is not None and final.get("EndpointConfigName") != config_name:
                # A resend of this create made it on this config; on another, a concurrent deploy did.
                raise DeploymentFailedError(f"endpoint {name} was created meanwhile on "
                                            f"{final.get('EndpointConfigName')}, not {config_name}: deploy again")
            self._check(name, final, config_name, updated=False)
        else:
            blocking = variants_to_deregister(self._variant_types(current, current_config), hosting.variant_name,
                                              hosting.instance_type)
            guard = (without_autoscaling(blocking) if blocking and without_autoscaling
                     else contextlib.nullcontext())
            with guard:
                final = self._update(name, config_name, policy, rollback_alarms, update_wait_s)
        return self._state(name, final, model.label, hosting.variant_name)

    def _settled(self, name: str, update_wait_s: float) -> dict | None:
        """The endpoint once no operation is in progress on it; None when there is none (a Failed
        or OutOfService one is deleted, to be created again)."""
        current = self._raw(name)
        if current is not None and current["EndpointStatus"] in SETTLING:
            log.info("endpoint %s is %s; waiting for it to settle", name, current["EndpointStatus"])
            # An update in progress (an earlier attempt's, most likely) may run to its own limit.
            current = self._wait(name, update_wait_s if current["EndpointStatus"] == "Updating" else self.timeout_s)
        if current is not None and current["EndpointStatus"] == "UpdateRollbackFailed":
            log.warning("endpoint %s is UpdateRollbackFailed (%s): it still serves; updating it", name,
                        current.get("FailureReason", "no reason given"))
        if current is not None and current["EndpointStatus"] in RECREATE:
            log.warning("endpoint %s is %s (%s): deleting it to create it again", name, current["EndpointStatus"],
                        current.get("FailureReason", "no reason given"))
            self._sm.delete_endpoint(EndpointName=name)
            self._wait_deleted(name)
            current = None
        return current

    def _config(self, described: dict | None) -> dict | None:
        """The endpoint config the endpoint `described` serves (None when none or it cannot be read)."""
        config_name = (described or {}).get("EndpointConfigName")
        return or_none(self._sm.describe_endpoint_config, EndpointConfigName=config_name) if config_name else None

    @staticmethod
    def _variant_types(described: dict, config: dict | None) -> dict[str, str | None]:
        """The endpoint's variants and their instance types (None where its config cannot be read)."""
        if config is not None:
            return {v["VariantName"]: v.get("InstanceType") for v in config.get("ProductionVariants", [])}
        return {v["VariantName"]: None for v in described.get("ProductionVariants", [])}

    def _update(self, name: str, config_name: str, policy: dict, rollback_alarms: list[str] | None,
                wait_s: float) -> dict:
        deployment: dict[str, Any] = {"BlueGreenUpdatePolicy": policy}
        if rollback_alarms:
            deployment["AutoRollbackConfiguration"] = {"Alarms": [{"AlarmName": a} for a in rollback_alarms]}
        log.info("updating endpoint %s to %s (blue/green)", name, config_name)
        # RetainAllVariantProperties: a variant of the same name keeps its latest DesiredInstanceCount
        # (and weight) whatever the new config's InitialInstanceCount says ("Update endpoints that use
        # auto scaling", step 6), so a count autoscaling changed since we described it is kept too.
        # Autoscaling itself needs no suspending: AWS blocks it while the update is in progress.
        try:
            self._sm.update_endpoint(EndpointName=name, EndpointConfigName=config_name, DeploymentConfig=deployment,
                                     RetainAllVariantProperties=True)
        except ClientError as exc:
            # botocore's resend of an update that went through; or another update, caught by the check below.
            if not (error_code(exc) == "ValidationException" and "in-progress" in error_message(exc)):
                raise
            log.info("endpoint %s is already updating (%s): waiting for it", name, error_message(exc))
            final = self._wait(name, wait_s)
            if final is not None and final["EndpointStatus"] == "InService" and (
                    final.get("EndpointConfigName") != config_name):
                raise DeploymentFailedError(
                    f"endpoint {name} serves {final.get('EndpointConfigName')}, not {config_name}: an update was "
                    f"already in progress when this one was sent (another deployment's, or this one rolled back"
                    f"{': ' + final['FailureReason'] if final.get('FailureReason') else ''}); deploy again")
        else:
            final = self._wait(name, wait_s)
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

    def _wait(self, name: str, timeout_s: float) -> dict | None:
        """Wait until the endpoint is InService, or in a state it leaves only by our doing (Failed,
        UpdateRollbackFailed, OutOfService); its description then, None when it is gone."""
        wait_until(self._sm, "endpoint_settled", what=f"endpoint {name} to be InService",
                   timeout_s=timeout_s, poll_seconds=self.poll_seconds, EndpointName=name)
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


def _create(create: Callable[[], Any]) -> bool:
    """create(), True; False when SageMaker answers that the resource already exists (ValidationException
    "Cannot create already existing model / endpoint configuration / endpoint"): the answer to botocore's
    resend of a create that went through, or to a concurrent run's. The caller checks what exists."""
    try:
        create()
        return True
    except ClientError as exc:
        if already_exists(exc):
            log.info("%s (a resent or concurrent create): using what exists", error_message(exc))
            return False
        raise


def _serves(config: dict | None, variant: dict[str, str]) -> bool:
    """Whether endpoint config `config` serves exactly `variant` (its name, model and instance type)."""
    variants = (config or {}).get("ProductionVariants") or []
    return len(variants) == 1 and all(variants[0].get(key) == value for key, value in variant.items())


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

