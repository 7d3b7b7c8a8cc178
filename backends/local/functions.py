"""Functions on the local backend: the real lambda_src/handler.py in the local gateway, with
Lambda's concurrency rules; it reaches the local endpoint through boto3's own configuration."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from backends.local.gateway.client import GatewayConnection
from backends.types import FunctionState
from core.config import FunctionConfig
from core.functions import function_environment

LAMBDA_SOURCE_DIR = Path(__file__).resolve().parents[2] / "lambda_src"
HANDLER = "handler.lambda_handler"


class LocalFunctions:
    def __init__(self, gateway: GatewayConnection, source_dir: Path = LAMBDA_SOURCE_DIR):
        self.gateway = gateway
        self.source_dir = source_dir

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
