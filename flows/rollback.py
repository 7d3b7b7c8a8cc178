"""rollback: serve an earlier model version again (deploy, publish the function for it, smoke test,
make it the champion); its own smoke test failing rolls back to what served before.

the version, looked up in the registry -> plan_run of serving it again (pre-flight, as every flow that
deploys: a failed check stops here unless preflight.enforce is off; nothing is trained, so no data or
training check can stop a rollback) -> release of the version (a blue/green update of the endpoint,
paid by the hour)."""
# No `from __future__ import annotations` in flow modules: Prefect builds the parameter model from
# the real annotations.
from prefect import flow
from pydantic import BaseModel, Field

from backends import get_backend
from backends.errors import NotFoundError
from core.config import PipelineConfig
from flows.release import release
from flows.steps import StepTimer
from tasks.plan_run import plan_run
from tasks.stage_dataset import stage_dataset


class RollbackResult(BaseModel):
    serving: str = Field(description="The model version the endpoint serves now.")
    smoke_test_accuracy: float
    step_seconds: dict[str, float]


@flow(name="rollback", log_prints=True)
def rollback(config: PipelineConfig, version: int) -> RollbackResult:
    """Serve model version `version` again, smoke-tested, as the champion."""
    backend = get_backend(config.backend, config)
    timer = StepTimer()
    try:
        versions = {v.version: v for v in backend.registry.list_model_versions(config.names.model_group)}
        if version not in versions:
            known = ", ".join(str(n) for n in sorted(versions)) or "none"
            raise NotFoundError(f"model group {config.names.model_group} has no version {version} (versions: {known})")
        target = versions[version]
        with timer.step("plan_run"):
            plan_run(config, backend, target)
        # The smoke test uses the data the version was tested on, when it is still staged.
        dataset = (backend.storage.describe_prefix(target.dataset_uri) if target.dataset_uri
                   else stage_dataset(config, backend))
        released = release(config, backend, target, dataset, f"served again by a rollback to version {version}", timer)
    finally:
        backend.close()
    return RollbackResult(serving=released.endpoint.model_version, smoke_test_accuracy=released.smoke_test.accuracy,
                          step_seconds=timer.seconds)
