"""register_autoscaling: target tracking on invocations per instance for the endpoint's variant."""
from __future__ import annotations

import json

from prefect import task

from backends.backend import Backend
from backends.types import EndpointState, ScalingState
from core.config import PipelineConfig
from tasks import artifacts
from tasks.retry_policy import TASK_OPTIONS


@task(name="register_autoscaling", **TASK_OPTIONS)
def register_autoscaling(config: PipelineConfig, backend: Backend, endpoint: EndpointState) -> ScalingState | None:
    if not config.autoscaling.enabled:
        backend.hosting.deregister_autoscaling(endpoint.name, endpoint.variant_name)
        return None
    state = backend.hosting.register_autoscaling(endpoint.name, endpoint.variant_name, config.autoscaling)
    artifacts.markdown(f"{config.stage}-autoscaling", "\n".join([
        f"## Autoscaling `{state.resource_id}`", f"- capacity: {state.min_capacity}..{state.max_capacity} instances",
        "- policy:", "```json", json.dumps(state.policy, indent=2), "```"]))
    return state
