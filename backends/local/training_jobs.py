"""Local training jobs: training/train.py in a subprocess, laid out and configured as SageMaker does.

A job folder mirrors /opt/ml (input/config/hyperparameters.json, input/data/<channel>,
model/, output/), the SM_* environment points into it, the log streams to the caller and
to a file, metrics are read with the same MetricDefinitions the aws backend gives
SageMaker, and the job ends Completed (model.tar.gz stored) or Failed (with the reason).
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

from backends.files import write_atomic
from backends.local.state import LocalState
from backends.local.store import LocalStore
from backends.model_artifact import TRAINING_SOURCE_DIR, pack_model_artifact
from backends.types import TrainingOutcome
from core.hyperparameters import hyperparameter_flags
from core.metrics import METRIC_DEFINITIONS, parse_metric_line
from core.uris import parse_s3_uri

LogCallback = Callable[[str], None]
MetricsCallback = Callable[[dict[str, float]], None]
_TRAINING_CODE = ("train.py", "contract.py", "model.py", "data.py", "inference.py")


@dataclass
class TrainingJobSpec:
    name: str
    hyperparameters: dict[str, str]
    inputs: dict[str, str]  # channel name -> s3:// URI in the local store
    output_uri: str  # s3:// prefix; the model lands at <output_uri>/<name>/output/model.tar.gz
    cpus: int | None = None
    max_runtime_seconds: int = 86400
    metric_definitions: list[dict[str, str]] = field(default_factory=lambda: list(METRIC_DEFINITIONS))


@dataclass
class TrainingJobResult:
    name: str
    status: str  # Completed | Failed | Stopped
    hyperparameters: dict[str, str]
    failure_reason: str | None = None
    final_metrics: dict[str, float] = field(default_factory=dict)
    epochs: list[dict[str, float]] = field(default_factory=list)
    model_artifact: str | None = None
    log_path: str = ""
    job_dir: str = ""
    started_at: float = 0.0
    ended_at: float = 0.0

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


class LocalTrainingJobs:
    def __init__(self, state: LocalState, store: LocalStore | None = None, python: str = sys.executable,
                 source_dir: str | os.PathLike = TRAINING_SOURCE_DIR):
        self.state = state
        self.store = store or LocalStore(state.store)
        self.python = python
        self.source_dir = Path(source_dir)
        self._running: dict[str, subprocess.Popen] = {}
        self._stopped: set[str] = set()
        self._lock = threading.Lock()

    def job_dir(self, name: str) -> Path:
        return self.state.jobs / name

    def describe(self, name: str) -> TrainingJobResult | None:
        record = self.job_dir(name) / "job.json"
        return TrainingJobResult.from_json(record.read_text()) if record.is_file() else None

    def stop(self, name: str) -> None:
        with self._lock:
            proc = self._running.get(name)
            self._stopped.add(name)
        if proc is not None:
            _kill_group(proc)

    def stop_all(self) -> None:
        with self._lock:
            names = list(self._running)
        for name in names:
            self.stop(name)

    def run(self, spec: TrainingJobSpec, on_log: LogCallback | None = None,
            on_metrics: MetricsCallback | None = None) -> TrainingJobResult:
        """Run the job to its end. A Completed job of the same name is returned as it is (idempotent)."""
        previous = self.describe(spec.name)
        if previous is not None and previous.status == "Completed":
            return previous
        job = self._prepare(spec)
        log_path = job / "training.log"
        result = TrainingJobResult(spec.name, "InProgress", dict(spec.hyperparameters), log_path=str(log_path),
                                   job_dir=str(job), started_at=time.time())
        write_atomic(job / "job.json", result.to_json())
        cmd = [self.python, "-u", str(job / "code" / "train.py"), *hyperparameter_flags(spec.hyperparameters)]
        proc = subprocess.Popen(cmd, cwd=job / "code", env=self._environment(spec, job), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
        with self._lock:
            self._running[spec.name] = proc
        timed_out = threading.Event()
        watchdog = threading.Timer(spec.max_runtime_seconds, lambda: (timed_out.set(), _kill_group(proc)))
        watchdog.daemon = True
        watchdog.start()
        series: dict[str, list[float]] = {}
        try:
            with open(log_path, "w") as log:
                for line in proc.stdout:
                    log.write(line)
                    log.flush()
                    line = line.rstrip("\n")
                    if on_log:
                        on_log(line)
                    values = parse_metric_line(line, spec.metric_definitions)
                    if values:
                        for k, v in values.items():
                            series.setdefault(k, []).append(v)
                        if "epoch" in values:
                            result.epochs.append(values)
                        if on_metrics:
                            on_metrics(values)
            returncode = proc.wait()
        except BaseException:
            _kill_group(proc)  # the caller was cancelled: never leave a training process behind
            proc.wait()
            result.status, result.failure_reason = "Stopped", "stopped by the caller"
            self._finish(result)
            raise
        finally:
            watchdog.cancel()
            with self._lock:
                self._running.pop(spec.name, None)
        result.final_metrics = {k: v[-1] for k, v in series.items()}
        with self._lock:
            stopped = spec.name in self._stopped
            self._stopped.discard(spec.name)
        if returncode == 0:
            archive = pack_model_artifact(job / "model", job / "output" / "model.tar.gz", job / "code")
            uri = parse_s3_uri(spec.output_uri).join(spec.name, "output", "model.tar.gz").uri
            self.store.put_file(archive, uri)
            result.status, result.model_artifact = "Completed", uri
        elif timed_out.is_set():
            result.status = "Failed"
            result.failure_reason = f"MaxRuntimeExceeded: the job ran past {spec.max_runtime_seconds} s and was stopped"
        elif stopped:
            result.status, result.failure_reason = "Stopped", "stopped on request"
        else:
            result.status = "Failed"
            result.failure_reason = self._failure_reason(job, log_path, returncode)
        return self._finish(result)

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
        (config / "hyperparameters.json").write_text(json.dumps(spec.hyperparameters, indent=2))
        (config / "resourceconfig.json").write_text(json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]}))
        channels = {}
        for channel, uri in spec.inputs.items():
            source = self.store.path(uri)
            if not source.exists():
                raise FileNotFoundError(f"input channel {channel!r}: nothing stored at {uri}")
            (job / "input" / "data" / channel).symlink_to(source, target_is_directory=source.is_dir())
            channels[channel] = {"TrainingInputMode": "File", "S3Uri": uri}
        (config / "inputdataconfig.json").write_text(json.dumps(channels, indent=2))
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

    @staticmethod
    def _failure_reason(job: Path, log_path: Path, returncode: int) -> str:
        failure = job / "output" / "failure"
        if failure.is_file() and failure.read_text().strip():
            return failure.read_text().strip()
        tail = [line for line in log_path.read_text().splitlines() if line.strip()][-5:]
        how = f"killed by signal {-returncode}" if returncode < 0 else f"exited with code {returncode}"
        return f"AlgorithmError: training {how}" + (f"; last output: {' | '.join(tail)}" if tail else "")


@functools.cache
def _has_gpu() -> bool:
    # nvidia-smi answers quickly and avoids importing torch in the orchestrating process.
    return shutil.which("nvidia-smi") is not None and subprocess.run(
        ["nvidia-smi", "-L"], capture_output=True).returncode == 0


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
