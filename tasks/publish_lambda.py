"""publish_lambda: the function in front of the endpoint, for one model release, with its concurrency."""
from __future__ import annotations

from prefect import task

from backends.backend import Backend
from backends.types import EndpointState, FunctionState, ModelVersion
from core.config import PipelineConfig
from core.functions import readable_s3_prefixes
from tasks import artifacts
from tasks.retry_policy import TASK_OPTIONS


@task(name="publish_lambda", **TASK_OPTIONS)
def publish_lambda(config: PipelineConfig, backend: Backend, endpoint: EndpointState,
                   model: ModelVersion) -> FunctionState:
    name = config.names.function
    s3_prefixes = readable_s3_prefixes(config.names.prefix_uri(backend.storage.default_bucket()), config.function)
    state = backend.functions.publish_function(name, endpoint.name, config.function, model.label, s3_prefixes)
    artifacts.link(f"{config.stage}-function", state.invoke_url, f"{name} invoke", "Lambda Invoke URL")
    artifacts.markdown(f"{config.stage}-function-summary", "\n".join([
        f"## Lambda `{name}`", f"- calls endpoint `{endpoint.name}` for model {model.label}",
        f"- alias {state.alias} -> version {state.version}" if state.alias else "- no alias (local)",
        f"- reserved concurrency: {state.reserved_concurrency}, provisioned: {state.provisioned_concurrency}",
        f"- memory {config.function.memory_mb} MB, timeout {config.function.timeout_seconds} s",
        f"- invoke: `{state.invoke_url}`"]))
    return state
