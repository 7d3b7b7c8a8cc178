"""reject_model: mark a model version Rejected, with the reason, in the registry."""
from __future__ import annotations

from prefect import get_run_logger, task

from backends.backend import Backend
from backends.types import ModelVersion
from core.config import PipelineConfig
from tasks import artifacts
from tasks.retry_policy import TASK_OPTIONS


@task(name="reject_model", **TASK_OPTIONS)
def reject_model(config: PipelineConfig, backend: Backend, version: ModelVersion, reason: str) -> ModelVersion:
    rejected = backend.registry.reject_model_version(version.group, version.version, reason)
    get_run_logger().info("%s rejected: %s", rejected.label, reason)
    artifacts.model_versions(config, backend.registry.list_model_versions(version.group))
    return rejected
