"""The metric lines training/train.py prints, and the regexes that read them.

METRIC_DEFINITIONS is handed unchanged to SageMaker (MetricDefinitions) and to the
local backend, so both read the same numbers from the same log lines.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

_NUMBER = r"([-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|nan|inf)"
METRIC_NAMES = (
    "epoch", "train_loss", "train_accuracy", "valid_loss", "valid_accuracy",
    "epoch_seconds", "images_per_second", "best_epoch", "test_loss", "test_accuracy",
)
MAXIMIZED_METRICS = frozenset({"train_accuracy", "valid_accuracy", "test_accuracy"})
MINIMIZED_METRICS = frozenset({"train_loss", "valid_loss", "test_loss"})

# The name is preceded by a space so that `epoch=` does not match inside `best_epoch=`.
METRIC_DEFINITIONS: list[dict[str, str]] = [
    {"Name": name, "Regex": rf"\[metric\].* {name}={_NUMBER}"} for name in METRIC_NAMES
]
_COMPILED = [(d["Name"], re.compile(d["Regex"])) for d in METRIC_DEFINITIONS]


def parse_metric_line(line: str, definitions: list[dict[str, str]] | None = None) -> dict[str, float]:
    """The metrics one log line reports ({} for other lines)."""
    if "[metric]" not in line:
        return {}
    compiled = _COMPILED if definitions is None else [(d["Name"], re.compile(d["Regex"])) for d in definitions]
    found = {}
    for name, regex in compiled:
        match = regex.search(line)
        if match:
            found[name] = float(match.group(1))
    return found


def parse_metric_log(lines: Iterable[str]) -> dict[str, list[float]]:
    """Every value of every metric, in log order."""
    series: dict[str, list[float]] = {}
    for line in lines:
        for name, value in parse_metric_line(line).items():
            series.setdefault(name, []).append(value)
    return series


def final_metrics(series: dict[str, list[float]]) -> dict[str, float]:
    """The last value of each metric, as SageMaker reports a job's final metrics."""
    return {name: values[-1] for name, values in series.items() if values}


def epoch_rows(lines: Iterable[str]) -> list[dict[str, float]]:
    """One row per epoch line (for tables and training curves)."""
    rows = []
    for line in lines:
        values = parse_metric_line(line)
        if "epoch" in values:
            rows.append(values)
    return rows


MODEL_METRICS = ("valid_loss", "valid_accuracy", "test_loss", "test_accuracy", "best_epoch")


def model_metrics(final: dict[str, float]) -> dict[str, float]:
    """What a trained model is judged and registered by (not per-epoch bookkeeping)."""
    return {k: final[k] for k in MODEL_METRICS if k in final}
