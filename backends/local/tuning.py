"""Local hyperparameter tuning: SageMaker's ParameterRanges and strategies, trials as local training jobs.

Random and Bayesian draw from Optuna (RandomSampler, TPESampler with a constant liar so
parallel trials spread out); Grid walks every combination. Up to max_parallel_jobs trials
run at once and split the CPU cores. A failed trial is recorded with its reason; the
tuning job fails only when every trial fails.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field

from backends.files import write_atomic
from backends.local.state import LocalState
from backends.local.training_jobs import LocalTrainingJobs, TrainingJobResult, TrainingJobSpec
from backends.types import TrialCallback, TrialSummary
from core.best_trial import NoSuccessfulTrialError, choose_best_trial
from core.names import trial_job_name

STRATEGIES = ("Bayesian", "Random", "Grid")


@dataclass
class TuningJobSpec:
    name: str
    static_hyperparameters: dict[str, str]
    parameter_ranges: dict  # SageMaker's ParameterRanges structure
    inputs: dict[str, str]
    output_uri: str
    objective_metric: str = "valid_loss"
    objective_type: str = "Minimize"
    strategy: str = "Bayesian"
    max_jobs: int = 4
    max_parallel_jobs: int = 2
    cpus: int | None = None
    max_runtime_seconds: int = 86400
    seed: int = 0


@dataclass
class TuningJobResult:
    name: str
    status: str  # Completed | Failed
    objective_metric: str
    objective_type: str
    strategy: str
    trials: list[TrialSummary] = field(default_factory=list)
    best_trial: str | None = None
    failure_reason: str | None = None
    started_at: float = 0.0
    ended_at: float = 0.0

    @property
    def best(self) -> TrialSummary | None:
        return next((t for t in self.trials if t.job_name == self.best_trial), None)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "TuningJobResult":
        data = json.loads(text)
        data["trials"] = [TrialSummary(**t) for t in data["trials"]]
        return cls(**data)


class _Proposer:
    """Hands out hyperparameter sets and learns from results (thread-safe)."""

    def __init__(self, ranges: dict, strategy: str, objective_type: str, max_jobs: int, seed: int):
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
        self.lock = threading.Lock()
        self.strategy = strategy
        if strategy == "Grid":
            self.grid = _grid(ranges)
            self.total = min(max_jobs, len(self.grid))
            return
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.distributions, self.reverse_log = _distributions(ranges)
        sampler = (optuna.samplers.RandomSampler(seed=seed) if strategy == "Random" else
                   optuna.samplers.TPESampler(seed=seed, constant_liar=True,
                                              n_startup_trials=max(1, min(10, max_jobs // 2))))
        direction = "maximize" if objective_type == "Maximize" else "minimize"
        self.study = optuna.create_study(direction=direction, sampler=sampler)
        self.pending: dict[int, object] = {}
        self.total = max_jobs

    def propose(self, index: int) -> dict[str, str]:
        with self.lock:
            if self.strategy == "Grid":
                return dict(self.grid[index])
            trial = self.study.ask(self.distributions)
            self.pending[index] = trial
            return {name: _as_string(name, value, self.reverse_log) for name, value in trial.params.items()}

    def report(self, index: int, objective: float | None) -> None:
        if self.strategy == "Grid":
            return
        import optuna

        with self.lock:
            trial = self.pending.pop(index)
            if objective is None or not math.isfinite(objective):
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                self.study.tell(trial, objective)


def _distributions(ranges: dict):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    dists, reverse_log = {}, set()
    for r in ranges.get("ContinuousParameterRanges", []):
        low, high, scaling = float(r["MinValue"]), float(r["MaxValue"]), r.get("ScalingType", "Auto")
        if scaling == "ReverseLogarithmic":  # dense near 1: sample 1 - x log-uniformly
            dists[r["Name"]] = FloatDistribution(1 - high, 1 - low, log=True)
            reverse_log.add(r["Name"])
            continue
        log = scaling == "Logarithmic" or (scaling == "Auto" and low > 0 and high / low >= 100)
        dists[r["Name"]] = FloatDistribution(low, high, log=log)
    for r in ranges.get("IntegerParameterRanges", []):
        low, high, scaling = int(r["MinValue"]), int(r["MaxValue"]), r.get("ScalingType", "Auto")
        log = scaling == "Logarithmic" or (scaling == "Auto" and low > 0 and high / low >= 100)
        dists[r["Name"]] = IntDistribution(low, high, log=log)
    for r in ranges.get("CategoricalParameterRanges", []):
        dists[r["Name"]] = CategoricalDistribution([str(v) for v in r["Values"]])
    if not dists:
        raise ValueError("parameter ranges are empty: nothing to tune")
    return dists, reverse_log


def _grid(ranges: dict) -> list[dict[str, str]]:
    if ranges.get("ContinuousParameterRanges"):
        raise ValueError("Grid strategy takes only integer and categorical ranges")
    axes = {r["Name"]: [str(v) for v in range(int(r["MinValue"]), int(r["MaxValue"]) + 1)]
            for r in ranges.get("IntegerParameterRanges", [])}
    axes.update({r["Name"]: [str(v) for v in r["Values"]] for r in ranges.get("CategoricalParameterRanges", [])})
    if not axes:
        raise ValueError("parameter ranges are empty: nothing to tune")
    names = list(axes)
    return [dict(zip(names, combo)) for combo in itertools.product(*(axes[n] for n in names))]


def _as_string(name: str, value, reverse_log: set[str]) -> str:
    if name in reverse_log:
        value = 1 - value
    return f"{value:.6g}" if isinstance(value, float) else str(value)


class LocalTuning:
    def __init__(self, state: LocalState, jobs: LocalTrainingJobs | None = None):
        self.state = state
        self.jobs = jobs or LocalTrainingJobs(state)

    def _record_path(self, name: str):
        return self.state.tuning / f"{name}.json"

    def describe(self, name: str) -> TuningJobResult | None:
        path = self._record_path(name)
        return TuningJobResult.from_json(path.read_text()) if path.is_file() else None

    def run(self, spec: TuningJobSpec, on_trial: TrialCallback | None = None,
            on_log: Callable[[str, str], None] | None = None,
            on_start: Callable[[str], None] | None = None) -> TuningJobResult:
        """Run the tuning job to its end; a Completed one of the same name is returned as it is."""
        previous = self.describe(spec.name)
        if previous is not None and previous.status == "Completed":
            return previous
        proposer = _Proposer(spec.parameter_ranges, spec.strategy, spec.objective_type, spec.max_jobs, spec.seed)
        total, parallel = proposer.total, max(1, min(spec.max_parallel_jobs, proposer.total))
        cpus_per_trial = max(1, (spec.cpus or os.cpu_count() or 1) // parallel)
        result = TuningJobResult(spec.name, "InProgress", spec.objective_metric, spec.objective_type, spec.strategy,
                                 started_at=time.time())
        self._save(result)

        def run_trial(index: int) -> TrialSummary:
            tuned = proposer.propose(index)
            token = hashlib.sha256(json.dumps(tuned, sort_keys=True).encode()).hexdigest()
            name = trial_job_name(spec.name, index + 1, token)
            job = TrainingJobSpec(
                name=name, hyperparameters={**spec.static_hyperparameters, **tuned}, inputs=spec.inputs,
                output_uri=spec.output_uri, cpus=cpus_per_trial, max_runtime_seconds=spec.max_runtime_seconds)
            if on_start:
                on_start(name)
            try:
                outcome = self.jobs.run(job, on_log=(lambda line: on_log(name, line)) if on_log else None)
            except Exception as exc:  # the trial could not even start: record it, keep tuning
                proposer.report(index, None)
                return TrialSummary(index=index, job_name=name, status="Failed", tuned_hyperparameters=tuned,
                                    objective=None, failure_reason=f"{type(exc).__name__}: {exc}", final_metrics={},
                                    model_artifact=None, duration_seconds=0.0)
            record = _trial_record(index, tuned, outcome, spec.objective_metric)
            proposer.report(index, record.objective if record.status == "Completed" else None)
            return record

        with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="trial") as pool:
            running = {pool.submit(run_trial, i) for i in range(min(parallel, total))}
            started = len(running)
            try:
                self._collect(result, running, pool, run_trial, started, total, on_trial)
            except BaseException:
                self.jobs.stop_all()  # cancelled: stop the trials in flight before leaving
                raise
        result.trials.sort(key=lambda t: t.index)
        try:
            best = choose_best_trial(result.trials, spec.objective_type)
            result.status, result.best_trial = "Completed", best.job_name
        except NoSuccessfulTrialError as exc:
            result.status, result.failure_reason = "Failed", str(exc)
        result.ended_at = time.time()
        self._save(result)
        return result

    def _collect(self, result, running, pool, run_trial, started, total, on_trial) -> None:
        while running:
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                record = future.result()
                result.trials.append(record)
                self._save(result)
                if on_trial:
                    on_trial(record, len(result.trials), total)
                if started < total:
                    running.add(pool.submit(run_trial, started))
                    started += 1

    def _save(self, result: TuningJobResult) -> None:
        write_atomic(self._record_path(result.name), result.to_json())


def _trial_record(index: int, tuned: dict[str, str], outcome: TrainingJobResult, metric: str) -> TrialSummary:
    status, reason, objective = outcome.status, outcome.failure_reason, None
    if status == "Completed":
        objective = outcome.final_metrics.get(metric)
        if objective is None:  # as on SageMaker: no objective, no usable trial
            status, reason = "Failed", f"the objective metric {metric} was never reported"
    return TrialSummary(index=index, job_name=outcome.name, status=status, tuned_hyperparameters=tuned,
                        objective=objective, failure_reason=reason, final_metrics=outcome.final_metrics,
                        model_artifact=outcome.model_artifact, duration_seconds=outcome.duration_seconds,
                        epochs=outcome.epochs, log_location=outcome.log_path)
