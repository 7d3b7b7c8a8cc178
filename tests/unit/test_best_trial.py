import math
from dataclasses import dataclass

import pytest

from core.best_trial import NoSuccessfulTrialError, choose_best_trial


@dataclass(frozen=True)
class Trial:
    job_name: str
    status: str
    objective: float | None
    failure_reason: str | None
    index: int


def trial(i, objective, status="Completed", reason=None):
    return Trial(f"t{i}", status, objective, reason, i)


def test_minimize_and_maximize():
    trials = [trial(0, 0.5), trial(1, 0.2), trial(2, 0.9)]
    assert choose_best_trial(trials, "Minimize").job_name == "t1"
    assert choose_best_trial(trials, "Maximize").job_name == "t2"


def test_failed_nan_and_infinite_never_win():
    trials = [trial(0, 0.01, "Failed", "corrupt image"), trial(1, math.nan), trial(2, -math.inf),
              trial(3, None), trial(4, 0.7), trial(5, 0.0, "Stopped")]
    assert choose_best_trial(trials, "Minimize").job_name == "t4"


def test_ties_go_to_the_earliest_trial():
    trials = [trial(2, 0.3), trial(0, 0.3), trial(1, 0.3)]
    assert choose_best_trial(trials, "Minimize").job_name == "t0"
    assert choose_best_trial(trials, "Maximize").job_name == "t0"


def test_no_usable_trial_lists_every_reason():
    with pytest.raises(NoSuccessfulTrialError) as info:
        choose_best_trial([trial(0, None, "Failed", "empty class folder: train/cat"), trial(1, math.nan)], "Minimize")
    assert "empty class folder: train/cat" in str(info.value) and "objective nan" in str(info.value)
    with pytest.raises(NoSuccessfulTrialError, match="no trials ran"):
        choose_best_trial([], "Maximize")


def test_objective_type_is_checked():
    with pytest.raises(ValueError, match="Minimize or Maximize"):
        choose_best_trial([trial(0, 1.0)], "Lowest")


def test_the_chosen_model_carries_every_hyperparameter_it_was_trained_with(monkeypatch):
    from backends.types import TrialSummary, TuningOutcome
    from tasks import select_best_model as task_module

    monkeypatch.setattr(task_module.artifacts, "markdown", lambda *args, **kwargs: None)  # no Prefect API here
    static = {"architecture": "resnet18", "epochs": "10", "learning-rate": "0.001", "pretrained-file": "w.pth"}
    trials = [TrialSummary(i, f"tune-00{i + 1}-0000000{i + 1}", "Completed", {"learning-rate": lr, "batch-size": "64"},
                           objective, None, {"test_accuracy": 0.9}, f"s3://b/jobs/t{i}/output/model.tar.gz", 60.0)
              for i, (lr, objective) in enumerate([("0.01", 0.5), ("0.003", 0.2)])]
    tuning = TuningOutcome("tune", "Completed", "valid_loss", "Minimize", trials, static_hyperparameters=static)

    candidate = task_module.select_best_model.fn(tuning)

    assert candidate.job_name == "tune-002-00000002"
    # The static set, with the trial's tuned values over it (learning-rate was tuned: 0.003, not 0.001).
    assert candidate.hyperparameters == {"architecture": "resnet18", "epochs": "10", "learning-rate": "0.003",
                                         "pretrained-file": "w.pth", "batch-size": "64"}
