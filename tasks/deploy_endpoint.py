"""deploy_endpoint: create the endpoint, or update it blue/green to the new model version."""
from __future__ import annotations

from prefect import get_run_logger, task

from backends.backend import Backend
from backends.types import EndpointState, ModelVersion
from core.config import PipelineConfig
from tasks import artifacts
from tasks.retry_policy import TASK_OPTIONS


@task(name="deploy_endpoint", **TASK_OPTIONS)
def deploy_endpoint(config: PipelineConfig, backend: Backend, model: ModelVersion) -> EndpointState:
    name = config.names.endpoint
    state = backend.hosting.deploy_endpoint(name, model, config.hosting)
    get_run_logger().info("endpoint %s %s serving %s on %d instance(s)", name, state.status, state.model_version,
                          state.instance_count)
    artifacts.link(f"{config.stage}-endpoint", state.invoke_url, f"{name} invocations",
                   "SageMaker Runtime InvokeEndpoint URL")
    artifacts.markdown(f"{config.stage}-endpoint-summary", "\n".join([
        f"## Endpoint `{name}`", f"- status: {state.status}", f"- model: {state.model_version}",
        f"- instances: {state.instance_count} x {config.hosting.instance_type}",
        f"- invoke: `{state.invoke_url}`"]))
    return state
