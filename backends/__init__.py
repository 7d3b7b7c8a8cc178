"""Backends: where the pipeline's side effects happen. `get_backend` builds one by name."""
from __future__ import annotations

from backends.backend import Backend
from core.config import PipelineConfig


def get_backend(name: str, config: PipelineConfig | None = None) -> Backend:
    """The backend called `name` ("local" or "aws"), set up from the config's local/aws sections."""
    if name == "local":
        from backends.local.backend import LocalBackend

        local = config.local if config else None
        return LocalBackend(home=local.home if local else None, cpus=local.cpus if local else None)
    if name == "aws":
        try:
            from backends.aws.backend import AwsBackend
        except ImportError as exc:
            raise ValueError(f"the aws backend is not available here ({exc}); install sagemaker-flows[aws]") from None
        return AwsBackend.from_config(config)
    raise ValueError(f"unknown backend {name!r}: expected 'local' or 'aws'")
