"""The SageMaker model registry: one model package group per pipeline, one versioned model
package per registered training job, and the Approved version as the champion. Mirrors
backends/local/registry.py (same ModelVersion records, same idempotency by job name).

What a version carries besides its container goes in CustomerMetadataProperties. SageMaker
limits those values to 256 characters of letters, digits, spaces and `_.:/=+-@` (no braces or
quotes), so the dicts are stored as base64 of their JSON (base64 uses only allowed characters),
split over `<key>`, `<key>.2`, `<key>.3`, ... when longer than 256 characters. The description
repeats the metrics as readable JSON for the console.
"""
from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from botocore.exceptions import ClientError

from backends.aws.errors import is_not_found, or_none
from backends.errors import NotFoundError
from backends.types import APPROVED, PENDING, REJECTED, ModelVersion

log = logging.getLogger(__name__)

CONTENT_TYPES = ["image/jpeg", "image/png", "application/x-image", "application/json"]
RESPONSE_TYPES = ["application/json"]
_VALUE_MAX = 256  # SageMaker's limit for one CustomerMetadataProperties value
_ENTRIES_MAX = 50  # ... and for the number of entries
_DESCRIPTION_MAX = 1024


class ModelRegistry:
    """The Registry service on SageMaker. image_uri: the inference image versions are registered with
    (or a function that picks it); description: what new groups say they hold."""

    def __init__(self, sagemaker, image_uri: str | Callable[[], str], description: str = ""):
        self._sm = sagemaker
        self._image_uri = image_uri
        self.description = description

    # -- groups -----------------------------------------------------------------------
    def ensure_group(self, group: str) -> str:
        """The group's ARN; the group is created when missing."""
        arn = self._group_arn(group)
        if arn:
            return arn
        params: dict[str, Any] = {"ModelPackageGroupName": group}
        if self.description:
            params["ModelPackageGroupDescription"] = self.description[:_DESCRIPTION_MAX]
        try:
            arn = self._sm.create_model_package_group(**params)["ModelPackageGroupArn"]
            log.info("created model package group %s", group)
            return arn
        except ClientError:
            # Another run may have created it between the describe and the create.
            arn = self._group_arn(group)
            if arn:
                return arn
            raise

    def _group_arn(self, group: str) -> str | None:
        found = or_none(self._sm.describe_model_package_group, ModelPackageGroupName=group)
        return found["ModelPackageGroupArn"] if found else None

    # -- versions ---------------------------------------------------------------------
    def register_model_version(self, group: str, model_artifact: str, metrics: dict[str, float],
                               hyperparameters: dict[str, str], dataset_checksum: str, job_name: str,
                               dataset_uri: str = "") -> ModelVersion:
        """A new version, or the existing one registered from the same training job."""
        self.ensure_group(group)
        existing = next((v for v in self.list_model_versions(group) if v.job_name == job_name), None)
        if existing:
            log.info("%s is already registered as %s", job_name, existing.label)
            return existing
        properties = {"job_name": job_name}
        if dataset_checksum:  # values may not be empty
            properties["dataset_checksum"] = dataset_checksum
        if dataset_uri:  # s3://bucket/project/stage/datasets/<hex>: letters, digits and :/.- only
            properties["dataset_uri"] = dataset_uri
        properties.update(_pack("hyperparameters", {str(k): str(v) for k, v in hyperparameters.items()}))
        properties.update(_pack("metrics", {str(k): float(v) for k, v in metrics.items()}))
        if len(properties) > _ENTRIES_MAX:
            raise ValueError(f"metadata of {job_name} needs {len(properties)} entries; SageMaker allows {_ENTRIES_MAX}")
        description = f"training job {job_name}; metrics {json.dumps(metrics, sort_keys=True)}"
        arn = self._sm.create_model_package(
            ModelPackageGroupName=group,
            ModelPackageDescription=description[:_DESCRIPTION_MAX],
            InferenceSpecification={
                "Containers": [{"Image": self._image(), "ModelDataUrl": model_artifact}],
                "SupportedContentTypes": CONTENT_TYPES,
                "SupportedResponseMIMETypes": RESPONSE_TYPES,
            },
            ModelApprovalStatus=PENDING,
            CustomerMetadataProperties=properties,
        )["ModelPackageArn"]
        version = _to_version(group, self._sm.describe_model_package(ModelPackageName=arn))
        log.info("registered %s as %s", job_name, version.label)
        return version

    def _image(self) -> str:
        return self._image_uri() if callable(self._image_uri) else self._image_uri

    def list_model_versions(self, group: str) -> list[ModelVersion]:
        """Every version of the group by version number; the latest Approved one is the champion."""
        described = [self._sm.describe_model_package(ModelPackageName=arn) for arn in self._package_arns(group)]
        described.sort(key=lambda d: d.get("ModelPackageVersion", 0))
        approved = [d["ModelPackageVersion"] for d in described if d.get("ModelApprovalStatus") == APPROVED]
        champion = max(approved, default=None)
        versions = [_to_version(group, d) for d in described]
        return [replace(v, champion=v.version == champion) for v in versions]

    def promote_model_version(self, group: str, version: int, reason: str = "promoted") -> ModelVersion:
        """Approve `version`; every other Approved version of the group becomes Rejected.

        Approved is what SageMaker's deployment tooling (EventBridge rules, CI pipelines, the
        console's "deploy") reads as "this one serves", so only the champion may keep it: two
        Approved versions would leave "the approved model" ambiguous. The superseded version is
        Rejected rather than sent back to PendingManualApproval, which would claim it awaits a
        review that will never come; its ApprovalDescription says it was superseded, not found
        bad, and promote_model_version() can approve it again (a rollback). The new one is approved first, so
        there is never a moment without an Approved version.
        """
        described = {d.get("ModelPackageVersion"): d for d in
                     (self._sm.describe_model_package(ModelPackageName=arn) for arn in self._package_arns(group))}
        target = described.get(version)
        if target is None:
            raise NotFoundError(f"model group {group} has no version {version}")
        if target.get("ModelApprovalStatus") != APPROVED:
            self._set_status(target, APPROVED, reason)
        for number, other in described.items():
            if number != version and other.get("ModelApprovalStatus") == APPROVED:
                self._set_status(other, REJECTED, f"superseded by version {version}")
        log.info("promoted %s/%s", group, version)
        promoted = _to_version(group, self._sm.describe_model_package(ModelPackageName=target["ModelPackageArn"]))
        return replace(promoted, champion=True)

    def reject_model_version(self, group: str, version: int, reason: str) -> ModelVersion:
        """Reject `version` with the reason (it stops being the champion if it was)."""
        described = {d.get("ModelPackageVersion"): d for d in
                     (self._sm.describe_model_package(ModelPackageName=arn) for arn in self._package_arns(group))}
        target = described.get(version)
        if target is None:
            raise NotFoundError(f"model group {group} has no version {version}")
        self._set_status(target, REJECTED, reason)
        log.info("rejected %s/%s: %s", group, version, reason)
        return next(v for v in self.list_model_versions(group) if v.version == version)

    def _set_status(self, package: dict, status: str, reason: str) -> None:
        params: dict[str, Any] = {"ModelPackageArn": package["ModelPackageArn"], "ModelApprovalStatus": status,
                                  "ApprovalDescription": reason[:_DESCRIPTION_MAX]}
        # The metadata is sent again unchanged: SageMaker merges it (a no-op), and emulators that
        # replace it with the request's value (moto) keep it rather than drop it.
        if package.get("CustomerMetadataProperties"):
            params["CustomerMetadataProperties"] = package["CustomerMetadataProperties"]
        self._sm.update_model_package(**params)

    def _package_arns(self, group: str) -> list[str]:
        arns: list[str] = []
        try:
            for page in self._sm.get_paginator("list_model_packages").paginate(
                    ModelPackageGroupName=group, ModelPackageType="Versioned"):
                arns.extend(s["ModelPackageArn"] for s in page.get("ModelPackageSummaryList", []))
        except ClientError as err:
            if is_not_found(err):
                return []
            raise
        return arns


def _to_version(group: str, described: dict) -> ModelVersion:
    properties = described.get("CustomerMetadataProperties") or {}
    containers = described.get("InferenceSpecification", {}).get("Containers") or [{}]
    created = described.get("CreationTime")
    return ModelVersion(
        group=group,
        version=int(described.get("ModelPackageVersion", 0)),
        model_artifact=containers[0].get("ModelDataUrl", ""),
        metrics={k: float(v) for k, v in _unpack("metrics", properties).items()},
        hyperparameters={k: str(v) for k, v in _unpack("hyperparameters", properties).items()},
        dataset_checksum=properties.get("dataset_checksum", ""),
        job_name=properties.get("job_name", ""),
        created_at=_seconds(created) or 0.0,
        dataset_uri=properties.get("dataset_uri", ""),
        status=described.get("ModelApprovalStatus", PENDING),
        status_reason=described.get("ApprovalDescription", ""),
        status_changed_at=_seconds(described.get("LastModifiedTime")),
    )


def _seconds(value) -> float | None:
    """A describe's timestamp (a datetime from boto3) as epoch seconds."""
    if value is None:
        return None
    return value.timestamp() if hasattr(value, "timestamp") else float(value)


def _pack(key: str, value: dict) -> dict[str, str]:
    """`value` as base64 JSON under key, key.2, key.3, ... (each at most 256 characters)."""
    text = base64.b64encode(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).decode()
    chunks = [text[i:i + _VALUE_MAX] for i in range(0, len(text), _VALUE_MAX)]
    return {key if i == 0 else f"{key}.{i + 1}": chunk for i, chunk in enumerate(chunks)}


def _unpack(key: str, properties: dict[str, str]) -> dict:
    if key not in properties:
        return {}
    parts, number = [properties[key]], 2
    while f"{key}.{number}" in properties:
        parts.append(properties[f"{key}.{number}"])
        number += 1
    text = "".join(parts)
    if text.lstrip().startswith("{"):  # plain JSON, written by hand or another tool
        return json.loads(text)
    return json.loads(base64.b64decode(text))

