"""Releasing a model version: deploy it blue/green, autoscale, publish the function for it, smoke
test through the function, and only then make it the champion. A release whose smoke test fails
is rolled back: the endpoint to the model that served before, the function's alias to that
model's version; the new model is rejected with the reason, and ReleaseRolledBackError says so.

The steps are tasks of whichever flow releases (train-and-deploy, retrain, rollback), so each shows
in that flow's run."""
from __future__ import annotations

from dataclasses import dataclass

from prefect import get_run_logger

from backends.backend import Backend
from backends.types import EndpointState, FunctionState, ModelVersion, ScalingState, StagedDataset
from core.config import PipelineConfig
from core.retry import PermanentError
from flows.steps import StepTimer
from tasks import artifacts
from tasks.deploy_endpoint import deploy_endpoint
from tasks.promote_model import promote_model
from tasks.publish_lambda import publish_lambda
from tasks.register_autoscaling import register_autoscaling
from tasks.reject_model import reject_model
from tasks.smoke_test import SmokeTestFailedError, SmokeTestReport, smoke_test


@dataclass(frozen=True)
class Release:
    model: ModelVersion  # the champion now
    endpoint: EndpointState
    scaling: ScalingState | None
    function: FunctionState
    smoke_test: SmokeTestReport


class ReleaseRolledBackError(PermanentError):
    """The new model failed its smoke test; what served before serves again."""


def champion(backend: Backend, config: PipelineConfig) -> ModelVersion | None:
    return next((v for v in backend.registry.list_model_versions(config.names.model_group) if v.champion), None)


def serving_model(backend: Backend, config: PipelineConfig) -> ModelVersion | None:
    """The registered version the endpoint serves now (what a failed release returns to), else the champion."""
    versions = backend.registry.list_model_versions(config.names.model_group)
    endpoint = backend.hosting.describe_endpoint(config.names.endpoint)
    served = next((v for v in versions if endpoint is not None and v.label == endpoint.model_version), None)
    return served or next((v for v in versions if v.champion), None)


def release(config: PipelineConfig, backend: Backend, model: ModelVersion, dataset: StagedDataset,
            reason: str, timer: StepTimer | None = None) -> Release:
    """Serve `model`; the smoke test decides whether it stays. `reason` is why it is promoted."""
    timer = timer or StepTimer()
    previous = serving_model(backend, config)
    key = f"release {model.label}"
    artifacts.report(key, 0.0, f"deploying {model.label} to {config.names.endpoint}")
    with timer.step("deploy_endpoint"):
        endpoint = deploy_endpoint(config, backend, model)
    artifacts.report(key, 0.4, "registering autoscaling")
    with timer.step("register_autoscaling"):
        scaling = register_autoscaling(config, backend, endpoint)
    artifacts.report(key, 0.5, f"publishing {config.names.function}")
    with timer.step("publish_lambda"):
        function = publish_lambda(config, backend, endpoint, model)
    artifacts.report(key, 0.8, "smoke test through the function")
    try:
        with timer.step("smoke_test"):
            report = smoke_test(config, backend, function, dataset)
    except SmokeTestFailedError as failure:
        artifacts.report(key, 1.0, "smoke test failed: rolling back")
        _roll_back(config, backend, model, previous, str(failure))
        raise ReleaseRolledBackError(
            f"{model.label} failed its smoke test ({failure}); "
            + (f"{previous.label} serves again" if previous and previous.version != model.version
               else "there was no earlier model to return to")) from None
    promoted = promote_model(config, backend, model, reason)
    artifacts.report(key, 1.0, f"{model.label} serves: smoke test {report.accuracy:.0%} right, p50 {report.p50_ms:.0f} ms")
    return Release(promoted, endpoint, scaling, function, report)


def _roll_back(config: PipelineConfig, backend: Backend, failed: ModelVersion, previous: ModelVersion | None,
               why: str) -> None:
    logger = get_run_logger()
    if previous is not None and previous.version != failed.version:
        logger.warning("rolling back to %s: %s", previous.label, why)
        endpoint = deploy_endpoint(config, backend, previous)
        register_autoscaling(config, backend, endpoint)
        publish_lambda(config, backend, endpoint, previous)
        promote_model(config, backend, previous, f"serves again: version {failed.version} failed its smoke test")
    reject_model(config, backend, failed, f"failed its smoke test: {why}")
    artifacts.markdown(f"{config.stage}-rollback", "\n".join([
        f"## Rolled back: {failed.label} failed its smoke test", f"- {why}",
        f"- serving now: {previous.label}" if previous and previous.version != failed.version
        else "- no earlier model to return to"]))
