"""Resource and job names that satisfy SageMaker's naming rules."""
from __future__ import annotations

import re
import secrets
from datetime import datetime, timezone

_INVALID = re.compile(r"[^a-zA-Z0-9-]+")
TRAINING_JOB_MAX = 63
TUNING_JOB_MAX = 32  # SageMaker's limit for HyperParameterTuningJobName


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


def trial_job_name(tuning_job_name: str, index: int, token: str) -> str:
    """SageMaker's form for a tuning job's training jobs: `<tuning job>-<NNN>-<8 hex>`."""
    return f"{tuning_job_name}-{index:03d}-{token[:8]}"


def pipeline_names(project: str, stage: str) -> dict[str, str]:
    """The names of everything one pipeline makes; the same on both backends."""
    return {
        "endpoint": resource_name(project, stage, "endpoint"),
        "endpoint_config_prefix": resource_name(project, stage, "config", 40),
        "model_group": resource_name(project, stage, "models"),
        "function": resource_name(project, stage, "predict", 64),
        "training_job_prefix": resource_name(project, stage, "train", 40),
        # Tuning job names are limited to 32 characters: the stage keeps them apart.
        "tuning_job_prefix": _clean(f"{stage}-tune"),
    }
