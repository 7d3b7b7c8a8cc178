"""Pieces the flows share: timing their steps, the link to the run in the Prefect UI, and training a
candidate model (staging, then one job or a tuning job and its best trial)."""
from __future__ import annotations

import time
from contextlib import contextmanager

from backends.backend import Backend
from backends.types import ModelCandidate, StagedDataset
from core.config import PipelineConfig
from tasks.plan_run import plan_run
from tasks.select_best_model import select_best_model
from tasks.stage_dataset import stage_dataset
from tasks.stage_pretrained_weights import stage_pretrained_weights
from tasks.train_model import train_model
from tasks.tune_hyperparameters import tune_hyperparameters


class StepTimer:
    """Seconds per named step, for the result and the CLI's summary table."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def step(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - started, 2)


def run_token() -> str:
    """What names this flow run's jobs: its scheduled start and a piece of its id, the same on every
    retry of the run (so a retried task or flow run attaches to the job it started), new for a new run."""
    from prefect.runtime import flow_run

    started = flow_run.scheduled_start_time
    return f"{started:%y%m%d-%H%M%S}-{str(flow_run.id).replace('-', '')[-4:]}"


def train_candidate(config: PipelineConfig, backend: Backend, timer: StepTimer) -> tuple[StagedDataset, ModelCandidate]:
    """Plan and check what can be checked before paying (a failed check stops the run here), stage
    the data and train: one job (instance mode) or a tuning job and its best trial."""
    with timer.step("plan_run"):
        plan_run(config, backend)
    with timer.step("stage_dataset"):
        dataset = stage_dataset(config, backend)
        pretrained = stage_pretrained_weights(config, backend)
    token = run_token()  # decided here, outside the retried tasks
    if config.training.mode == "tuning":
        with timer.step("tune_hyperparameters"):
            tuning = tune_hyperparameters(config, backend, dataset, pretrained, config.names.tuning_job(token))
        with timer.step("select_best_model"):
            candidate = select_best_model(tuning)
    else:
        with timer.step("train_model"):
            candidate = train_model(config, backend, dataset, pretrained, config.names.training_job(token))
    return dataset, candidate
