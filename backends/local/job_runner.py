"""The process that runs one local training job, as SageMaker's agent does on a training instance:

    python -m backends.local.job_runner JOB_DIR --parent-pid PID

It is started in a session of its own and starts the unchanged training/train.py (JOB_DIR/runner.json
says the command) in its process group, their output appended to JOB_DIR/training.log; it stops
train.py at MaxRuntimeInSeconds, and records the job's end in JOB_DIR/job.json: Completed with
model.tar.gz in the local store, or Failed with the reason. Anyone can follow the job through those
two files (training_jobs.py).

It never outlives the process that started it: when that process is gone (checked twice a second,
as the model workers do) or on SIGTERM, it kills its process group (itself, train.py and train.py's
data loader workers) and leaves job.json InProgress for the next run to restart.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from backends.files import write_atomic
from backends.local.store import LocalStore
from backends.local.training_jobs import job_lock, read_job, training_failure_reason
from backends.model_artifact import pack_model_artifact
from core.metrics import parse_metric_line
from core.uris import parse_s3_uri

_POLL_S = 0.5


def _kill_group_and_exit() -> None:
    if os.getpgrp() == os.getpid():  # started as a group leader: the group is the job's
        os.killpg(os.getpid(), signal.SIGKILL)
    os._exit(1)


def _run_training(job: Path, config: dict, parent_pid: int) -> tuple[int, bool]:
    """train.py's exit code, and whether it ran past its time."""
    deadline = config["started_at"] + config["max_runtime_seconds"]
    proc = subprocess.Popen(config["command"], cwd=job / "code", stdin=subprocess.DEVNULL)
    while True:
        try:
            return proc.wait(timeout=_POLL_S), False
        except subprocess.TimeoutExpired:
            pass
        if os.getppid() != parent_pid:
            print(f"[job_runner] the process that started this job ({parent_pid}) is gone; stopping", flush=True)
            _kill_group_and_exit()
        if time.time() > deadline:
            _kill_tree(proc.pid)
            return proc.wait(), True


def _kill_tree(pid: int) -> None:
    import psutil

    try:
        processes = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def _end(job: Path, config: dict, returncode: int, timed_out: bool) -> dict:
    """The job's end, as the fields of its record: metrics from the log, and the model stored when
    train.py succeeded (before the record says Completed, so a Completed job always has its model)."""
    log_text = (job / "training.log").read_text(errors="replace")
    series: dict[str, list[float]] = {}
    epochs = []
    for line in log_text.splitlines():
        values = parse_metric_line(line, config["metric_definitions"])
        for name, value in values.items():
            series.setdefault(name, []).append(value)
        if "epoch" in values:
            epochs.append(values)
    end = {"epochs": epochs, "final_metrics": {name: values[-1] for name, values in series.items()}}
    if timed_out:
        return {**end, "status": "Failed", "failure_reason": f"MaxRuntimeExceeded: the job ran past "
                                                             f"{config['max_runtime_seconds']} s and was stopped"}
    if returncode != 0:
        return {**end, "status": "Failed", "failure_reason": training_failure_reason(job, log_text, returncode)}
    archive = pack_model_artifact(job / "model", job / "output" / "model.tar.gz", job / "code")
    uri = parse_s3_uri(config["output_uri"]).join(job.name, "output", "model.tar.gz").uri
    LocalStore(config["store"]).put_file(archive, uri)
    return {**end, "status": "Completed", "model_artifact": uri}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job_dir", type=Path)
    parser.add_argument("--parent-pid", type=int, required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: _kill_group_and_exit())
    if os.getppid() != args.parent_pid:  # it died before we got here
        _kill_group_and_exit()
    job = args.job_dir
    config = json.loads((job / "runner.json").read_text())
    try:
        end = _end(job, config, *_run_training(job, config, args.parent_pid))
    except Exception as exc:  # train.py could not be started, or its model not stored
        end = {"status": "Failed", "failure_reason": f"InternalServerError: {type(exc).__name__}: {exc}"}
    with job_lock(Path(config["lock"])):
        result = read_job(job)
        if result is None or result.status != "InProgress" or result.pid != os.getpid():
            return 0  # stopped or restarted meanwhile: that decision stands
        for name, value in end.items():
            setattr(result, name, value)
        result.ended_at = time.time()
        write_atomic(job / "job.json", result.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
