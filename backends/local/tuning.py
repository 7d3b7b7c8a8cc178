"""Local hyperparameter tuning: SageMaker's ParameterRanges and strategies, trials as local training jobs.

Random and Bayesian draw from Optuna (RandomSampler, TPESampler with a constant liar so
parallel trials spread out); Grid walks every combination. Up to max_parallel_jobs trials
run at once and split the CPU cores. A failed trial is recorded with its reason; the
tuning job fails only when every trial fails.

The tuning record (<home>/tuning/<name>.json) keeps every trial's hyperparameters from the moment
it starts and every finished trial, and the trials' job folders keep their state. A run of a name
that is InProgress with nobody running it (the flow crashed) resumes it: the finished trials are
kept (the study is told their results) and only the others run, with the hyperparameters they had;
a trial that completed meanwhile is found Completed in its folder and not trained again. The
process running a tuning job holds its lock (<home>/locks/tuning), so a second one follows the
record until the first ends, then returns its end or, if the first died, resumes it. With the
request's configuration digest, a new name finds the tuning job of the same configuration that
runs or completed, and attaches to it instead of training again.
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
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace

from filelock import Timeout

from backends.files import write_atomic
from backends.local.state import LocalState
from backends.local.training_jobs import LocalTrainingJobs, TrainingJobResult, TrainingJobSpec, job_lock
from backends.types import TrialCallback, TrialSummary
from core.best_trial import NoSuccessfulTrialError, choose_best_trial
from core.names import trial_job_name

STRATEGIES = ("Bayesian", "Random", "Grid")
_FINISHED = ("Completed", "Failed")  # a trial that ended by itself; a Stopped one runs again


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
    digest: str | None = None  # core.names.configuration_digest of what was asked: a re-run finds the job by it


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
    digest: str | None = None
    # Every trial started: its index (as text) -> {"hyperparameters": as train.py gets them, "values": Optuna's}
    proposals: dict[str, dict] = field(default_factory=dict)

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
    """Hands out hyperparameter sets and learns from results (thread-safe). `proposals` (the tuning
    record's) holds every set handed out; an index proposed before gets its set again."""

    def __init__(self, ranges: dict, strategy: str, objective_type: str, max_jobs: int, seed: int):
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
        self.lock = threading.Lock()
        self.proposals: dict[str, dict] = {}
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

    def restore(self, finished: list[TrialSummary]) -> None:
        """Tell the study the results of the trials a resumed tuning job keeps."""
        if self.strategy == "Grid":
            return
        import optuna

        for trial in finished:
            proposal = self.proposals.get(str(trial.index))
            if proposal is None:
                continue
            usable = trial.status == "Completed" and trial.objective is not None and math.isfinite(trial.objective)
            self.study.add_trial(optuna.trial.create_trial(
                params=proposal["values"], distributions=self.distributions,
                value=trial.objective if usable else None,
                state=optuna.trial.TrialState.COMPLETE if usable else optuna.trial.TrialState.FAIL))

    def propose(self, index: int) -> dict[str, str]:
        with self.lock:
            known = self.proposals.get(str(index))
            if self.strategy == "Grid":
                tuned = values = dict(self.grid[index])
            else:
                if known is not None:  # a trial that started before a crash: the same set again
                    self.study.enqueue_trial(known["values"])
                trial = self.study.ask(self.distributions)
                self.pending[index] = trial
                values = trial.params
                tuned = {name: _as_string(name, value, self.reverse_log) for name, value in values.items()}
            self.proposals[str(index)] = {"hyperparameters": tuned, "values": values}
            return tuned

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

    def find(self, digest: str) -> TuningJobResult | None:
        """The tuning job asked with this configuration digest that runs or completed (a completed one
        first, then the newest), else None."""
        found = []
        for path in self.state.tuning.glob("*.json"):
            try:
                record = TuningJobResult.from_json(path.read_text())
            except (OSError, ValueError, TypeError, KeyError):
                continue
            if record.digest == digest and record.status in ("InProgress", "Completed"):
                found.append(record)
        return max(found, key=lambda r: (r.status == "Completed", r.started_at), default=None)

    def run(self, spec: TuningJobSpec, on_trial: TrialCallback | None = None,
            on_log: Callable[[str, str], None] | None = None,
            on_start: Callable[[str], None] | None = None) -> TuningJobResult:
        """Run the tuning job to its end (see the module's docstring for what a re-run finds)."""
        if spec.digest:
            found = self.find(spec.digest)
            if found is not None:
                spec = replace(spec, name=found.name)
        proposer = _Proposer(spec.parameter_ranges, spec.strategy, spec.objective_type, spec.max_jobs, spec.seed)
        with self._owning(spec.name, on_trial, proposer.total):
            previous = self.describe(spec.name)
            if previous is not None and previous.status == "Completed":
                return previous
            resumed = previous if previous is not None and previous.status == "InProgress" else None
            return self._run(spec, proposer, resumed, on_trial, on_log, on_start)

    @contextmanager
    def _owning(self, name: str, on_trial: TrialCallback | None, total: int):
        """Hold the tuning job's lock; while another live process holds it, report the trials it
        records, as they finish."""
        lock = job_lock(self.state.home / "locks" / "tuning" / f"{name}.lock")
        reported, wait_s = 0, 0.0
        while True:
            try:
                lock.acquire(timeout=wait_s)
                break
            except Timeout:
                record = self.describe(name)
                for trial in (record.trials if record else [])[reported:]:
                    reported += 1
                    if on_trial:
                        on_trial(trial, reported, total)
                wait_s = 1.0
        try:
            yield
        finally:
            lock.release()

    def _run(self, spec: TuningJobSpec, proposer: _Proposer, resumed: TuningJobResult | None,
             on_trial: TrialCallback | None, on_log: Callable[[str, str], None] | None,
             on_start: Callable[[str], None] | None) -> TuningJobResult:
        kept = [t for t in resumed.trials if t.status in _FINISHED] if resumed else []
        result = TuningJobResult(spec.name, "InProgress", spec.objective_metric, spec.objective_type, spec.strategy,
                                 trials=kept, started_at=resumed.started_at if resumed else time.time(),
                                 digest=spec.digest, proposals=dict(resumed.proposals) if resumed else {})
        proposer.proposals = result.proposals
        proposer.restore(kept)
        total = proposer.total
        pending = iter([i for i in range(total) if i not in {t.index for t in kept}])
        parallel = max(1, min(spec.max_parallel_jobs, total))
        cpus_per_trial = max(1, (spec.cpus or os.cpu_count() or 1) // parallel)
        guard = threading.Lock()  # the record changes in the trials' threads and this one
        self._save(result, guard)

        def run_trial(index: int) -> TrialSummary:
            with guard:
                tuned = proposer.propose(index)
            self._save(result, guard)  # its hyperparameters, before it starts
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
            running = {pool.submit(run_trial, i) for i in itertools.islice(pending, parallel)}
            try:
                while running:
                    done, running = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        record = future.result()
                        with guard:
                            result.trials.append(record)
                        self._save(result, guard)
                        if on_trial:
                            on_trial(record, len(result.trials), total)
                        running.update(pool.submit(run_trial, i) for i in itertools.islice(pending, 1))
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
        self._save(result, guard)
        return result

    def _save(self, result: TuningJobResult, guard: threading.Lock) -> None:
        with guard:  # one writer at a time: an older snapshot never replaces a newer one
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
