"""Where the Lambda hop goes: (c) through the function less (b) straight to the endpoint, taken apart
with the runtime's REPORT line, the handler's own latency log, a no-op function, and a no-op function
that waits as long as (b) takes (the same round trip after the machine idled that long)."""
from __future__ import annotations

import base64
import json
import re
import statistics
import time
from pathlib import Path

from serving_callers import (ENDPOINT_NAME, FAKE_CREDENTIALS, FUNCTION_NAME, REGION, _boto_config, _check_lambda,
                             _check_predictions)

NOOP_FUNCTION = "bench-serving-noop"
NOOP_HANDLER = ("import time\n\n\ndef lambda_handler(event, context):\n"
                "    time.sleep(event.get('wait_ms', 0) / 1000)  # 0 unless asked: the waiting no-op\n"
                "    return {'statusCode': 200, 'body': '{}'}\n")


def lambda_breakdown(url: str, gateway, code_dir: Path, body: bytes, payload: str, n: int,
                     read_timeout: float) -> dict:
    """Where the Lambda hop goes, at concurrency 1, after the timed cells: (b) and (c) requests alternate,
    (c) asking for its log tail (LogType=Tail) to read the runtime's REPORT Duration and the handler's own
    latency_ms; plus the gateway's no-op round trip, a no-op function invoked with the same payload, and
    the same no-op told to wait as long as (b) took (alternating with (b), as (c) does): what the round
    trip costs when the processes on it idled meanwhile, as they do while the model computes."""
    import boto3
    import httpx

    code_dir.mkdir(parents=True, exist_ok=True)
    (code_dir / "handler.py").write_text(NOOP_HANDLER)
    gateway.put_function(NOOP_FUNCTION, str(code_dir), reserved_concurrency=1, provisioned_concurrency=1)
    runtime = boto3.client("sagemaker-runtime", endpoint_url=url, region_name=REGION,
                           config=_boto_config(read_timeout), **FAKE_CREDENTIALS)
    lam = boto3.client("lambda", endpoint_url=url, region_name=REGION,
                       config=_boto_config(read_timeout), **FAKE_CREDENTIALS)
    http = httpx.Client(timeout=read_timeout, headers={"Authorization": f"Bearer {gateway.secret}"})
    rows: dict[str, list[float]] = {k: [] for k in ("noop_http", "noop_function", "b_total", "c_total", "c_report",
                                                    "c_handler", "wait_function")}

    def timed(key: str | None, fn):
        began = time.perf_counter()
        out = fn()
        if key:
            rows[key].append((time.perf_counter() - began) * 1000)
        return out

    def noop_http():
        http.get(f"{url}/_local/status").raise_for_status()

    def noop_function():
        response = lam.invoke(FunctionName=NOOP_FUNCTION, Payload=payload)
        response["Payload"].read()
        if response.get("FunctionError"):
            raise RuntimeError("the no-op function failed")

    def endpoint():
        response = runtime.invoke_endpoint(EndpointName=ENDPOINT_NAME, ContentType="image/jpeg", Body=body)
        _check_predictions(json.loads(response["Body"].read()))

    def function():
        response = lam.invoke(FunctionName=FUNCTION_NAME, Payload=payload, LogType="Tail")
        _check_lambda(response)
        return base64.b64decode(response.get("LogResult", "")).decode("utf-8", "replace")

    try:
        for key, fn in (("noop_http", noop_http), ("noop_function", noop_function)):  # back to back, as the cells
            for i in range(n + 2):
                timed(key if i >= 2 else None, fn)
        for i in range(n + 2):  # (b) and (c) alternate; the first two rounds warm the clients up
            keep = i >= 2
            timed("b_total" if keep else None, endpoint)
            log = timed("c_total" if keep else None, function)
            report = re.search(r"REPORT RequestId: \S+\tDuration: ([\d.]+) ms", log)
            handler = re.search(r'"message": "request completed".*?"latency_ms": ([\d.]+)', log)
            if keep and report and handler:
                rows["c_report"].append(float(report.group(1)))
                rows["c_handler"].append(float(handler.group(1)))
        wait_ms = statistics.median(rows["b_total"])
        waiting = json.dumps({**json.loads(payload), "wait_ms": wait_ms})  # the same size, near enough

        def waiting_noop():
            response = lam.invoke(FunctionName=NOOP_FUNCTION, Payload=waiting)
            response["Payload"].read()
            if response.get("FunctionError"):
                raise RuntimeError("the waiting no-op function failed")

        for i in range(n + 2):
            timed(None, endpoint)
            timed("wait_function" if i >= 2 else None, waiting_noop)
        rows["wait_function"] = [ms - wait_ms for ms in rows["wait_function"]]
    finally:
        runtime.close()
        lam.close()
        http.close()
    return {k: statistics.median(v) if v else None for k, v in rows.items()} | {"requests": n}
