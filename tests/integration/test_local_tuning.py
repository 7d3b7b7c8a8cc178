"""A real tuning job: three trials, two at a time, one made to fail."""
import time
from dataclasses import replace

import pytest

from backends.local.store import LocalStore
from backends.local.training import LocalTraining
from backends.local.training_jobs import LocalTrainingJobs
from backends.local.tuning import LocalTuning, TuningJobSpec
from backends.types import TuningRequest

pytestmark = [pytest.mark.integration, pytest.mark.slow(minutes=1)]


def test_three_trials_two_in_parallel_one_failing(local_state, tiny_dataset):
    store = LocalStore(local_state.store)
    data = store.sync_folder(tiny_dataset, "s3://sagemaker-flows/datasets/digits").uri
    spec = TuningJobSpec(
        name="digits-tune",
        static_hyperparameters={"image-size": "32", "epochs": "1", "batch-size": "16", "learning-rate": "0.001",
                                "freeze-backbone": "false", "augmentation": "none", "workers": "0"},
        # Grid makes the trials deterministic: the third architecture does not exist.
        parameter_ranges={"CategoricalParameterRanges": [
            {"Name": "architecture", "Values": ["resnet18", "mobilenet_v3_small", "no_such_net"]}]},
        inputs={"training": data}, output_uri="s3://sagemaker-flows/jobs",
        objective_metric="valid_loss", objective_type="Minimize", strategy="Grid",
        max_jobs=3, max_parallel_jobs=2, cpus=2)
    trials_seen, running_peak, running = [], [0], set()
    jobs = LocalTrainingJobs(local_state, store)

    def on_log(trial_name, line):
        running.add(trial_name)
        running_peak[0] = max(running_peak[0], len(jobs._running))

    started = time.time()
    result = LocalTuning(local_state, jobs).run(spec, on_trial=lambda t, done, total: trials_seen.append((t.job_name, done, total)),
                                                on_log=on_log)

    assert result.status == "Completed"
    assert [t.index for t in result.trials] == [0, 1, 2]
    by_arch = {t.tuned_hyperparameters["architecture"]: t for t in result.trials}
    failed = by_arch["no_such_net"]
    assert failed.status == "Failed" and "unknown architecture 'no_such_net'" in failed.failure_reason
    completed = [by_arch["resnet18"], by_arch["mobilenet_v3_small"]]
    assert all(t.status == "Completed" and t.objective is not None and t.model_artifact for t in completed)
    best = min(completed, key=lambda t: t.objective)
    assert result.best_trial == best.job_name and result.best.model_artifact == best.model_artifact
    assert [done for _, done, _ in trials_seen] == [1, 2, 3] and all(total == 3 for _, _, total in trials_seen)
    assert running_peak[0] == 2  # two trials really ran at once
    # Each trial got half the cores.
    assert all(local_state.jobs.joinpath(t.job_name, "training.log").exists() for t in completed)
    assert result.trials[0].job_name.startswith("digits-tune-001-")
    # Re-running the finished tuning job returns it without training again.
    assert LocalTuning(local_state, jobs).run(spec).ended_at == result.ended_at
    assert time.time() - started < 300


def test_every_trial_failing_fails_the_tuning(local_state, tiny_dataset):
    store = LocalStore(local_state.store)
    data = store.sync_folder(tiny_dataset, "s3://sagemaker-flows/datasets/digits").uri
    spec = TuningJobSpec(
        name="all-fail", static_hyperparameters={"epochs": "1", "image-size": "32"},
        parameter_ranges={"CategoricalParameterRanges": [{"Name": "architecture", "Values": ["nope1", "nope2"]}]},
        inputs={"training": data}, output_uri="s3://sagemaker-flows/jobs", strategy="Grid",
        max_jobs=2, max_parallel_jobs=2)
    result = LocalTuning(local_state).run(spec)
    assert result.status == "Failed" and result.best_trial is None
    assert "unknown architecture 'nope1'" in result.failure_reason and "nope2" in result.failure_reason


def test_the_same_request_under_a_new_name_returns_the_finished_tuning_job(local_state, tiny_dataset):
    """A new flow run (a new tuning job name) with the same configuration finds the tuning job by its digest."""
    store = LocalStore(local_state.store)
    training = LocalTraining(local_state, store, cpus=2)
    static = {"image-size": "32", "epochs": "1", "batch-size": "16", "learning-rate": "0.001",
              "freeze-backbone": "false", "augmentation": "none", "workers": "0"}
    request = TuningRequest(
        "tune-run-1", static, {"CategoricalParameterRanges": [{"Name": "architecture", "Values": ["resnet18"]}]},
        "Grid", "valid_loss", "Minimize", max_jobs=1, max_parallel_jobs=1,
        dataset_uri=store.sync_folder(tiny_dataset, "s3://sagemaker-flows/datasets/digits").uri,
        output_uri="s3://sagemaker-flows/jobs")
    first = training.run_tuning_job(request)
    assert first.status == "Completed" and first.trials[0].status == "Completed"
    trained = sorted(p.name for p in local_state.jobs.iterdir())

    calls = []
    again = training.run_tuning_job(replace(request, job_name="tune-run-2"), on_trial=lambda *a: calls.append(a),
                                    on_trial_progress=lambda *a: calls.append(a))
    assert again == first and again.job_name == "tune-run-1" and calls == []  # nothing trained again
    assert sorted(p.name for p in local_state.jobs.iterdir()) == trained
    assert [p.stem for p in local_state.tuning.glob("*.json")] == ["tune-run-1"]

    # A changed request is another tuning job (this one fails fast: its batch size is refused).
    changed = training.run_tuning_job(replace(request, job_name="tune-run-3",
                                              static_hyperparameters={**static, "batch-size": "0"}))
    assert changed.job_name == "tune-run-3" and changed.status == "Failed"
    assert changed.trials[0].job_name.startswith("tune-run-3-001-") and "batch-size" in changed.trials[0].failure_reason
