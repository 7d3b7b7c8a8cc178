"""teardown: remove what a pipeline made (function, autoscaling, endpoint, support resources);
registered models stay."""
# No `from __future__ import annotations`: Prefect builds the parameter model from the real annotations.
from prefect import flow

from backends import get_backend
from backends.types import TeardownReport
from core.config import PipelineConfig
from tasks import artifacts
from tasks.delete_endpoint import delete_endpoint
from tasks.delete_function import delete_function
from tasks.delete_support_resources import delete_support_resources
from tasks.deregister_autoscaling import deregister_autoscaling


@flow(name="teardown", log_prints=True)
def teardown(config: PipelineConfig) -> TeardownReport:
    """Remove the pipeline's function, autoscaling, endpoint and roles; keep its registered models."""
    names = config.names
    backend = get_backend(config.backend, config)
    removed = []
    try:
        if delete_function(backend, names.function):
            removed.append(f"function {names.function}")
        if deregister_autoscaling(backend, names.endpoint, config.hosting.variant_name):
            removed.append(f"autoscaling of {names.endpoint}")
        if delete_endpoint(backend, names.endpoint):
            removed.append(f"endpoint {names.endpoint}")
        removed += delete_support_resources(backend)
    finally:
        backend.close()
    report = TeardownReport(removed, [f"model group {names.model_group} (registered models are kept)"])
    artifacts.markdown(f"{config.stage}-teardown", "\n".join(
        ["## Teardown", *(f"- removed {r}" for r in removed or ["nothing (already gone)"]), *(f"- kept {k}" for k in report.kept)]))
    return report
