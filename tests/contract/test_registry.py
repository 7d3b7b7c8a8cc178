"""Registry promises, the same on both backends."""
import pytest

from backends.errors import NotFoundError


def _register(registry, group: str, job: str, accuracy: float = 0.5):
    return registry.register_model_version(group, f"s3://bucket/{job}/model.tar.gz", {"test_accuracy": accuracy},
                                           {"epochs": "1", "learning-rate": "0.001"}, "cd" * 32, job)


def test_registering_the_same_job_again_is_the_same_version(world):
    registry, group = world.backend.registry, world.unique("models")
    first = _register(registry, group, "job-a")
    again = _register(registry, group, "job-a", accuracy=0.1)
    assert again.version == first.version == 1 and again.metrics == {"test_accuracy": 0.5}
    assert [v.version for v in registry.list_model_versions(group)] == [1]
    assert first.hyperparameters == {"epochs": "1", "learning-rate": "0.001"} and first.dataset_checksum == "cd" * 32


def test_one_champion_at_a_time(world):
    registry, group = world.backend.registry, world.unique("models")
    _register(registry, group, "job-a")
    _register(registry, group, "job-b")
    assert [v.champion for v in registry.list_model_versions(group)] == [False, False]
    assert registry.promote_model_version(group, 1).champion
    assert registry.promote_model_version(group, 2).champion
    assert [(v.version, v.champion) for v in registry.list_model_versions(group)] == [(1, False), (2, True)]
    assert registry.promote_model_version(group, 1).champion  # back again: a rollback
    assert [(v.version, v.champion) for v in registry.list_model_versions(group)] == [(1, True), (2, False)]


def test_unknown_groups_and_versions(world):
    registry, group = world.backend.registry, world.unique("models")
    assert registry.list_model_versions(group) == []
    _register(registry, group, "job-a")
    with pytest.raises(NotFoundError, match="has no version 7"):
        registry.promote_model_version(group, 7)


def test_statuses_say_what_happened_and_why(world):
    registry, group = world.backend.registry, world.unique("models")
    first = _register(registry, group, "job-a")
    assert (first.status, first.status_reason) == ("PendingManualApproval", "")
    _register(registry, group, "job-b")
    registry.promote_model_version(group, 1, "deployed by train-and-deploy")
    registry.promote_model_version(group, 2, "beats the champion")
    one, two = registry.list_model_versions(group)
    assert (one.status, one.status_reason) == ("Rejected", "superseded by version 2")
    assert (two.status, two.status_reason, two.champion) == ("Approved", "beats the champion", True)
    assert two.status_changed_at is not None
    rejected = registry.reject_model_version(group, 2, "failed its smoke test")
    assert (rejected.status, rejected.status_reason, rejected.champion) == ("Rejected", "failed its smoke test", False)
    assert [v.champion for v in registry.list_model_versions(group)] == [False, False]
    with pytest.raises(NotFoundError):
        registry.reject_model_version(group, 9, "no such version")


def test_the_dataset_a_version_was_tested_on_is_kept(world):
    registry, group = world.backend.registry, world.unique("models")
    version = registry.register_model_version(group, "s3://bucket/m.tar.gz", {}, {}, "ef" * 32, "job-a",
                                              dataset_uri="s3://bucket/proj/dev/datasets/0123456789abcdef")
    assert version.dataset_uri == "s3://bucket/proj/dev/datasets/0123456789abcdef"
    assert registry.list_model_versions(group)[0].dataset_uri == version.dataset_uri
