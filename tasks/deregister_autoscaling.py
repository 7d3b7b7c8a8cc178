"""deregister_autoscaling: the endpoint variant's scaling policy and scalable target."""
from __future__ import annotations

from prefect import task

from backends.backend import Backend
from tasks.retry_policy import TASK_OPTIONS


@task(name="deregister_autoscaling", **TASK_OPTIONS)
def deregister_autoscaling(backend: Backend, endpoint_name: str, variant_name: str) -> bool:
    """True when something was deregistered, False when nothing was registered."""
    return backend.hosting.deregister_autoscaling(endpoint_name, variant_name)
