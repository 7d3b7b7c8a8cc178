"""The benchmark's callers, one per thread and created before the clock starts: in-process (plain and
served), through the local endpoint (boto3 sagemaker-runtime) and through the local function (boto3
lambda); each checks that its answer carries predictions."""
from __future__ import annotations

import json

ENDPOINT_NAME = "bench-serving"
PLAIN_ENDPOINT_NAME = "bench-serving-plain"
FUNCTION_NAME = "bench-serving-fn"
REGION = "us-east-1"
FAKE_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing",
                    "aws_session_token": "testing"}  # only the local gateway is ever called

def _check_predictions(answer: dict) -> None:
    if not isinstance(answer, dict) or not answer.get("predictions"):
        raise RuntimeError(f"answer without predictions: {str(answer)[:200]}")


def in_process_caller(model, body: bytes):
    from training.inference import handle

    def call(image: bytes = body) -> dict:
        answer = json.loads(handle(image, "image/jpeg", "application/json", model))
        _check_predictions(answer)
        return answer
    return call


def plain_caller(model, body: bytes):
    from bench.serving_baseline import handle

    def call(image: bytes = body) -> dict:
        answer = json.loads(handle(image, model))
        _check_predictions(answer)
        return answer
    return call


def _boto_config(read_timeout: float):
    from botocore.config import Config

    return Config(connect_timeout=10, read_timeout=read_timeout, retries={"total_max_attempts": 1},
                  max_pool_connections=4)


def endpoint_caller(url: str, body: bytes, read_timeout: float, endpoint: str = ENDPOINT_NAME):
    import boto3

    client = boto3.client("sagemaker-runtime", endpoint_url=url, region_name=REGION,
                          config=_boto_config(read_timeout), **FAKE_CREDENTIALS)

    def call(image: bytes = body) -> dict:
        response = client.invoke_endpoint(EndpointName=endpoint, ContentType="image/jpeg",
                                          Accept="application/json", Body=image)
        answer = json.loads(response["Body"].read())
        _check_predictions(answer)
        return answer
    call.client = client
    return call


def lambda_caller(url: str, payload: str, read_timeout: float):
    import boto3

    client = boto3.client("lambda", endpoint_url=url, region_name=REGION,
                          config=_boto_config(read_timeout), **FAKE_CREDENTIALS)

    def call() -> None:
        response = client.invoke(FunctionName=FUNCTION_NAME, Payload=payload)
        _check_lambda(response)
    call.client = client
    return call


def _check_lambda(response: dict) -> dict:
    raw = response["Payload"].read()
    if response.get("FunctionError") or response.get("StatusCode") != 200:
        raise RuntimeError(f"function error {response.get('FunctionError')}: {raw[:300]!r}")
    answer = json.loads(raw)
    if not isinstance(answer, dict) or answer.get("statusCode") != 200:
        raise RuntimeError(f"handler answered {str(answer)[:300]}")
    body = json.loads(answer["body"])
    _check_predictions(body)
    return body
