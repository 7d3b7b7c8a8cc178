"""Local training jobs: training/train.py in a subprocess, laid out and configured as SageMaker does.

A job folder mirrors /opt/ml (input/config/hyperparameters.json, input/data/<channel>,
model/, output/), the SM_* environment points into it, metrics are read with the same
MetricDefinitions the aws backend gives SageMaker, and the job ends Completed (model.tar.gz
stored) or Failed (with the reason).

The job runs in a job_runner process (job_runner.py), which starts train.py, appends its output to
the job's training.log and writes the job's end to job.json; job.json records the runner's pid and
start time from the moment it starts. Whoever runs a job only follows those two files, so:

- a retry or re-run that finds the job InProgress with its runner alive attaches to it: it follows
  the log from its beginning (every epoch reaches the callbacks, as for the one who started it) and
  returns the job's end;
- one that finds it InProgress with the runner gone (a crash) kills whatever is left of it and
  starts the job again from a clean folder; a Completed job is returned as it is.

A runner never outlives the process that started it (it watches its parent, as the gateway's model
workers do), so a crashed or SIGKILLed flow leaves no training behind. An attached follower is not
the runner's parent: when the process that started a job dies, the job dies with it, and a follower
then finds it InProgress with no runner and restarts it. That is the accepted convergence: after a
SIGKILL of a flow its training processes are gone within a second or so, and the next run (a retry,
or a new run finding the job by its configuration digest) trains again whatever was not finished.

Starting a job, stopping it and recording its end happen under a per-job file lock (<home>/locks),
so a runner finishing, a stop and a restart never interleave.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from filelock import FileLock

from backends.evaluation import PROJECT_ROOT
from backends.files import write_atomic, write_json
from backends.local.state import LocalState
from backends.local.store import LocalStore
from backends.model_artifact import TRAINING_SOURCE_DIR
from backends.types import TrainingOutcome
from core.hyperparameters import hyperparameter_flags
from core.metrics import METRIC_DEFINITIONS, parse_metric_line

LogCallback = Callable[[str], None]
MetricsCallback = Callable[[dict[str, float]], None]
_TRAINING_CODE = ("train.py", "contract.py", "model.py", "data.py", "inference.py")
RUNNER_MODULE = "backends.local.job_runner"
_FOLLOW_POLL_S = 0.2
_LOCK_TIMEOUT_S = 120


@dataclass
class TrainingJobSpec:
    name: str
    hyperparameters: dict[str, str]
    inputs: dict[str, str]  # channel name -> s3:// URI in the local store
    output_uri: str  # s3:// prefix; the model lands at <output_uri>/<name>/output/model.tar.gz
    cpus: int | None = None
    max_runtime_seconds: int = 86400
    metric_definitions: list[dict[str, str]] = field(default_factory=lambda: list(METRIC_DEFINITIONS))
    digest: str | None = None  # core.names.configuration_digest of what was asked: a re-run finds the job by it


@dataclass
class TrainingJobResult:
    name: str
    status: str  # InProgress | Completed | Failed | Stopped
    hyperparameters: dict[str, str]
    failure_reason: str | None = None
    final_metrics: dict[str, float] = field(default_factory=dict)
    epochs: list[dict[str, float]] = field(default_factory=list)
    model_artifact: str | None = None
    log_path: str = ""
    job_dir: str = ""
    started_at: float = 0.0
    ended_at: float = 0.0
    pid: int | None = None  # the job's runner (its process group)
    pid_started_at: float | None = None  # its start time: a pid reused by another process is not the job
    digest: str | None = None

    @property
    def duration_seconds(self) -> float:
        return max(0.0, self.ended_at - self.started_at)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "TrainingJobResult":
        return cls(**json.loads(text))

    def outcome(self) -> TrainingOutcome:
        return TrainingOutcome(job_name=self.name, status=self.status, hyperparameters=self.hyperparameters,
                               failure_reason=self.failure_reason, final_metrics=self.final_metrics,
                               epochs=self.epochs, model_artifact=self.model_artifact, log_location=self.log_path,
                               duration_seconds=self.duration_seconds)


def read_job(job_dir: Path) -> TrainingJobResult | None:
    record = job_dir / "job.json"
    return TrainingJobResult.from_json(record.read_text()) if record.is_file() else None


def training_failure_reason(job: Path, log_text: str, returncode: int) -> str:
    """train.py's own $SM_OUTPUT_DIR/failure, else how it ended and its last lines."""
    failure = job / "output" / "failure"
    if failure.is_file() and failure.read_text().strip():
        return failure.read_text().strip()
    tail = [line for line in log_text.splitlines() if line.strip()][-5:]
    how = f"killed by signal {-returncode}" if returncode < 0 else f"exited with code {returncode}"
    return f"AlgorithmError: training {how}" + (f"; last output: {' | '.join(tail)}" if tail else "")


def job_lock(path: Path) -> FileLock:
    """A cross-process lock at `path` (under <home>/locks); held briefly, to change a job's state."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path, timeout=_LOCK_TIMEOUT_S)


def process_running(pid: int | None, started_at: float | None) -> bool:
    """Whether the process `pid` that started at `started_at` still runs (not a zombie, not a reused pid)."""
    import psutil

    if not pid or started_at is None:
        return False
    try:
        process = psutil.Process(pid)
        # Start times are compared to the second: the clock they derive from may be adjusted meanwhile.
        return abs(process.create_time() - started_at) < 1.0 and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def process_started_at(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


@dataclass
class _Following:
    """A job this object follows: the runner's pid, and its Popen when this process started it."""

    pid: int | None
    proc: subprocess.Popen | None = None


class LocalTrainingJobs:
    def __init__(self, state: LocalState, store: LocalStore | None = None, python: str = sys.executable,
                 source_dir: str | os.PathLike = TRAINING_SOURCE_DIR):
        self.state = state
        self.store = store or LocalStore(state.store)
        self.python = python
        self.source_dir = Path(source_dir)
        self._running: dict[str, _Following] = {}
        self._lock = threading.Lock()

    def job_dir(self, name: str) -> Path:
        return self.state.jobs / name

    def _job_lock(self, name: str) -> FileLock:
        return job_lock(self._lock_path(name))

    def _lock_path(self, name: str) -> Path:
        return self.state.home / "locks" / "jobs" / f"{name}.lock"

    def describe(self, name: str) -> TrainingJobResult | None:
        return read_job(self.job_dir(name))

    def find(self, digest: str) -> TrainingJobResult | None:
        """The job asked with this configuration digest that runs or completed (a completed one first,
        then the newest), else None."""
        found = []
        for record in self.state.jobs.glob("*/job.json"):
            try:
                job = TrainingJobResult.from_json(record.read_text())
            except (OSError, ValueError, TypeError):
                continue
            if job.digest == digest and job.status in ("InProgress", "Completed"):
                found.append(job)
        return max(found, key=lambda j: (j.status == "Completed", j.started_at), default=None)

    def stop(self, name: str) -> None:
        self._stop(name, "stopped on request")

    def stop_all(self) -> None:
        with self._lock:
            names = list(self._running)
        for name in names:
            self.stop(name)

    def run(self, spec: TrainingJobSpec, on_log: LogCallback | None = None,
            on_metrics: MetricsCallback | None = None) -> TrainingJobResult:
        """Run the job to its end, or attach to it when it runs already; a Completed job of the same
        name is returned as it is (idempotent)."""
        while True:
            with self._job_lock(spec.name):
                previous = self.describe(spec.name)
                if previous is not None and previous.status == "Completed":
                    return previous
                if (previous is not None and previous.status == "InProgress"
                        and process_running(previous.pid, previous.pid_started_at)):
                    following = _Following(previous.pid)  # attach
                else:
                    if previous is not None and previous.status == "InProgress":
                        self._kill_leftovers(previous)  # its runner died: nothing of it may keep running
                    following = self._launch(spec)
            with self._lock:
                self._running[spec.name] = following
            try:
                result = self._follow(spec, following, on_log, on_metrics)
            except BaseException:
                if following.proc is not None:  # the caller was cancelled: never leave our training behind
                    self._stop(spec.name, "stopped by the caller")
                raise
            finally:
                with self._lock:
                    self._running.pop(spec.name, None)
            if result is not None:
                return result
            # An attached job's runner died without an end (its starter crashed): start it again.

    def _launch(self, spec: TrainingJobSpec) -> _Following:
        job = self._prepare(spec)
        log_path = job / "training.log"
        result = TrainingJobResult(spec.name, "InProgress", dict(spec.hyperparameters), log_path=str(log_path),
                                   job_dir=str(job), started_at=time.time(), digest=spec.digest)
        write_json(job / "runner.json", {
            "command": [self.python, "-u", str(job / "code" / "train.py"), *hyperparameter_flags(spec.hyperparameters)],
            "store": str(self.store.root), "output_uri": spec.output_uri, "lock": str(self._lock_path(spec.name)),
            "metric_definitions": spec.metric_definitions, "max_runtime_seconds": spec.max_runtime_seconds,
            "started_at": result.started_at})
        write_atomic(job / "job.json", result.to_json())
        with open(log_path, "ab") as log:
            proc = subprocess.Popen([self.python, "-m", RUNNER_MODULE, str(job), "--parent-pid", str(os.getpid())],
                                    cwd=PROJECT_ROOT, env=self._environment(spec, job), stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        result.pid, result.pid_started_at = proc.pid, process_started_at(proc.pid)
        write_atomic(job / "job.json", result.to_json())
        return _Following(proc.pid, proc)

    def _follow(self, spec: TrainingJobSpec, following: _Following, on_log: LogCallback | None,
                on_metrics: MetricsCallback | None) -> TrainingJobResult | None:
        """Stream the job's log to the callbacks until its end is recorded; None when its runner
        died without one and it was not ours to fail (an attached job)."""
        log_path = self.job_dir(spec.name) / "training.log"
        position, partial = 0, ""

        def read_lines() -> bool:
            nonlocal position, partial
            try:
                with open(log_path, "rb") as log:
                    log.seek(position)
                    chunk = log.read()
            except FileNotFoundError:
                return False
            position += len(chunk)
            *lines, partial = (partial + chunk.decode(errors="replace")).split("\n")
            for line in lines:
                if on_log:
                    on_log(line)
                values = parse_metric_line(line, spec.metric_definitions)
                if values and on_metrics:
                    on_metrics(values)
            return bool(chunk)

        while True:
            if read_lines():
                continue
            record = self.describe(spec.name)
            ended = record is None or record.status != "InProgress" or record.pid != following.pid
            if not ended and not self._alive(following, record):
                with self._job_lock(spec.name):  # a runner finishing holds this lock while it writes
                    record = self.describe(spec.name)
                    ended = record is None or record.status != "InProgress" or record.pid != following.pid
                    if not ended:
                        if following.proc is None:
                            return None
                        record = self._runner_failed(record, following.proc)
                        ended = True
            if ended:
                read_lines()
                if partial and on_log:
                    on_log(partial)
                if record is None or record.pid != following.pid:
                    return None  # restarted by someone else: follow that run
                return record
            time.sleep(_FOLLOW_POLL_S)

    @staticmethod
    def _alive(following: _Following, record: TrainingJobResult) -> bool:
        if following.proc is not None:
            return following.proc.poll() is None
        return process_running(record.pid, record.pid_started_at)

    def _runner_failed(self, record: TrainingJobResult, proc: subprocess.Popen) -> TrainingJobResult:
        """Our runner ended without recording the job's end (killed from outside): the job failed, and
        nothing of it may keep running."""
        self._kill_leftovers(record)
        log_text = Path(record.log_path).read_text(errors="replace") if Path(record.log_path).is_file() else ""
        record.status = "Failed"
        record.failure_reason = training_failure_reason(Path(record.job_dir), log_text, proc.returncode)
        return self._finish(record)

    def _stop(self, name: str, reason: str) -> None:
        with self._lock:
            following = self._running.get(name)
        if following is None:
            return
        with self._job_lock(name):
            record = self.describe(name)
            if record is None or record.status != "InProgress" or record.pid != following.pid:
                return
            if self._alive(following, record):
                _kill_group(following.pid)
                if following.proc is not None:
                    following.proc.wait()
            record.status, record.failure_reason = "Stopped", reason
            self._finish(record)

    def _kill_leftovers(self, record: TrainingJobResult) -> None:
        """Kill what is left of a job whose runner is gone: train.py and its workers, found by their
        command line (they name the job's folder), so a reused pid is never hit."""
        import psutil

        job = self.job_dir(record.name)
        marks = {str(job), str(job / "code" / "train.py")}
        for process in psutil.process_iter(["cmdline"]):
            if marks & set(process.info.get("cmdline") or ()):
                try:
                    process.kill()
                except psutil.Error:
                    pass

    def _finish(self, result: TrainingJobResult) -> TrainingJobResult:
        result.ended_at = time.time()
        write_atomic(Path(result.job_dir, "job.json"), result.to_json())
        return result

    def _prepare(self, spec: TrainingJobSpec) -> Path:
        job = self.job_dir(spec.name)
        if job.exists():
            shutil.rmtree(job)  # an earlier failed or interrupted attempt under this name
        config = job / "input" / "config"
        for sub in (config, job / "input" / "data", job / "model", job / "output" / "data", job / "code"):
            sub.mkdir(parents=True)
        for name in _TRAINING_CODE:
            shutil.copy2(self.source_dir / name, job / "code" / name)
        write_json(config / "hyperparameters.json", spec.hyperparameters)
        write_json(config / "resourceconfig.json", {"current_host": "algo-1", "hosts": ["algo-1"]})
        channels = {}
        for channel, uri in spec.inputs.items():
            source = self.store.path(uri)
            if not source.exists():
                raise FileNotFoundError(f"input channel {channel!r}: nothing stored at {uri}")
            (job / "input" / "data" / channel).symlink_to(source, target_is_directory=source.is_dir())
            channels[channel] = {"TrainingInputMode": "File", "S3Uri": uri}
        write_json(config / "inputdataconfig.json", channels)
        return job

    def _environment(self, spec: TrainingJobSpec, job: Path) -> dict[str, str]:
        cpus = max(1, spec.cpus or os.cpu_count() or 1)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
        env.update({
            "SM_MODEL_DIR": str(job / "model"),
            "SM_OUTPUT_DIR": str(job / "output"),
            "SM_OUTPUT_DATA_DIR": str(job / "output" / "data"),
            "SM_INPUT_DIR": str(job / "input"),
            "SM_INPUT_CONFIG_DIR": str(job / "input" / "config"),
            "SM_CHANNELS": json.dumps(sorted(spec.inputs)),
            "SM_HPS": json.dumps(spec.hyperparameters),
            "SM_USER_ARGS": json.dumps(hyperparameter_flags(spec.hyperparameters)),
            "SM_NUM_CPUS": str(cpus),
            "SM_NUM_GPUS": "1" if _has_gpu() else "0",
            "SM_HOSTS": json.dumps(["algo-1"]),
            "SM_CURRENT_HOST": "algo-1",
            "SM_TRAINING_ENV": json.dumps({"job_name": spec.name, "hyperparameters": spec.hyperparameters}),
            "TRAINING_JOB_NAME": spec.name,
            # One job's math threads; parallel trials split the cores between them.
            "OMP_NUM_THREADS": str(cpus),
            "MKL_NUM_THREADS": str(cpus),
            "PYTHONUNBUFFERED": "1",
        })
        for channel in spec.inputs:
            env[f"SM_CHANNEL_{channel.upper()}"] = str(job / "input" / "data" / channel)
        return env


@functools.cache
def _has_gpu() -> bool:
    # nvidia-smi answers quickly and avoids importing torch in the orchestrating process.
    return shutil.which("nvidia-smi") is not None and subprocess.run(
        ["nvidia-smi", "-L"], capture_output=True).returncode == 0


def _kill_group(pid: int | None) -> None:
    if pid:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
