"""delete_support_resources: what the backend made for the pipeline and no longer needs (roles; the
local gateway when it hosts nothing else)."""
from __future__ import annotations

from prefect import task

from backends.backend import Backend
from tasks.retry_policy import TASK_OPTIONS


@task(name="delete_support_resources", **TASK_OPTIONS)
def delete_support_resources(backend: Backend) -> list[str]:
    """What was removed."""
    return backend.delete_support_resources()
