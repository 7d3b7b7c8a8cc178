"""train_and_deploy: from a folder of images to a smoke-tested prediction API.

plan_run (pre-flight: a failed check stops here) -> stage_dataset
  -> train_model | tune_hyperparameters + select_best_model -> register_model
  -> deploy_endpoint -> register_autoscaling -> publish_lambda -> smoke_test -> promote_model
  (a failed smoke test: endpoint and function back to the champion before, the new model rejected)
"""
# No `from __future__ import annotations` in flow modules: Prefect builds the parameter model (the
# UI's form, a deployment run's validation) from the real annotations.
from prefect import flow
from pydantic import BaseModel, Field

from backends import get_backend
from core.config import PipelineConfig
from flows.release import release
from flows.steps import StepTimer, train_candidate
from tasks.register_model import register_model


class PipelineResult(BaseModel):
    backend: str
    model_group: str
    model_version: int
    job_name: str
    metrics: dict[str, float]
    dataset_uri: str
    endpoint_name: str
    endpoint_invoke_url: str
    function_name: str
    function_invoke_url: str
    aws_endpoint_url: str | None = Field(
        None, description="What boto3 takes as endpoint_url to reach the endpoint and function (None: AWS's own).")
    smoke_test_accuracy: float
    smoke_test_p50_ms: float
    step_seconds: dict[str, float]


@flow(name="train-and-deploy", log_prints=True)
def train_and_deploy(config: PipelineConfig) -> PipelineResult:
    """Train (one job or a tuning job), register, deploy, autoscale, put a Lambda in front, smoke test."""
    backend = get_backend(config.backend, config)
    timer = StepTimer()
    try:
        dataset, candidate = train_candidate(config, backend, timer)
        with timer.step("register_model"):
            version = register_model(config, backend, candidate, dataset)
        released = release(config, backend, version, dataset, "deployed by train-and-deploy", timer)
        endpoint_url = backend.endpoint_url
    finally:
        backend.close()
    return PipelineResult(
        backend=config.backend, model_group=version.group, model_version=version.version, job_name=candidate.job_name,
        metrics=candidate.metrics, dataset_uri=dataset.uri, endpoint_name=released.endpoint.name,
        endpoint_invoke_url=released.endpoint.invoke_url, function_name=released.function.name,
        function_invoke_url=released.function.invoke_url, aws_endpoint_url=endpoint_url,
        smoke_test_accuracy=released.smoke_test.accuracy, smoke_test_p50_ms=released.smoke_test.p50_ms,
        step_seconds=timer.seconds)
