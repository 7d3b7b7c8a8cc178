"""What SageMaker's hyperparameter tuning is asked and answers, as plain functions (sagemaker_tuning.py
runs the job): parameter ranges as the SDK takes them, the pretrained channel's manifest, a Grid
job's size, the configuration digest a re-run finds its job by, and trial summaries as TrialSummary."""
from __future__ import annotations

import hashlib
import re
from dataclasses import asdict
from datetime import datetime
from fnmatch import fnmatch
from pathlib import Path

from backends.types import TrialSummary, TuningRequest
from core.names import configuration_digest

# Left out of the code uploaded for the training jobs.
CODE_IGNORE_PATTERNS = ("__pycache__", "*.pyc", ".*")


def sdk_parameter_ranges(ranges: dict) -> dict:
    """SageMaker's ParameterRanges structure (core.config.ParameterRanges.to_sagemaker) as the SDK's
    {name: ContinuousParameter | IntegerParameter | CategoricalParameter} that HyperparameterTuner takes."""
    from sagemaker.core.parameter import CategoricalParameter, ContinuousParameter, IntegerParameter

    converted: dict = {}

    def add(name: str, parameter) -> None:
        if name in converted:
            raise ValueError(f"hyperparameter {name!r} has more than one range")
        converted[name] = parameter

    for r in ranges.get("ContinuousParameterRanges") or []:
        add(r["Name"], ContinuousParameter(float(r["MinValue"]), float(r["MaxValue"]), r.get("ScalingType", "Auto")))
    for r in ranges.get("IntegerParameterRanges") or []:
        add(r["Name"], IntegerParameter(int(r["MinValue"]), int(r["MaxValue"]), r.get("ScalingType", "Auto")))
    for r in ranges.get("CategoricalParameterRanges") or []:
        add(r["Name"], CategoricalParameter([str(v) for v in r["Values"]]))
    if not converted:
        raise ValueError("parameter ranges are empty: nothing to tune")
    return converted


def tuning_digest(request: TuningRequest, code_digest: str) -> str:
    """What a tuning job was asked to do, without its name (PipelineNames.DIGEST_TAG): every field of
    the request (hyperparameters, ranges, strategy, objective, limits, data, output, weights,
    instance type, seed) and the training code."""
    settings = {k: v for k, v in asdict(request).items() if k != "job_name"}
    return configuration_digest({**settings, "code": code_digest})


def source_digest(source_dir: str) -> str:
    """The training code as the tuner uploads it (caches and dotfiles left out): paths and bytes, hashed."""
    root, sha = Path(source_dir), hashlib.sha256()
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if path.is_dir() or any(fnmatch(part, p) for part in relative.parts for p in CODE_IGNORE_PATTERNS):
            continue
        sha.update(relative.as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return sha.hexdigest()[:16]


def pretrained_manifest(pretrained_uri: str) -> list:
    """The ManifestFile of the `pretrained` channel: exactly the weights file (an S3Prefix of its key
    would also take `weights.pth.bak`; of its folder, every other file there), which train.py then
    finds by --pretrained-file in the channel folder."""
    folder, _, filename = pretrained_uri.rpartition("/")
    if not filename:
        raise ValueError(f"{pretrained_uri} is a prefix, not a weights file")
    return [{"prefix": folder + "/"}, filename]


def grid_size(ranges: dict) -> int:
    """How many trials a Grid tuning job runs: every combination of the integer and categorical values."""
    size = 1
    for r in ranges.get("IntegerParameterRanges") or []:
        size *= int(r["MaxValue"]) - int(r["MinValue"]) + 1
    for r in ranges.get("CategoricalParameterRanges") or []:
        size *= len(r["Values"])
    return size


def trial_index(job_name: str, tuning_job_name: str, fallback: int) -> int:
    """0-based index of a trial: SageMaker names them `<tuning job>-<NNN>-<hex>`, NNN counting from 1."""
    match = re.fullmatch(rf"{re.escape(tuning_job_name)}-(\d+)-[0-9a-fA-F]+", job_name)
    return int(match.group(1)) - 1 if match else fallback


def final_metrics(description: dict | None) -> dict[str, float]:
    """DescribeTrainingJob's FinalMetricDataList as {metric name: last value}."""
    if not description:
        return {}
    return {m["MetricName"]: float(m["Value"]) for m in description.get("FinalMetricDataList") or []
            if "MetricName" in m and "Value" in m}


def trial_from_summary(summary: dict, index: int, objective_metric: str,
                       description: dict | None = None) -> TrialSummary:
    """One HyperParameterTrainingJobSummary (plus, for a completed trial, its DescribeTrainingJob) as a TrialSummary."""
    status = summary["TrainingJobStatus"]
    objective_value = (summary.get("FinalHyperParameterTuningJobObjectiveMetric") or {}).get("Value")
    objective = None if objective_value is None else float(objective_value)
    failure_reason = summary.get("FailureReason") or None
    if status == "Completed" and objective is None:  # as the local backend: no objective, no usable trial
        status, failure_reason = "Failed", f"the objective metric {objective_metric} was never reported"
    artifact = None
    if description and summary["TrainingJobStatus"] == "Completed":
        artifact = (description.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
    return TrialSummary(
        index=index,
        job_name=summary["TrainingJobName"],
        status=status,
        tuned_hyperparameters={k: _plain_value(v) for k, v in (summary.get("TunedHyperParameters") or {}).items()},
        objective=objective,
        failure_reason=failure_reason,
        final_metrics=final_metrics(description),
        model_artifact=artifact,
        duration_seconds=_duration_seconds(summary, description),
    )


def _plain_value(value) -> str:
    # Framework estimators of SDK v2 sent categorical values JSON-quoted ('"64"'); hand back the value itself.
    text = str(value)
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text


def _duration_seconds(summary: dict, description: dict | None) -> float:
    if description and description.get("TrainingTimeInSeconds") is not None:
        return float(description["TrainingTimeInSeconds"])
    start, end = summary.get("TrainingStartTime"), summary.get("TrainingEndTime")
    if isinstance(start, datetime) and isinstance(end, datetime):
        return max(0.0, (end - start).total_seconds())
    return 0.0
