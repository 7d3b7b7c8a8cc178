"""Choosing the best trial of a tuning job."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, Protocol, TypeVar


class Trial(Protocol):
    """What the choice reads of a trial (backends.types.TrialSummary is one)."""

    job_name: str
    status: str  # Completed | Failed | Stopped | InProgress
    objective: float | None
    failure_reason: str | None
    index: int  # creation order; breaks ties


T = TypeVar("T", bound=Trial)


class NoSuccessfulTrialError(RuntimeError):
    """Every trial failed, or none reported a usable objective value."""


def usable(trial: Trial) -> bool:
    return trial.status == "Completed" and trial.objective is not None and math.isfinite(trial.objective)


def choose_best_trial(trials: Sequence[T], objective_type: Literal["Minimize", "Maximize"]) -> T:
    """The completed trial with the best finite objective; on a tie, the earliest created.

    Failed, stopped and unfinished trials, and objectives that are NaN or infinite, never win.
    """
    if objective_type not in ("Minimize", "Maximize"):
        raise ValueError(f"objective type must be Minimize or Maximize, got {objective_type!r}")
    candidates = [t for t in trials if usable(t)]
    if not candidates:
        reasons = "; ".join(
            f"{t.job_name}: {t.failure_reason or (t.status if t.status != 'Completed' else f'objective {t.objective}')}"
            for t in trials
        ) or "no trials ran"
        raise NoSuccessfulTrialError(f"no trial completed with a usable objective ({reasons})")
    sign = -1.0 if objective_type == "Maximize" else 1.0
    return min(candidates, key=lambda t: (sign * t.objective, t.index))
