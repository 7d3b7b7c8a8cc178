"""How every task retries: transient faults (decided by core.retry) with backoff and jitter; the
rest fail at once."""
from __future__ import annotations

from prefect.cache_policies import NO_CACHE

from core.retry import is_transient


def retry_if_transient(task, task_run, state) -> bool:
    try:
        state.result()
    except Exception as exc:  # the task's own exception
        return is_transient(exc)
    return False


TASK_OPTIONS = dict(
    retries=3,
    retry_delay_seconds=[1, 4, 15],
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_if_transient,
    # Idempotency comes from the backend (find, reuse, update), not from Prefect's result cache.
    cache_policy=NO_CACHE,
)
