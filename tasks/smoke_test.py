"""smoke_test: real test images through the Lambda Invoke API; answers checked, accuracy and latency reported."""
from __future__ import annotations

import base64
import json
import statistics
import time
from dataclasses import dataclass

from prefect import get_run_logger, task

from backends.backend import Backend
from backends.types import FunctionState, StagedDataset
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


@task(name="smoke_test", **TASK_OPTIONS)
def smoke_test(backend: Backend, function: FunctionState, dataset: StagedDataset, samples: int = SAMPLES) -> SmokeTestReport:
    logger = get_run_logger()
    test_prefix = dataset.uri.rstrip("/") + "/test"
    keys = pick_samples(backend.storage.list_objects(test_prefix), samples)
    if not keys:
        raise PermanentError(f"no test images under {test_prefix}")
    client = backend.client("lambda")
    rows, latencies, correct, version = [], [], 0, ""
    for key in keys:
        event = {"image": base64.b64encode(backend.storage.read_object(f"{test_prefix}/{key}")).decode()}
        started = time.perf_counter()
        response = client.invoke(FunctionName=function.name, Payload=json.dumps(event).encode())
        latencies.append((time.perf_counter() - started) * 1000)
        answer = json.loads(response["Payload"].read())
        if "FunctionError" in response:
            raise PermanentError(f"function {function.name} raised on {key}: {answer.get('errorType')}: {answer.get('errorMessage')}")
        if answer.get("statusCode") != 200:
            raise PermanentError(f"function {function.name} answered {answer.get('statusCode')} for {key}: {answer.get('body')}")
        body = json.loads(answer["body"])
        predicted = body["predictions"][0]["label"]
        expected = key.split("/", 1)[0]
        correct += predicted == expected
        version = body.get("model_version", version)
        rows.append({"image": key, "expected": expected, "predicted": predicted,
                     "score": round(body["predictions"][0]["score"], 4), "ms": round(latencies[-1], 1)})
    report = SmokeTestReport(len(keys), correct, correct / len(keys), statistics.median(latencies),
                             sorted(latencies)[max(0, int(round(0.95 * len(latencies))) - 1)], version)
    logger.info("smoke test through %s: %d/%d correct, p50 %.1f ms", function.name, correct, len(keys), report.p50_ms)
    artifacts.table("smoke-test", rows, f"test images through {function.name}")
    artifacts.markdown("smoke-test-summary", "\n".join([
        f"## Smoke test through `{function.name}`", f"- model: {version}",
        f"- accuracy on {len(keys)} test images: {report.accuracy:.2%}",
        f"- latency: p50 {report.p50_ms:.1f} ms, p95 {report.p95_ms:.1f} ms"]))
    return report
