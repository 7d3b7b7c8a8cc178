"""train_and_deploy: from a folder of images to a smoke-tested prediction API.

stage_dataset -> train_model | tune_hyperparameters + select_best_model -> register_model
  -> deploy_endpoint -> register_autoscaling -> publish_lambda -> smoke_test
"""
from __future__ import annotations

import time
from contextlib import contextmanager

from prefect import flow
from pydantic import BaseModel, Field

from backends import get_backend
from core.config import PipelineConfig
from tasks.deploy_endpoint import deploy_endpoint
from tasks.publish_lambda import publish_lambda
from tasks.register_autoscaling import register_autoscaling
from tasks.register_model import register_model
from tasks.select_best_model import select_best_model
from tasks.smoke_test import smoke_test
from tasks.stage_dataset import stage_dataset
from tasks.stage_pretrained_weights import stage_pretrained_weights
from tasks.train_model import train_model
from tasks.tune_hyperparameters import tune_hyperparameters


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


class _Timer:
    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def step(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - started, 2)


@flow(name="train-and-deploy", log_prints=True)
def train_and_deploy(config: PipelineConfig) -> PipelineResult:
    """Train (one job or a tuning job), register, deploy, autoscale, put a Lambda in front, smoke test."""
    backend = get_backend(config.backend, config)
    timer = _Timer()
    try:
        with timer.step("stage_dataset"):
            dataset = stage_dataset(config, backend)
            pretrained = stage_pretrained_weights(config, backend)
        if config.training.mode == "tuning":
            with timer.step("tune_hyperparameters"):
                tuning = tune_hyperparameters(config, backend, dataset, pretrained)
            with timer.step("select_best_model"):
                candidate = select_best_model(tuning)
        else:
            with timer.step("train_model"):
                candidate = train_model(config, backend, dataset, pretrained)
        with timer.step("register_model"):
            version = register_model(config, backend, candidate, dataset)
        with timer.step("deploy_endpoint"):
            endpoint = deploy_endpoint(config, backend, version)
        with timer.step("register_autoscaling"):
            register_autoscaling(config, backend, endpoint)
        with timer.step("publish_lambda"):
            function = publish_lambda(config, backend, endpoint)
        with timer.step("smoke_test"):
            report = smoke_test(backend, function, dataset)
        endpoint_url = backend.endpoint_url
    finally:
        backend.close()
    return PipelineResult(
        backend=config.backend, model_group=version.group, model_version=version.version, job_name=candidate.job_name,
        metrics=candidate.metrics, dataset_uri=dataset.uri, endpoint_name=endpoint.name,
        endpoint_invoke_url=endpoint.invoke_url, function_name=function.name, function_invoke_url=function.invoke_url,
        aws_endpoint_url=endpoint_url, smoke_test_accuracy=report.accuracy, smoke_test_p50_ms=report.p50_ms,
        step_seconds=timer.seconds)
