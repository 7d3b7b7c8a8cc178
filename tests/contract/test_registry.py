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
