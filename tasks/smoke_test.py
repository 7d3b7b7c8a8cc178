"""smoke_test: real test images through the Lambda Invoke API (the alias, so the published version
and its provisioned concurrency are what is tested); answers checked, accuracy and latency reported.
It fails when any answer is an error or the accuracy is below promotion.smoke_test_min_accuracy."""
from __future__ import annotations

import base64
import json
import statistics
import time
from dataclasses import dataclass, field

from prefect import get_run_logger, task

from backends.backend import Backend
from backends.types import FunctionState, StagedDataset
from core.config import PipelineConfig
from core.datasets import pick_samples
from core.retry import PermanentError
from tasks import artifacts
from tasks.retry_policy import TASK_OPTIONS

SAMPLES = 20


@dataclass(frozen=True)
class SmokeTestReport:
    samples: int
    correct: int
    accuracy: float
    p50_ms: float
    p95_ms: float
    model_version: str
    errors: list[str] = field(default_factory=list)


class SmokeTestFailedError(PermanentError):
    """The release answered with errors, or too few right answers; `report` says what it saw."""

    def __init__(self, message: str, report: SmokeTestReport):
        super().__init__(message)
        self.report = report

    def __reduce__(self):  # so Prefect can keep it in a failed state
        return type(self), (str(self), self.report)


def _ask(client, function: FunctionState, image: bytes) -> tuple[dict | None, str | None]:
    """The function's answer body, or the error it gave instead."""
    extra = {"Qualifier": function.alias} if function.alias else {}
    event = {"image": base64.b64encode(image).decode()}
    response = client.invoke(FunctionName=function.name, Payload=json.dumps(event).encode(), **extra)
    answer = json.loads(response["Payload"].read())
    if "FunctionError" in response:
        return None, f"{answer.get('errorType')}: {answer.get('errorMessage')}"
    if answer.get("statusCode") != 200:
        return None, f"status {answer.get('statusCode')}: {answer.get('body')}"
    return json.loads(answer["body"]), None


@task(name="smoke_test", **TASK_OPTIONS)
def smoke_test(config: PipelineConfig, backend: Backend, function: FunctionState, dataset: StagedDataset,
               samples: int = SAMPLES) -> SmokeTestReport:
    logger = get_run_logger()
    test_prefix = dataset.uri.rstrip("/") + "/test"
    keys = pick_samples(backend.storage.list_objects(test_prefix), samples)
    if not keys:
        raise PermanentError(f"no test images under {test_prefix}")
    client = backend.client("lambda")
    rows, latencies, errors, correct, version = [], [], [], 0, ""
    for key in keys:
        image = backend.storage.read_object(f"{test_prefix}/{key}")
        started = time.perf_counter()
        body, error = _ask(client, function, image)
        latencies.append((time.perf_counter() - started) * 1000)
        expected = key.split("/", 1)[0]
        if error:
            errors.append(f"{key}: {error}")
            rows.append({"image": key, "expected": expected, "predicted": "", "score": None,
                         "ms": round(latencies[-1], 1), "error": error[:200]})
            continue
        top = body["predictions"][0]
        correct += top["label"] == expected
        version = body.get("model_version", version)
        rows.append({"image": key, "expected": expected, "predicted": top["label"], "score": round(top["score"], 4),
                     "ms": round(latencies[-1], 1), "error": ""})
    ordered = sorted(latencies)
    report = SmokeTestReport(len(keys), correct, correct / len(keys), statistics.median(latencies),
                             ordered[max(0, int(round(0.95 * len(ordered))) - 1)], version, errors)
    logger.info("smoke test through %s: %d/%d correct, %d errors, p50 %.1f ms", function.name, correct, len(keys),
                len(errors), report.p50_ms)
    artifacts.table("smoke-test", rows, f"test images through {function.name}")
    artifacts.markdown("smoke-test-summary", "\n".join([
        f"## Smoke test through `{function.name}`" + (f" (alias `{function.alias}`)" if function.alias else ""),
        f"- model: {version}", f"- accuracy on {len(keys)} test images: {report.accuracy:.2%}",
        f"- errors: {len(errors)}", f"- latency: p50 {report.p50_ms:.1f} ms, p95 {report.p95_ms:.1f} ms"]))
    minimum = config.promotion.smoke_test_min_accuracy
    if errors:
        raise SmokeTestFailedError(f"{len(errors)} of {len(keys)} requests through {function.name} failed, e.g. "
                                   f"{errors[0]}", report)
    if report.accuracy < minimum:
        raise SmokeTestFailedError(f"accuracy {report.accuracy:.2%} on {len(keys)} test images through "
                                   f"{function.name} is below promotion.smoke_test_min_accuracy {minimum:.2%}", report)
    return report
