"""The local backend's plan of the demo pipeline: what it makes on this machine, at no cost, and the
checks this machine can fail (disk, cores, the gateway's caps). No gateway is started."""
from collections import namedtuple

import pytest

from backends.local.backend import LocalBackend
from backends.local.gateway.instances import MAX_LOCAL_INSTANCES
from backends.local.gateway.server import running_gateway
from core.datasets import folder_checksum
from core.demo import demo_config

Usage = namedtuple("Usage", "total used free")


@pytest.fixture
def local(tmp_path, tiny_dataset):
    backend = LocalBackend(str(tmp_path / "home"), cpus=2)
    yield backend, demo_config(str(tiny_dataset), local={"home": str(tmp_path / "home"), "cpus": 2})
    backend.close()


def check(plan, name):
    return next(c for c in plan.checks if c.name == name)


def test_the_demo_plan_creates_everything_at_no_cost_and_passes(local):
    backend, config = local
    plan = backend.planning.plan(config)

    assert [(c.kind, c.action) for c in plan.changes] == [
        ("dataset", "create"), ("tuning job", "create"), ("model version", "create"), ("local gateway", "create"),
        ("endpoint", "create"), ("autoscaling", "create"), ("function", "create")]
    assert plan.changes[0].name.startswith("s3://sagemaker-flows/sagemaker-flows/demo/datasets/")
    assert plan.changes[2].name == "sagemaker-flows-demo-models/1"
    assert [c.amount for c in plan.costs] == [0.0]
    assert {c.name: c.status for c in plan.checks} == {
        "data": "pass", "function concurrency": "pass", "free disk": "pass", "CPU cores": "pass",
        "local instances": "pass"}
    assert running_gateway(backend.state) is None  # planning never starts the gateway


def test_a_rollback_plans_serving_the_version_again_even_with_its_data_gone_and_no_disk(local, tmp_path):
    backend, config = local
    version = backend.registry.register_model_version(config.names.model_group, str(tmp_path / "model.tar.gz"),
                                                      {"test_accuracy": 0.9}, {}, "sha256:0", "t1")
    gone = demo_config(str(tmp_path / "deleted"), local={"home": str(backend.state.home), "cpus": 2})
    backend.planning.disk_usage = lambda path: Usage(10**9, 10**9 - 10**6, 10**6)  # 1 MB free

    plan = backend.planning.plan(gone, version)

    assert [(c.kind, c.name, c.action) for c in plan.changes][:1] == [
        ("model version", "sagemaker-flows-demo-models/1", "update")]
    assert [c.kind for c in plan.changes[1:]] == ["local gateway", "endpoint", "autoscaling", "function"]
    assert {c.name: c.status for c in plan.checks} == {"function concurrency": "pass", "local instances": "pass"}
    assert check(backend.planning.plan(gone), "data").status == "fail"  # a run of it would stop


def test_a_disk_too_small_for_the_dataset_fails(local):
    backend, config = local
    backend.planning.disk_usage = lambda path: Usage(10**9, 10**9 - 10**6, 10**6)  # 1 MB free

    disk = check(backend.planning.plan(config), "free disk")

    assert disk.status == "fail"
    assert disk.message.startswith(f"1 MiB free under {backend.state.home}, the run needs about")
    assert disk.message.endswith("free space there or set local.home to a bigger disk")


def test_a_staged_dataset_is_kept(local, tiny_dataset):
    backend, config = local
    uri = config.names.dataset_uri(backend.storage.default_bucket(), folder_checksum(tiny_dataset))
    backend.storage.upload_folder(str(tiny_dataset), uri)
    plan = backend.planning.plan(config)
    assert (plan.changes[0].name, plan.changes[0].action, plan.changes[0].detail) == (uri, "keep", "staged: 100 files")


def test_more_trials_than_cores_is_a_warning(local):
    backend, config = local
    values = config.model_dump(mode="json")
    values["training"]["tuning"]["max_parallel_jobs"] = 4
    cores = check(backend.planning.plan(type(config).model_validate(values)), "CPU cores")
    assert cores.status == "warn" and cores.message.endswith("lower training.tuning.max_parallel_jobs to 2")


def test_the_gateways_caps(local):
    backend, config = local
    values = config.model_dump(mode="json")
    values["autoscaling"]["max_capacity"] = 100
    values["function"].update(reserved_concurrency=100, provisioned_concurrency=50)
    plan = backend.planning.plan(type(config).model_validate(values))

    instances = check(plan, "local instances")
    assert instances.status == "warn"  # registered at the cap, not refused
    assert f"the local endpoint scales to {MAX_LOCAL_INSTANCES} at most" in instances.message
    assert next(c for c in plan.changes if c.kind == "autoscaling").detail == f"1..{MAX_LOCAL_INSTANCES} instances"
    concurrency = check(plan, "function concurrency")
    assert concurrency.status == "fail" and "over the local backend's cap" in concurrency.message


def test_a_finished_tuning_job_of_the_same_configuration_is_followed_and_its_model_kept(local, tiny_dataset):
    from backends.local.training import request_digest
    from backends.local.tuning import TuningJobResult
    from backends.requests import tuning_request
    from backends.types import TrialSummary

    backend, config = local
    bucket = backend.storage.default_bucket()
    checksum = folder_checksum(tiny_dataset)
    uri = config.names.dataset_uri(bucket, checksum)
    backend.storage.upload_folder(str(tiny_dataset), uri)
    digest = request_digest(tuning_request(config, "", uri, config.names.jobs_uri(bucket), None, checksum))
    best = TrialSummary(1, "demo-tune-x-001-aaaa", "Completed", {"learning-rate": "0.001"}, 0.3, None,
                        {"test_accuracy": 0.9}, f"s3://{bucket}/m.tar.gz", 1.0)
    record = TuningJobResult("demo-tune-x", "Completed", "valid_loss", "Minimize", "Bayesian", trials=[best],
                             best_trial=best.job_name, digest=digest)
    backend.state.tuning.mkdir(parents=True, exist_ok=True)
    (backend.state.tuning / "demo-tune-x.json").write_text(record.to_json())
    backend.registry.register_model_version(config.names.model_group, best.model_artifact, best.final_metrics, {},
                                            "checksum", best.job_name)

    plan = backend.planning.plan(config)

    actions = {c.kind: (c.name, c.action) for c in plan.changes}
    assert actions["tuning job"] == ("demo-tune-x", "keep")
    assert actions["model version"] == ("sagemaker-flows-demo-models/1", "keep")
    # A changed configuration trains again and registers a new version.
    changed = config.model_copy(update={"training": config.training.model_copy(update={"seed": 7})})
    actions = {c.kind: (c.name, c.action) for c in backend.planning.plan(changed).changes}
    assert actions["tuning job"][1] == "create" and actions["model version"] == ("sagemaker-flows-demo-models/2", "create")


def test_the_same_data_uri_with_other_content_is_another_job():
    """An s3:// source trained in place keeps its URI when its objects change: the content's checksum is
    part of what both backends digest to find the job a run would follow."""
    from backends.aws.tuning_conversions import tuning_digest
    from backends.local.training import request_digest
    from backends.requests import training_request, tuning_request

    config = demo_config("/data")
    uri, out = "s3://bucket/images", "s3://bucket/jobs"
    old, new = (tuning_request(config, "", uri, out, None, checksum) for checksum in ("aaaa", "bbbb"))
    assert tuning_digest(old, "code") != tuning_digest(new, "code")
    assert request_digest(old) != request_digest(new)
    assert request_digest(tuning_request(config, "", uri, out, None, "aaaa")) == request_digest(old)
    assert (request_digest(training_request(config, "", uri, out, None, "aaaa"))
            != request_digest(training_request(config, "", uri, out, None, "bbbb")))
