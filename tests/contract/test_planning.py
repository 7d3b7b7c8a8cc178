"""Planning promises, the same on both backends: a plan only reads, and a pipeline that does not
exist yet is all to be created."""
from core.demo import demo_config


def test_a_plan_of_a_new_pipeline_creates_it_and_makes_nothing(world, dataset):
    backend = world.backend
    config = demo_config(str(dataset), stage="plan")
    config.backend = backend.name

    plan = backend.planning.plan(config)

    actions = {c.kind: c.action for c in plan.changes}
    assert actions["dataset"] == actions["tuning job"] == actions["model version"] == actions["endpoint"] == "create"
    dataset_uri = next(c.name for c in plan.changes if c.kind == "dataset")
    assert dataset_uri.startswith(config.names.prefix_uri(backend.storage.default_bucket()) + "datasets/")
    assert plan.failed == [] and all(line.amount is not None for line in plan.costs)
    # Nothing was made: the dataset is not staged, the endpoint does not exist, nothing is registered.
    assert backend.storage.list_objects(dataset_uri) == []
    assert backend.hosting.describe_endpoint(config.names.endpoint) is None
    assert backend.registry.list_model_versions(config.names.model_group) == []
