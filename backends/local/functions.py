"""Functions on the local backend: the real lambda_src/handler.py in the local gateway, with
Lambda's concurrency rules; it reaches the local endpoint through boto3's own configuration."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from backends.errors import InvalidRequestError
from backends.local.gateway.client import GatewayConnection
from backends.local.gateway.environments import MAX_LOCAL_PROVISIONED
from backends.types import FunctionState
from core.config import FunctionConfig
from core.functions import function_environment

LAMBDA_SOURCE_DIR = Path(__file__).resolve().parents[2] / "lambda_src"
HANDLER = "handler.lambda_handler"


class LocalFunctions:
    def __init__(self, gateway: GatewayConnection, source_dir: Path = LAMBDA_SOURCE_DIR):
        self.gateway = gateway
        self.source_dir = source_dir

    def check_concurrency(self, name: str, config: FunctionConfig) -> None:
        """Locally there is no account limit, but every provisioned environment is a process on this
        machine: more than the gateway's cap is refused here, before anything is trained."""
        if config.provisioned_concurrency > MAX_LOCAL_PROVISIONED:
            raise InvalidRequestError(
                f"function.provisioned_concurrency {config.provisioned_concurrency} is over the local backend's cap "
                f"of {MAX_LOCAL_PROVISIONED} (each provisioned environment is a process on this machine); lower it "
                "for local runs")

    def publish_function(self, name: str, endpoint_name: str, config: FunctionConfig,
                         model_version: str = "", s3_prefixes: Sequence[str] = ()) -> FunctionState:
        environment = function_environment(endpoint_name, config, model_version, s3_prefixes)
        info = self.gateway.client().put_function(
            name, str(self.source_dir), HANDLER, environment, config.memory_mb, config.timeout_seconds,
            config.reserved_concurrency, config.provisioned_concurrency)
        return FunctionState(name=info["name"], arn=info["arn"], reserved_concurrency=info["reserved_concurrency"],
                             provisioned_concurrency=info["provisioned_concurrency"],
                             invoke_url=f"{self.gateway.url}/2015-03-31/functions/{name}/invocations",
                             code_sha256=info["code_sha256"])

    def delete_function(self, name: str) -> bool:
        return self.gateway.running() and self.gateway.client().delete_function(name)
