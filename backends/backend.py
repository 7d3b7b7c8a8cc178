"""A backend: the services a pipeline's tasks call, and what a flow needs to reach it.

    backend.storage    Storage   (S3 | the local store)
    backend.training   Training  (EC2 instance jobs and SageMaker tuning | subprocesses)
    backend.registry   Registry  (SageMaker model registry | a folder)
    backend.hosting    Hosting   (SageMaker endpoints + Application Auto Scaling | the local gateway)
    backend.functions  Functions (Lambda | the local gateway)
    backend.planning   Planning  (what a run will do and cost, its pre-flight checks)

`get_backend` (backends/__init__.py) builds one; flows never ask which.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

from backends.services import Functions, Hosting, Planning, Registry, Storage, Training


class Backend(ABC):
    name: str
    storage: Storage
    training: Training
    registry: Registry
    hosting: Hosting
    functions: Functions
    planning: Planning

    @property
    @abstractmethod
    def endpoint_url(self) -> str | None:
        """What boto3 takes as `endpoint_url` to reach this backend's SageMaker Runtime and Lambda
        APIs: the local gateway's URL, or None where AWS's own endpoints answer."""

    @abstractmethod
    def client(self, service: str):
        """A boto3 client for `service` ("lambda", "sagemaker-runtime", ...) that reaches this backend."""

    @abstractmethod
    def delete_support_resources(self) -> list[str]:
        """Remove what the backend made to support the pipeline and no longer needs (aws: its IAM
        roles and instance profile; local: the gateway, when it hosts nothing else). What was removed."""

    def close(self) -> None:
        """Release what the backend holds open (connections); what it hosts keeps running."""
