"""One set of promises, checked against both backends: the local backend (real gateway, real model
workers) and the aws backend on moto. This is what "what passes locally passes on AWS" means in tests.

`world` is parametrized over the two backends. Each world gives the tests a Backend and two ways to
get model versions: `model(n)`, one the backend can serve, and `broken_model(n)`, one whose update
fails (locally: weights that do not load; on moto: SageMaker's auto-rollback, played by
tests/aws/fakes.py because moto has no UpdateEndpoint).
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from backends.backend import Backend
from backends.types import ModelVersion
from tests.aws.fakes import FakeProvisioned, FakeSageMakerService
from tests.helpers import make_model_artifact

REGION = "us-east-1"
GROUP = "contract-test-models"
_names = itertools.count(1)


@dataclass
class World:
    backend: Backend
    model: Callable[[int], ModelVersion]
    broken_model: Callable[[int], ModelVersion]

    def unique(self, kind: str) -> str:
        """A name no other test of the module uses (the local world is shared by a module)."""
        return f"contract-{kind}-{next(_names)}"


def _version(number: int, artifact: str) -> ModelVersion:
    return ModelVersion(GROUP, number, artifact, {"test_accuracy": 0.5}, {"epochs": "1"}, "ab" * 32,
                        f"job-{number}", 1.7e9)


@pytest.fixture(scope="module")
def local_world(tmp_path_factory) -> Iterator[World]:
    from backends.local.backend import LocalBackend

    root = tmp_path_factory.mktemp("contract-local")
    backend = LocalBackend(home=str(root / "home"))
    bucket = backend.storage.default_bucket()
    good = backend.storage.upload_file(make_model_artifact(root / "good"), f"s3://{bucket}/contract/good.tar.gz")
    bad = backend.storage.upload_file(make_model_artifact(root / "bad", broken=True), f"s3://{bucket}/contract/bad.tar.gz")
    try:
        yield World(backend, lambda n: _version(n, good), lambda n: _version(n, bad))
    finally:
        backend.close()
        from backends.local.gateway.server import stop_gateway

        stop_gateway(backend.state)


@pytest.fixture
def aws_world() -> Iterator[World]:
    from backends.aws.backend import AwsBackend

    with mock_aws():
        session = boto3.Session(region_name=REGION)
        sagemaker = FakeSageMakerService(session.events)
        FakeProvisioned(session.events)
        backend = AwsBackend(session, "contract", "test", poll_seconds=0, role_propagation_s=0)

        def broken(number: int) -> ModelVersion:
            sagemaker.roll_back_next_update()
            return _version(number, f"s3://{backend.storage.default_bucket()}/contract/bad-{number}.tar.gz")

        yield World(backend, lambda n: _version(n, f"s3://{backend.storage.default_bucket()}/contract/{n}.tar.gz"),
                    broken)
        backend.close()


@pytest.fixture(params=[pytest.param("local", marks=pytest.mark.integration), "aws"])
def world(request) -> World:
    return request.getfixturevalue(f"{request.param}_world")


@pytest.fixture
def dataset(tmp_path) -> Path:
    from tests.helpers import make_folder

    return make_folder(tmp_path / "pets", {"train/cat/1.png": b"cat one", "train/dog/2.png": b"dog two",
                                           "valid/cat/3.png": b"cat three", "test/dog/4.png": b"dog four"})
