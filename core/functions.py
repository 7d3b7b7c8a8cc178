"""What the Lambda function in front of the endpoint is given, the same on both backends."""
from __future__ import annotations

from collections.abc import Sequence

from core.config import FunctionConfig


def readable_s3_prefixes(pipeline_prefix_uri: str, config: FunctionConfig) -> list[str]:
    """Where {"s3_uri": ...} requests may point: the pipeline's own prefix and the configured extra
    ones, each an s3://bucket/prefix/ ending in "/" (the function checks them; its role grants them)."""
    own = pipeline_prefix_uri if pipeline_prefix_uri.endswith("/") else pipeline_prefix_uri + "/"
    return [own, *(p for p in config.readable_s3_prefixes if p != own)]


def function_environment(endpoint_name: str, config: FunctionConfig, model_version: str = "",
                         s3_prefixes: Sequence[str] = ()) -> dict[str, str]:
    """The handler's environment. MODEL_VERSION names the model release a function version goes with,
    so each release publishes a version of its own and a rollback returns to the earlier one.
    ALLOWED_S3_PREFIXES: the only s3:// locations the handler reads (comma-separated)."""
    environment = {"ENDPOINT_NAME": endpoint_name, "ALLOWED_URL_HOSTS": ",".join(config.allowed_url_hosts),
                   "ALLOWED_S3_PREFIXES": ",".join(s3_prefixes)}
    if model_version:
        environment["MODEL_VERSION"] = model_version
    return environment
