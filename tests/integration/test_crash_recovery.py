"""The local backend after a crash: a killed flow leaves no training running, a second caller attaches
to a running job, a re-run restarts what a crash interrupted, and a tuning job resumes with the trials
that finished kept. Jobs that must wait for the test run training/train.py behind a gate (GATED_TRAIN):
it holds the job, before train.py even imports torch, until the test writes the release file, then
runs the real script; so no step depends on how fast anything trains."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from backends.local.store import LocalStore
from backends.local.training import LocalTraining
from backends.local.training_jobs import LocalTrainingJobs, TrainingJobSpec
from backends.local.tuning import LocalTuning, TuningJobSpec
from backends.model_artifact import TRAINING_SOURCE_DIR
from backends.types import TrainingRequest

pytestmark = [pytest.mark.integration, pytest.mark.slow(minutes=4)]
ROOT = Path(__file__).resolve().parents[2]
FAST = {"architecture": "resnet18", "image-size": "32", "epochs": "1", "batch-size": "16",
        "learning-rate": "0.001", "freeze-backbone": "false", "augmentation": "none", "workers": "0"}

GATED_TRAIN = '''"""training/train.py behind a test's gate: jobs whose name holds $HOLD_JOBS wait for $RELEASE_FILE."""
import os, runpy, sys, time

if os.environ.get("HOLD_JOBS") is not None and os.environ["HOLD_JOBS"] in os.environ["TRAINING_JOB_NAME"]:
    print("[held] until the test releases the job", flush=True)
    while not os.path.exists(os.environ["RELEASE_FILE"]):
        time.sleep(0.05)
runpy.run_path(os.environ["REAL_TRAIN_PY"], run_name="__main__")
'''

# A flow's stand-in for the tests of the backend: runs one job or one tuning job, until it is killed.
STARTER = '''
import json, sys
from backends.local.state import LocalState
from backends.local.training_jobs import LocalTrainingJobs, TrainingJobSpec
from backends.local.tuning import LocalTuning, TuningJobSpec

home, source, kind, spec = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
state = LocalState.resolve(home)
jobs = LocalTrainingJobs(state, source_dir=source)
if kind == "job":
    jobs.run(TrainingJobSpec(**spec))
else:
    LocalTuning(state, jobs).run(TuningJobSpec(**spec))
'''


@pytest.fixture
def gate(tmp_path, monkeypatch):
    """The training code with the gated train.py; the environment that holds every job; the release file."""
    source = tmp_path / "gated-training"
    source.mkdir()
    for path in TRAINING_SOURCE_DIR.glob("*.py"):
        (source / path.name).write_bytes(path.read_bytes())
    (source / "train.py").write_text(GATED_TRAIN)
    release = tmp_path / "release"
    env = {"HOLD_JOBS": "", "RELEASE_FILE": str(release), "REAL_TRAIN_PY": str(TRAINING_SOURCE_DIR / "train.py")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return source, release


def wait_until(condition, what: str, timeout_s: float = 120.0, running: subprocess.Popen | None = None):
    """condition()'s first true value; fails after timeout_s, or as soon as the `running` process exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert running is None or running.poll() is None, f"the process exited ({running.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def training_processes(folder: Path) -> list[psutil.Process]:
    """Live train.py processes (and data loader workers) of jobs under `folder`."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = process.info.get("cmdline") or []
        if process.info.get("status") != psutil.STATUS_ZOMBIE and any(
                part.startswith(str(folder)) and part.endswith("train.py") for part in cmdline):
            found.append(process)
    return found


def job_record(job_dir: Path) -> dict | None:
    try:
        return json.loads((job_dir / "job.json").read_text())
    except FileNotFoundError:
        return None


def held(job_dir: Path) -> dict | None:
    """The job's record once its train.py is waiting at the gate."""
    record = job_record(job_dir)
    log = job_dir / "training.log"
    if record and record["status"] == "InProgress" and record["pid"] and log.exists() \
            and "[held]" in log.read_text() and training_processes(job_dir):
        return record
    return None


def start_starter(home: Path, source: Path, kind: str, spec: dict, hold: str = "") -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOLD_JOBS": hold}
    return subprocess.Popen([sys.executable, "-c", STARTER, str(home), str(source), kind, json.dumps(spec)],
                            cwd=ROOT, env=env)


def in_thread(target, *args, **kwargs):
    """Run target in a thread; the returned dict gets its "result" or "error"."""
    outcome = {}

    def run():
        try:
            outcome["result"] = target(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    outcome["thread"] = thread
    return outcome


def finished(outcome, timeout_s: float = 300.0):
    outcome["thread"].join(timeout_s)
    assert not outcome["thread"].is_alive(), "the call did not return"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def test_a_new_run_of_the_same_request_attaches_to_the_running_job(gate, local_state, tiny_dataset):
    source, release = gate
    store = LocalStore(local_state.store)
    data = store.sync_folder(tiny_dataset, "s3://sagemaker-flows/datasets/digits").uri
    first, second = LocalTraining(local_state, store, cpus=2), LocalTraining(local_state, store, cpus=2)
    first.jobs.source_dir = second.jobs.source_dir = source
    request = TrainingRequest("train-run-1", FAST, data, "s3://sagemaker-flows/jobs")
    started = in_thread(first.run_training_job, request)
    wait_until(lambda: held(local_state.jobs / "train-run-1"), "the job to start")

    lines, epochs = [], []
    attached = in_thread(second.run_training_job, TrainingRequest("train-run-2", FAST, data, "s3://sagemaker-flows/jobs"),
                         on_log=lines.append, on_epoch=epochs.append)
    wait_until(lambda: any("[held]" in line for line in lines), "the second run to follow the job's log")
    release.touch()
    outcome, followed = finished(started), finished(attached)

    assert outcome.status == "Completed", outcome.failure_reason
    assert followed == outcome and followed.job_name == "train-run-1"  # the same job, trained once
    assert [e["epoch"] for e in epochs] == [1]  # its epochs reached the second run too
    assert [p.name for p in local_state.jobs.iterdir()] == ["train-run-1"]
    assert (local_state.jobs / "train-run-1" / "training.log").read_text().count("[held]") == 1


def test_a_killed_starter_leaves_no_training_and_a_rerun_restarts_the_job(gate, local_state, tiny_dataset):
    source, release = gate
    store = LocalStore(local_state.store)
    spec = {"name": "crash-job", "hyperparameters": FAST, "output_uri": "s3://sagemaker-flows/jobs", "cpus": 2,
            "inputs": {"training": store.sync_folder(tiny_dataset, "s3://sagemaker-flows/datasets/digits").uri}}
    job = local_state.jobs / "crash-job"

    # The process that started the job is SIGKILLed: its training stops with it.
    starter = start_starter(local_state.home, source, "job", spec)
    crashed = wait_until(lambda: held(job), "the job to start", running=starter)
    starter.kill()
    starter.wait()
    wait_until(lambda: not training_processes(job), "the job's training to stop", timeout_s=15)
    assert job_record(job)["status"] == "InProgress"  # what the crash left

    # A re-run restarts it; this time its runner is frozen and killed with the starter, so train.py
    # is left running with nothing watching it.
    starter = start_starter(local_state.home, source, "job", spec)
    restarted = wait_until(lambda: (r := held(job)) and r["pid"] != crashed["pid"] and r, "the job to restart",
                           running=starter)
    [orphan] = training_processes(job)
    os.kill(restarted["pid"], signal.SIGSTOP)
    starter.kill()
    starter.wait()
    os.kill(restarted["pid"], signal.SIGKILL)
    time.sleep(1.0)
    assert orphan.is_running() and orphan.status() != psutil.STATUS_ZOMBIE

    # The next run kills what is left of the job and runs it again from a clean folder.
    rerun = in_thread(LocalTrainingJobs(local_state, store, source_dir=source).run, TrainingJobSpec(**spec))
    wait_until(lambda: (r := held(job)) and r["pid"] != restarted["pid"], "the job to start again")
    assert not orphan.is_running() or orphan.status() == psutil.STATUS_ZOMBIE
    release.touch()
    result = finished(rerun)
    assert result.status == "Completed", result.failure_reason
    assert result.started_at > restarted["started_at"] > crashed["started_at"]
    assert (job / "training.log").read_text().count("[held]") == 1
    assert not training_processes(job)


def test_a_tuning_job_resumes_with_its_finished_trials_kept(gate, local_state, tiny_dataset):
    source, release = gate
    store = LocalStore(local_state.store)
    spec = {"name": "resume-tune", "static_hyperparameters": {k: v for k, v in FAST.items() if k != "learning-rate"},
            "parameter_ranges": {"ContinuousParameterRanges": [
                {"Name": "learning-rate", "MinValue": "0.0005", "MaxValue": "0.005", "ScalingType": "Logarithmic"}]},
            "inputs": {"training": store.sync_folder(tiny_dataset, "s3://sagemaker-flows/datasets/digits").uri},
            "output_uri": "s3://sagemaker-flows/jobs", "strategy": "Random", "max_jobs": 2, "max_parallel_jobs": 1,
            "cpus": 2}
    tuning = LocalTuning(local_state, LocalTrainingJobs(local_state, store, source_dir=source))

    def held_second_trial():
        record = tuning.describe("resume-tune")
        if record and len(record.trials) == 1 and "1" in record.proposals:
            second = next(local_state.jobs.glob("resume-tune-002-*"), None)
            return second is not None and held(second) and (record, second)
        return None

    # The first trial trains for real; the second is held.
    starter = start_starter(local_state.home, source, "tuning", spec, hold="-002-")
    before, second_job = wait_until(held_second_trial, "the first trial to finish and the second to start", 300,
                                    running=starter)
    [first_trial] = before.trials
    assert first_trial.status == "Completed"
    first_started = job_record(local_state.jobs / first_trial.job_name)["started_at"]
    [held_training] = training_processes(second_job)

    # A second caller waits for the live one, reporting the trials it records.
    seen = []
    follower = in_thread(tuning.run, TuningJobSpec(**spec), on_trial=lambda t, done, total: seen.append((t, done, total)))
    wait_until(lambda: seen, "the follower to report the first trial")
    assert seen == [(first_trial, 1, 2)]

    # The live one is killed: its held trial dies with it, and the follower resumes the tuning job.
    starter.kill()
    starter.wait()
    wait_until(lambda: not held_training.is_running() or held_training.status() == psutil.STATUS_ZOMBIE,
               "the killed run's trial to stop", timeout_s=15)
    release.touch()
    result = finished(follower)

    assert result.status == "Completed" and [t.index for t in result.trials] == [0, 1]
    assert result.trials[0] == first_trial  # kept as it was, not trained again
    assert job_record(local_state.jobs / first_trial.job_name)["started_at"] == first_started
    # The interrupted trial ran again with the hyperparameters it had.
    assert result.trials[1].job_name == second_job.name and result.trials[1].status == "Completed"
    assert result.trials[1].tuned_hyperparameters == before.proposals["1"]["hyperparameters"]
    assert sorted(p.name for p in local_state.jobs.iterdir()) == sorted([first_trial.job_name, second_job.name])
    assert [t[1] for t in seen] == [1, 2]


def tiny_pipeline(home: Path, data: Path) -> dict:
    from core.demo import demo_config

    values = demo_config(str(data)).model_dump(mode="json")
    values["training"]["epochs"] = 1
    values["training"]["tuning"].update(max_jobs=2, max_parallel_jobs=1)
    values["function"].update(reserved_concurrency=2, provisioned_concurrency=0)
    values["local"] = {"home": str(home)}
    return values


def test_a_pipeline_killed_during_tuning_converges_when_run_again(prefect_api, tiny_dataset, tmp_path):
    from prefect.settings import PREFECT_API_URL

    from backends.local.backend import LocalBackend
    from core.config import PipelineConfig

    home = tmp_path / "home"
    values = tiny_pipeline(home, tiny_dataset)
    config = PipelineConfig.model_validate(values)
    config_file = tmp_path / "pipeline.yaml"
    config_file.write_text(json.dumps(values))  # JSON is YAML
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": PREFECT_API_URL.value(),
           "SAGEMAKER_FLOWS_HOME": str(home)}
    command = [sys.executable, "-m", "flows.cli", "run", "--config", str(config_file)]
    output = open(tmp_path / "flow.log", "ab")

    def second_trial_running():
        records = list((home / "tuning").glob("*.json"))
        if len(records) != 1:
            return None
        record = json.loads(records[0].read_text())
        second = next((home / "jobs").glob("*-002-*"), None)
        done = [t for t in record["trials"] if t["status"] == "Completed"]
        if len(done) == 1 and second is not None and training_processes(second):
            return record, second
        return None

    try:
        flow = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT,
                                start_new_session=True)
        record, second = wait_until(second_trial_running, "the second trial to run", timeout_s=400, running=flow)
        [first_trial] = record["trials"]
        first_job = home / "jobs" / first_trial["job_name"]
        first_started = job_record(first_job)["started_at"]
        os.killpg(flow.pid, signal.SIGKILL)  # the flow and its process group; the gateway has its own
        flow.wait()
        wait_until(lambda: not training_processes(home), "the killed flow's training to stop", timeout_s=15)

        rerun = subprocess.run(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, timeout=600)
        assert rerun.returncode == 0, (tmp_path / "flow.log").read_text()[-3000:]
        assert not training_processes(home)

        backend = LocalBackend(home=str(home))
        status = backend.gateway.client().status()
        assert [e["name"] for e in status["endpoints"]] == [config.names.endpoint]
        assert [f["name"] for f in status["functions"]] == [config.names.function]
        versions = backend.registry.list_model_versions(config.names.model_group)
        assert [(v.version, v.champion) for v in versions] == [(1, True)]
        assert status["endpoints"][0]["model_version"] == versions[0].label

        # The re-run found the interrupted tuning job by its configuration and finished it: the first
        # trial was kept, only the interrupted one trained again.
        [tuning] = [json.loads(p.read_text()) for p in (home / "tuning").glob("*.json")]
        assert tuning["name"] == record["name"] and tuning["status"] == "Completed"
        assert [t["job_name"] for t in tuning["trials"]] == [first_trial["job_name"], second.name]
        assert job_record(first_job)["started_at"] == first_started
        assert sorted(p.name for p in (home / "jobs").iterdir()) == sorted([first_job.name, second.name])
        backend.close()
    finally:
        subprocess.run([sys.executable, "-m", "flows.cli", "local", "down", "--home", str(home)], cwd=ROOT, env=env,
                       stdout=output, stderr=subprocess.STDOUT, timeout=120)
        output.close()
