"""From a TrainingConfig to the flags of training/train.py (as SageMaker passes them: strings)."""
from __future__ import annotations

from core.config import TrainingConfig


def static_hyperparameters(training: TrainingConfig, tuned: list[str] | tuple[str, ...] = ()) -> dict[str, str]:
    """The hyperparameters every job gets; those being tuned are left out."""
    values = {
        "architecture": training.architecture,
        "image-size": str(training.image_size),
        "epochs": str(training.epochs),
        "early-stopping-patience": str(training.early_stopping_patience),
        "freeze-backbone": str(training.freeze_backbone).lower(),
        "augmentation": training.augmentation,
        "seed": str(training.seed),
        "learning-rate": repr(training.hyperparameters.learning_rate),
        "batch-size": str(training.hyperparameters.batch_size),
    }
    return {k: v for k, v in values.items() if k not in tuned}


def model_hyperparameters(static: dict[str, str], tuned: dict[str, str]) -> dict[str, str]:
    """Everything a tuning trial was trained with: the static values, its tuned ones over them."""
    return {**{str(k): str(v) for k, v in static.items()}, **{str(k): str(v) for k, v in tuned.items()}}


def hyperparameter_flags(hyperparameters: dict[str, str]) -> list[str]:
    """`{"epochs": "3"}` -> `["--epochs", "3"]`, as SageMaker script mode builds the command line."""
    flags: list[str] = []
    for name, value in hyperparameters.items():
        flags += [f"--{name}", str(value)]
    return flags
