"""Names of everything a pipeline makes (resources, jobs, roles, S3 prefixes), decided in one place
and the same on both backends. They satisfy SageMaker's, Lambda's and IAM's naming rules."""
from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Mapping
from typing import Any
from dataclasses import dataclass
from datetime import datetime, timezone

_INVALID = re.compile(r"[^a-zA-Z0-9-]+")
TRAINING_JOB_MAX = 63
TUNING_JOB_MAX = 32  # SageMaker's limit for HyperParameterTuningJobName
ROLE_MAX = 64


def _clean(text: str) -> str:
    return re.sub(r"-{2,}", "-", _INVALID.sub("-", text)).strip("-")


def resource_name(project: str, stage: str, kind: str, max_length: int = 63) -> str:
    """`<project>-<stage>-<kind>`, e.g. sagemaker-flows-dev-endpoint."""
    return _clean(f"{project}-{stage}-{kind}")[:max_length].rstrip("-")


def timestamped_name(prefix: str, max_length: int = TRAINING_JOB_MAX, now: datetime | None = None) -> str:
    """`<prefix>-<yymmdd-hhmmss>-<4 hex>`, cut to max_length by shortening the prefix."""
    stamp = (now or datetime.now(timezone.utc)).strftime("%y%m%d-%H%M%S")
    suffix = f"-{stamp}-{secrets.token_hex(2)}"
    head = _clean(prefix)[: max_length - len(suffix)].rstrip("-") or "job"
    return head + suffix


def configuration_digest(settings: Mapping[str, Any]) -> str:
    """16 hex of the SHA-256 of `settings` as canonical JSON: what a job was asked to do, as a tag
    value, so a re-run with the same settings finds the job (running or completed) to attach to."""
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def trial_job_name(tuning_job_name: str, index: int, token: str) -> str:
    """SageMaker's form for a tuning job's training jobs: `<tuning job>-<NNN>-<8 hex>`."""
    return f"{tuning_job_name}-{index:03d}-{token[:8]}"


@dataclass(frozen=True)
class PipelineNames:
    """What one pipeline (project + stage) calls its resources, jobs, roles and S3 prefixes."""

    project: str
    stage: str

    @property
    def endpoint(self) -> str:
        return resource_name(self.project, self.stage, "endpoint")

    @property
    def model_group(self) -> str:
        return resource_name(self.project, self.stage, "models")

    @property
    def function(self) -> str:
        return resource_name(self.project, self.stage, "predict", 64)

    @property
    def training_job_prefix(self) -> str:
        return resource_name(self.project, self.stage, "train", 40)

    @property
    def tuning_job_prefix(self) -> str:
        # Tuning job names are limited to 32 characters: the stage keeps them apart.
        return _clean(f"{self.stage}-tune")

    def training_job(self, run_token: str) -> str:
        """The training job of one flow run: the same on every retry of that run, so a retry attaches to
        the job the first attempt started instead of paying for a second one."""
        return f"{self.training_job_prefix}-{_clean(run_token)[:18]}"[:TRAINING_JOB_MAX].rstrip("-")

    def tuning_job(self, run_token: str) -> str:
        """The tuning job of one flow run (SageMaker allows 32 characters)."""
        token = _clean(run_token)[:18]
        return f"{self.tuning_job_prefix[:TUNING_JOB_MAX - len(token) - 1].rstrip('-')}-{token}"

    def role(self, kind: str) -> str:
        """The IAM role (and instance profile) of `kind`: sagemaker, ec2 or lambda."""
        return f"{self.project}-{self.stage}-{kind}"[:ROLE_MAX]

    DIGEST_TAG = "sagemaker-flows:config-digest"

    @property
    def tags(self) -> dict[str, str]:
        """Tags every AWS resource of the pipeline carries."""
        return {"sagemaker-flows:project": self.project, "sagemaker-flows:stage": self.stage}

    # -- S3 (or the local store): everything under s3://<bucket>/<project>/<stage>/ ---------------
    @property
    def prefix(self) -> str:
        return f"{self.project}/{self.stage}"

    def prefix_uri(self, bucket: str) -> str:
        """Everything of the pipeline in a bucket: s3://<bucket>/<project>/<stage>/."""
        return f"s3://{bucket}/{self.prefix}/"

    def dataset_uri(self, bucket: str, checksum: str) -> str:
        """Where a dataset is staged: named by its content, so a changed folder never overwrites a used one."""
        return f"s3://{bucket}/{self.prefix}/datasets/{checksum[:16]}"

    def pretrained_uri(self, bucket: str, filename: str) -> str:
        return f"s3://{bucket}/{self.prefix}/pretrained/{filename}"

    def jobs_uri(self, bucket: str) -> str:
        """Training jobs write `<jobs_uri>/<job>/output/model.tar.gz`."""
        return f"s3://{bucket}/{self.prefix}/jobs"

    def code_uri(self, bucket: str) -> str:
        """Where the training code is uploaded for jobs on AWS."""
        return f"s3://{bucket}/{self.prefix}/code"
