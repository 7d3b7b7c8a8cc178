"""check_function_concurrency: before anything is paid for, whether the function's reserved and
provisioned concurrency fit the account (AWS keeps 100 executions unreserved; new accounts may
have 10 in all) or, locally, this machine."""
from __future__ import annotations

from prefect import task

from backends.backend import Backend
from core.config import PipelineConfig
from tasks.retry_policy import TASK_OPTIONS


@task(name="check_function_concurrency", **TASK_OPTIONS)
def check_function_concurrency(config: PipelineConfig, backend: Backend) -> None:
    """Raises InvalidRequestError saying which setting to change (not retried: it is permanent)."""
    backend.functions.check_concurrency(config.names.function, config.function)
