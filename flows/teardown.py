"""teardown: remove what a pipeline made (function, autoscaling, endpoint); registered models stay."""
from __future__ import annotations

from prefect import flow, task

from backends import get_backend
from backends.base import Backend, TeardownReport
from core.config import PipelineConfig
from core.names import pipeline_names
from tasks import artifacts
from tasks.retry_policy import TASK_OPTIONS


@task(name="delete_function", **TASK_OPTIONS)
def delete_function(backend: Backend, name: str) -> bool:
    return backend.delete_function(name)


@task(name="deregister_autoscaling", **TASK_OPTIONS)
def deregister_autoscaling(backend: Backend, endpoint: str, variant: str) -> bool:
    return backend.deregister_autoscaling(endpoint, variant)


@task(name="delete_endpoint", **TASK_OPTIONS)
def delete_endpoint(backend: Backend, name: str) -> bool:
    return backend.delete_endpoint(name)


@task(name="delete_support_resources", **TASK_OPTIONS)
def delete_support_resources(backend: Backend) -> list[str]:
    return backend.delete_support_resources()


@flow(name="teardown", log_prints=True)
def teardown(config: PipelineConfig, stop_local_gateway: bool = True) -> TeardownReport:
    names = pipeline_names(config.project, config.stage)
    backend = get_backend(config.backend, config)
    removed = []
    try:
        if delete_function(backend, names["function"]):
            removed.append(f"function {names['function']}")
        if deregister_autoscaling(backend, names["endpoint"], config.hosting.variant_name):
            removed.append(f"autoscaling of {names['endpoint']}")
        if delete_endpoint(backend, names["endpoint"]):
            removed.append(f"endpoint {names['endpoint']}")
        removed += delete_support_resources(backend)
        if config.backend == "local" and stop_local_gateway and _gateway_running(backend):
            from backends.local.gateway.server import stop_gateway

            hosted = backend.gateway().status()
            if not hosted["endpoints"] and not hosted["functions"]:
                stop_gateway(backend.state)
                removed.append("the local gateway (it hosted nothing else)")
    finally:
        backend.close()
    report = TeardownReport(removed, [f"model group {names['model_group']} (registered models are kept)"])
    artifacts.markdown(f"{config.stage}-teardown", "\n".join(
        ["## Teardown", *(f"- removed {r}" for r in removed or ["nothing (already gone)"]), *(f"- kept {k}" for k in report.kept)]))
    return report


def _gateway_running(backend) -> bool:
    from backends.local.gateway.server import running_gateway

    return running_gateway(backend.state) is not None
