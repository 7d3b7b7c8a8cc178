"""delete_function: the pipeline's function, with its versions, alias and concurrency."""
from __future__ import annotations

from prefect import task

from backends.backend import Backend
from tasks.retry_policy import TASK_OPTIONS


@task(name="delete_function", **TASK_OPTIONS)
def delete_function(backend: Backend, name: str) -> bool:
    """True when something was deleted, False when it was already gone."""
    return backend.functions.delete_function(name)
