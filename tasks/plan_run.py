"""plan_run: before anything is paid for, what the run will create, update or keep, what it costs, and
its pre-flight checks (quotas, Lambda's unreserved executions, the caller's permissions, this
machine's disk and cores ...). A failed check stops the run here unless preflight.enforce is off."""
from __future__ import annotations

from prefect import get_run_logger, task

from backends.backend import Backend
from backends.types import ModelVersion
from core.config import PipelineConfig
from core.plan import Plan, PreflightFailedError, markdown
from tasks import artifacts
from tasks.retry_policy import TASK_OPTIONS


@task(name="plan_run", **TASK_OPTIONS)
def plan_run(config: PipelineConfig, backend: Backend, release: ModelVersion | None = None) -> Plan:
    """Raises PreflightFailedError (not retried) listing each failed check and what to change, when
    preflight.enforce is on; otherwise the failures are logged as warnings. release: the registered
    version a rollback serves again (nothing is staged or trained, so nothing of that is checked)."""
    logger = get_run_logger()
    plan = backend.planning.plan(config, release)
    documents = markdown(plan)
    counts = plan.counts()
    artifacts.markdown(f"{config.stage}-plan", "## Plan\n\n" + documents["changes"],
                       f"{counts['create']} to create, {counts['update']} to update, {counts['keep']} to keep, "
                       f"{counts['delete']} to delete")
    artifacts.markdown(f"{config.stage}-plan-costs", "## Costs\n\n" + documents["costs"], "cost estimate")
    artifacts.markdown(f"{config.stage}-preflight", "## Pre-flight checks\n\n" + documents["checks"],
                       f"{len(plan.failed)} failed, {len(plan.warnings)} warnings")
    for check in plan.warnings:
        logger.warning("pre-flight %s: %s", check.name, check.message)
    if plan.failed and config.preflight.enforce:
        raise PreflightFailedError(plan.failed)
    for check in plan.failed:
        logger.warning("pre-flight %s FAILED (preflight.enforce is off, the run goes on): %s", check.name,
                       check.message)
    return plan
