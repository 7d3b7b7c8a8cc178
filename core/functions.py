"""What the Lambda function in front of the endpoint is given, the same on both backends."""
from __future__ import annotations

from core.config import FunctionConfig


def function_environment(endpoint_name: str, config: FunctionConfig, model_version: str = "") -> dict[str, str]:
    """The handler's environment. MODEL_VERSION names the model release a function version goes with,
    so each release publishes a version of its own and a rollback returns to the earlier one."""
    environment = {"ENDPOINT_NAME": endpoint_name, "ALLOWED_URL_HOSTS": ",".join(config.allowed_url_hosts)}
    if model_version:
        environment["MODEL_VERSION"] = model_version
    return environment
