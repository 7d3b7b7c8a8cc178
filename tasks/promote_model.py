"""promote_model: make a model version the champion (Approved), the one the endpoint serves."""
from __future__ import annotations

from prefect import get_run_logger, task

from backends.backend import Backend
from backends.types import ModelVersion
from core.config import PipelineConfig
from tasks import artifacts
from tasks.retry_policy import TASK_OPTIONS


@task(name="promote_model", **TASK_OPTIONS)
def promote_model(config: PipelineConfig, backend: Backend, version: ModelVersion, reason: str) -> ModelVersion:
    promoted = backend.registry.promote_model_version(version.group, version.version, reason)
    get_run_logger().info("%s is the champion: %s", promoted.label, reason)
    artifacts.model_versions(config, backend.registry.list_model_versions(version.group))
    return promoted
