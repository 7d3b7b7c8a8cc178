"""The SageMaker model registry on moto: idempotent registration, version order, promotion."""
import os
import re

# Fake credentials before boto3 is imported: no test may reach a real AWS account.
for _key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
    os.environ[_key] = "testing"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"

import boto3  # noqa: E402
import pytest  # noqa: E402
from moto import mock_aws  # noqa: E402

from backends.aws.registry import ModelRegistry  # noqa: E402
from backends.errors import NotFoundError  # noqa: E402

GROUP = "proj-dev-models"
IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.5-cpu-py311"
# SageMaker's pattern for a CustomerMetadataProperties value (moto does not enforce it).
METADATA_VALUE = re.compile(r"^[\w\s.:/=+\-@]{1,256}$")


@pytest.fixture
def sagemaker():
    with mock_aws():
        yield boto3.client("sagemaker", region_name="us-east-1")


@pytest.fixture
def registry(sagemaker):
    return ModelRegistry(sagemaker, IMAGE, "models of proj/dev")


def _register(registry, job: str, accuracy: float = 0.9, hyperparameters: dict | None = None):
    return registry.register_model_version(GROUP, f"s3://bucket/proj/dev/models/{job}/output/model.tar.gz",
                                           {"val_accuracy": accuracy, "val_loss": 0.25},
                                           hyperparameters or {"lr": "0.001", "epochs": "3"}, "ab" * 32, job)


def test_ensure_group_is_idempotent(registry, sagemaker):
    arn = registry.ensure_group(GROUP)
    assert arn == registry.ensure_group(GROUP)
    assert arn.endswith(f":model-package-group/{GROUP}")
    groups = sagemaker.list_model_package_groups()["ModelPackageGroupSummaryList"]
    assert [g["ModelPackageGroupName"] for g in groups] == [GROUP]


def test_register_twice_from_the_same_job_makes_one_version(registry, sagemaker):
    first = _register(registry, "train-1")
    again = _register(registry, "train-1", accuracy=0.1)
    assert again == first
    assert [v.version for v in registry.list_model_versions(GROUP)] == [1]
    assert len(sagemaker.list_model_packages(ModelPackageGroupName=GROUP)["ModelPackageSummaryList"]) == 1


def test_register_records_the_package(registry, sagemaker):
    hyperparameters = {f"param_{i}": "x" * 30 for i in range(12)}  # over 256 characters of JSON
    version = _register(registry, "train-1", hyperparameters=hyperparameters)
    assert (version.group, version.version, version.job_name, version.champion) == (GROUP, 1, "train-1", False)
    assert version.model_artifact == "s3://bucket/proj/dev/models/train-1/output/model.tar.gz"
    assert version.metrics == {"val_accuracy": 0.9, "val_loss": 0.25}
    assert version.hyperparameters == hyperparameters
    assert version.dataset_checksum == "ab" * 32
    assert isinstance(version.created_at, float) and version.created_at > 1.6e9

    arn = sagemaker.list_model_packages(ModelPackageGroupName=GROUP)["ModelPackageSummaryList"][0]["ModelPackageArn"]
    described = sagemaker.describe_model_package(ModelPackageName=arn)
    assert described["ModelApprovalStatus"] == "PendingManualApproval"
    spec = described["InferenceSpecification"]
    assert spec["Containers"] == [{"Image": IMAGE, "ModelDataUrl": version.model_artifact}]
    assert spec["SupportedContentTypes"] == ["image/jpeg", "image/png", "application/x-image", "application/json"]
    assert spec["SupportedResponseMIMETypes"] == ["application/json"]
    properties = described["CustomerMetadataProperties"]
    assert properties["job_name"] == "train-1"
    assert "hyperparameters.2" in properties  # split in 256-character values
    for value in properties.values():
        assert METADATA_VALUE.match(value), value


def test_two_jobs_make_versions_1_and_2_in_order(registry):
    one = _register(registry, "train-1")
    two = _register(registry, "train-2", accuracy=0.95)
    three = _register(registry, "train-3", accuracy=0.5)
    assert (one.version, two.version, three.version) == (1, 2, 3)
    listed = registry.list_model_versions(GROUP)
    assert [(v.version, v.job_name) for v in listed] == [(1, "train-1"), (2, "train-2"), (3, "train-3")]
    assert not any(v.champion for v in listed)
    assert listed[1].metrics["val_accuracy"] == 0.95


def test_promote_makes_one_champion_and_rejects_the_previous(registry, sagemaker):
    _register(registry, "train-1")
    _register(registry, "train-2")
    assert registry.promote_model_version(GROUP, 1).champion
    promoted = registry.promote_model_version(GROUP, 2)
    assert (promoted.version, promoted.champion, promoted.job_name) == (2, True, "train-2")

    listed = registry.list_model_versions(GROUP)
    assert [(v.version, v.champion) for v in listed] == [(1, False), (2, True)]
    # Metadata survives the status changes.
    assert [v.job_name for v in listed] == ["train-1", "train-2"]
    assert listed[0].metrics == {"val_accuracy": 0.9, "val_loss": 0.25}

    statuses = {}
    for summary in sagemaker.list_model_packages(ModelPackageGroupName=GROUP)["ModelPackageSummaryList"]:
        described = sagemaker.describe_model_package(ModelPackageName=summary["ModelPackageArn"])
        statuses[described["ModelPackageVersion"]] = (described["ModelApprovalStatus"],
                                                      described.get("ApprovalDescription"))
    assert statuses[1] == ("Rejected", "superseded by version 2")
    assert statuses[2][0] == "Approved"


def test_promote_back_is_a_rollback(registry):
    _register(registry, "train-1")
    _register(registry, "train-2")
    registry.promote_model_version(GROUP, 2)
    registry.promote_model_version(GROUP, 1)
    assert [(v.version, v.champion) for v in registry.list_model_versions(GROUP)] == [(1, True), (2, False)]
    # Promoting the champion again changes nothing.
    assert registry.promote_model_version(GROUP, 1).champion
    assert [(v.version, v.champion) for v in registry.list_model_versions(GROUP)] == [(1, True), (2, False)]


def test_promote_unknown_version(registry):
    _register(registry, "train-1")
    with pytest.raises(NotFoundError, match="has no version 7"):
        registry.promote_model_version(GROUP, 7)


def test_list_of_an_unknown_group_is_empty(registry):
    assert registry.list_model_versions("no-such-group") == []
