"""select_best_model: the tuning job's best trial, chosen by core's pure rule."""
from __future__ import annotations

from prefect import task

from backends.types import ModelCandidate, TuningOutcome
from core.best_trial import NoSuccessfulTrialError, choose_best_trial
from core.hyperparameters import model_hyperparameters
from core.metrics import model_metrics
from core.retry import PermanentError
from tasks import artifacts
from tasks.retry_policy import TASK_OPTIONS


@task(name="select_best_model", **TASK_OPTIONS)
def select_best_model(tuning: TuningOutcome) -> ModelCandidate:
    try:
        trial = choose_best_trial(tuning.trials, tuning.objective_type)
    except NoSuccessfulTrialError as exc:
        raise PermanentError(str(exc)) from None
    artifacts.markdown("best-trial", "\n".join([
        f"## Best trial `{trial.job_name}`",
        f"- {tuning.objective_metric} = {trial.objective:.4f} ({tuning.objective_type})",
        f"- hyperparameters: {', '.join(f'{k}={v}' for k, v in trial.tuned_hyperparameters.items())}",
        f"- model: `{trial.model_artifact}`"]))
    if trial.epochs:
        artifacts.table("best-trial-epochs", artifacts.epoch_rows(trial.epochs), f"per-epoch metrics of {trial.job_name}")
        artifacts.markdown("best-trial-training-curve", artifacts.training_curve_markdown(trial.epochs, trial.job_name),
                           f"training curve of {trial.job_name}")
    # Registered with all it was trained with: the static values too, not only what was tuned.
    hyperparameters = model_hyperparameters(tuning.static_hyperparameters, trial.tuned_hyperparameters)
    return ModelCandidate(trial.job_name, trial.model_artifact, model_metrics(trial.final_metrics), hyperparameters)
