"""delete_endpoint: the pipeline's endpoint, with the configurations and models made for it."""
from __future__ import annotations

from prefect import task

from backends.backend import Backend
from tasks.retry_policy import TASK_OPTIONS


@task(name="delete_endpoint", **TASK_OPTIONS)
def delete_endpoint(backend: Backend, name: str) -> bool:
    """True when something was deleted, False when it was already gone."""
    return backend.hosting.delete_endpoint(name)
