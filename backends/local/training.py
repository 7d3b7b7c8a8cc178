"""Training on the local backend: training/train.py in subprocesses, one job at a time
(training_jobs.py) or as a tuning job of parallel trials (tuning.py).

Each job records the configuration digest of its request (everything but the job's name), so a new
flow run with the same configuration (a new job name) attaches to the job of that configuration that
still runs, or returns the one that completed, instead of training again; a changed request trains."""
from __future__ import annotations

from dataclasses import asdict

from backends.local.state import LocalState
from backends.local.store import LocalStore
from backends.local.training_jobs import LocalTrainingJobs, TrainingJobSpec
from backends.local.tuning import LocalTuning, TuningJobSpec
from backends.types import (
    EpochCallback, LogCallback, TrainingOutcome, TrainingRequest, TrialCallback, TrialProgressCallback, TuningOutcome,
    TuningRequest,
)
from core.metrics import METRIC_DEFINITIONS, parse_metric_line
from core.names import configuration_digest


def request_digest(request: TrainingRequest | TuningRequest) -> str:
    """What a job was asked to do, whatever its name."""
    return configuration_digest({k: v for k, v in asdict(request).items() if k != "job_name"})


class LocalTraining:
    def __init__(self, state: LocalState, store: LocalStore, cpus: int | None = None):
        self.store = store
        self.cpus = cpus
        self.jobs = LocalTrainingJobs(state, store)
        self.tuning = LocalTuning(state, self.jobs)

    def _channels(self, dataset_uri: str, pretrained_uri: str | None, hyperparameters: dict[str, str]) -> dict[str, str]:
        """SageMaker's channels: `training`, and `pretrained` for weights (a file's folder; the file's
        name goes to train.py as --pretrained-file, as on the aws backend)."""
        inputs = {"training": dataset_uri}
        if pretrained_uri:
            if self.store.path(pretrained_uri).is_dir():
                inputs["pretrained"] = pretrained_uri
            else:
                folder, _, filename = pretrained_uri.rpartition("/")
                inputs["pretrained"] = folder
                hyperparameters["pretrained-file"] = filename
        return inputs

    def run_training_job(self, request: TrainingRequest, on_log: LogCallback | None = None,
                         on_epoch: EpochCallback | None = None) -> TrainingOutcome:
        hyperparameters = dict(request.hyperparameters)
        inputs = self._channels(request.dataset_uri, request.pretrained_uri, hyperparameters)
        digest = request_digest(request)
        found = self.jobs.find(digest)
        spec = TrainingJobSpec(found.name if found else request.job_name, hyperparameters, inputs, request.output_uri,
                               cpus=self.cpus, max_runtime_seconds=request.max_runtime_seconds,
                               metric_definitions=list(METRIC_DEFINITIONS), digest=digest)
        on_metrics = (lambda values: on_epoch(values) if "epoch" in values else None) if on_epoch else None
        return self.jobs.run(spec, on_log=on_log, on_metrics=on_metrics).outcome()

    def run_tuning_job(self, request: TuningRequest, on_trial: TrialCallback | None = None,
                       on_trial_progress: TrialProgressCallback | None = None) -> TuningOutcome:
        static = dict(request.static_hyperparameters)
        inputs = self._channels(request.dataset_uri, request.pretrained_uri, static)
        spec = TuningJobSpec(
            name=request.job_name, static_hyperparameters=static, parameter_ranges=request.parameter_ranges,
            inputs=inputs, output_uri=request.output_uri, objective_metric=request.objective_metric,
            objective_type=request.objective_type, strategy=request.strategy, max_jobs=request.max_jobs,
            max_parallel_jobs=request.max_parallel_jobs, cpus=self.cpus,
            max_runtime_seconds=request.max_runtime_seconds, seed=request.seed, digest=request_digest(request))
        on_log = None
        if on_trial_progress:
            def on_log(trial: str, line: str) -> None:
                values = parse_metric_line(line)
                if "epoch" in values:
                    on_trial_progress(trial, values)
        result = self.tuning.run(spec, on_trial=on_trial, on_log=on_log,
                                 on_start=(lambda trial: on_trial_progress(trial, {})) if on_trial_progress else None)
        return TuningOutcome(job_name=result.name, status=result.status, objective_metric=result.objective_metric,
                             objective_type=result.objective_type, trials=result.trials,
                             failure_reason=result.failure_reason)
