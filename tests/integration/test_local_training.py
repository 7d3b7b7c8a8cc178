"""Real training jobs under the SageMaker contract, run by the local backend."""
import json
import shutil
import tarfile
from dataclasses import replace

import pytest

from backends.local.store import LocalStore
from backends.local.training import LocalTraining
from backends.local.training_jobs import LocalTrainingJobs, TrainingJobSpec
from backends.types import TrainingRequest
from core.metrics import METRIC_DEFINITIONS

pytestmark = [pytest.mark.integration, pytest.mark.slow(minutes=1.5)]

FAST = {"architecture": "resnet18", "image-size": "32", "epochs": "1", "batch-size": "16",
        "learning-rate": "0.001", "freeze-backbone": "false", "augmentation": "flip", "workers": "0"}


def stage(store, folder, name="digits"):
    return store.sync_folder(folder, f"s3://sagemaker-flows/datasets/{name}").uri


def test_one_epoch_job_completes_with_a_servable_artifact(local_state, tiny_dataset):
    store = LocalStore(local_state.store)
    jobs = LocalTrainingJobs(local_state, store)
    lines, metrics = [], []
    spec = TrainingJobSpec("digits-job-1", FAST, {"training": stage(store, tiny_dataset)},
                           "s3://sagemaker-flows/jobs", cpus=2, metric_definitions=METRIC_DEFINITIONS)
    result = jobs.run(spec, on_log=lines.append, on_metrics=metrics.append)

    assert result.status == "Completed", result.failure_reason
    assert any(line.startswith("[metric] epoch=1 ") for line in lines)
    assert [m["epoch"] for m in metrics if "epoch" in m] == [1]
    # The accuracy is right answers over the test split's images: a whole number of them.
    tested = sum(1 for f in (tiny_dataset / "test").rglob("*") if f.is_file())
    right = result.final_metrics["test_accuracy"] * tested
    assert abs(right - round(right)) < 1e-3 and result.final_metrics["best_epoch"] == 1
    assert result.epochs[0]["train_loss"] > 0

    job = local_state.jobs / "digits-job-1"
    assert json.loads((job / "input/config/hyperparameters.json").read_text()) == FAST
    assert (job / "input/data/training/train").is_dir()
    with tarfile.open(store.path(result.model_artifact)) as tar:
        names = set(tar.getnames())
    assert {"model.pth", "model_config.json", "code/inference.py", "code/model.py"} <= names
    config = json.loads((job / "model/model_config.json").read_text())
    assert config["architecture"] == "resnet18" and len(config["class_names"]) == 10
    assert config["image_size"] == 32 and config["normalization"]["mean"] == [0.485, 0.456, 0.406]
    assert "[metric] test_loss=" in (job / "training.log").read_text()

    # Idempotent: the same name again is the finished job, not a second run.
    again = jobs.run(spec)
    assert again.status == "Completed" and again.started_at == result.started_at


def test_corrupt_image_fails_the_job_with_the_file_named(local_state, tiny_dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    (data / "train" / "four" / "scan_0042.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated upload")
    store = LocalStore(local_state.store)
    jobs = LocalTrainingJobs(local_state, store)
    spec = TrainingJobSpec("digits-corrupt", FAST, {"training": stage(store, data, "corrupt")},
                           "s3://sagemaker-flows/jobs", cpus=2)
    result = jobs.run(spec)

    assert result.status == "Failed" and result.model_artifact is None
    failure = (local_state.jobs / "digits-corrupt" / "output" / "failure").read_text()
    assert "corrupt image train/four/scan_0042.jpg" in failure
    assert "corrupt image train/four/scan_0042.jpg" in result.failure_reason


def test_bad_hyperparameter_is_a_failure_reason(local_state, tiny_dataset):
    store = LocalStore(local_state.store)
    spec = TrainingJobSpec("digits-bad-hp", {**FAST, "batch-size": "0"}, {"training": stage(store, tiny_dataset)},
                           "s3://sagemaker-flows/jobs")
    result = LocalTrainingJobs(local_state, store).run(spec)
    assert result.status == "Failed"
    assert "invalid hyperparameters" in result.failure_reason and "batch-size" in result.failure_reason


def test_runtime_limit_stops_the_job(local_state, tiny_dataset):
    store = LocalStore(local_state.store)
    spec = TrainingJobSpec("digits-slow", {**FAST, "epochs": "50"}, {"training": stage(store, tiny_dataset)},
                           "s3://sagemaker-flows/jobs", max_runtime_seconds=3)
    result = LocalTrainingJobs(local_state, store).run(spec)
    assert result.status == "Failed" and result.failure_reason.startswith("MaxRuntimeExceeded")
    assert result.duration_seconds < 30


def test_missing_channel_is_refused_before_running(local_state):
    jobs = LocalTrainingJobs(local_state)
    spec = TrainingJobSpec("no-data", FAST, {"training": "s3://sagemaker-flows/datasets/none"}, "s3://sagemaker-flows/jobs")
    with pytest.raises(FileNotFoundError, match="input channel 'training'"):
        jobs.run(spec)


def test_the_same_request_under_a_new_name_returns_the_finished_job(local_state, tiny_dataset):
    """A new flow run (a new job name) with the same configuration finds the job by its digest."""
    store = LocalStore(local_state.store)
    training = LocalTraining(local_state, store, cpus=2)
    request = TrainingRequest("train-run-1", FAST, stage(store, tiny_dataset), "s3://sagemaker-flows/jobs")
    first = training.run_training_job(request)
    assert first.status == "Completed", first.failure_reason

    epochs = []
    again = training.run_training_job(replace(request, job_name="train-run-2"), on_epoch=epochs.append)
    assert again == first and again.job_name == "train-run-1" and epochs == []  # not trained again
    assert [p.name for p in local_state.jobs.iterdir()] == ["train-run-1"]

    # A changed request is another job (this one fails fast: its batch size is refused).
    changed = training.run_training_job(replace(request, job_name="train-run-3",
                                                hyperparameters={**FAST, "batch-size": "0"}))
    assert changed.job_name == "train-run-3" and changed.status == "Failed" and "batch-size" in changed.failure_reason
