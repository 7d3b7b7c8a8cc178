"""stage_pretrained_weights: the user's state-dict file where training jobs read it (never downloaded by us)."""
from __future__ import annotations

from pathlib import Path

from prefect import task

from backends.backend import Backend
from core.config import PipelineConfig
from core.retry import PermanentError
from tasks.retry_policy import TASK_OPTIONS


@task(name="stage_pretrained_weights", **TASK_OPTIONS)
def stage_pretrained_weights(config: PipelineConfig, backend: Backend) -> str | None:
    source = config.training.pretrained_weights
    if not source or source.startswith("s3://"):
        return source
    path = Path(source).expanduser()
    if not path.is_file():
        raise PermanentError(f"training.pretrained_weights {source} is not a file")
    uri = config.names.pretrained_uri(backend.storage.default_bucket(), path.name)
    return backend.storage.upload_file(str(path), uri)
