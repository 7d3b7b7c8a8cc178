"""The example configurations a new user starts from are valid, and the aws one is the seed's."""
from pathlib import Path

from core.config_io import load_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_local_example_is_valid():
    config = load_config(EXAMPLES / "pipeline.local.yaml")
    assert config.backend == "local" and config.training.mode == "tuning"


def test_aws_example_carries_the_seeds_choices():
    config = load_config(EXAMPLES / "pipeline.aws.yaml")
    assert config.backend == "aws"
    assert (config.training.mode, config.training.instance_type) == ("tuning", "ml.m5.xlarge")
    a = config.autoscaling
    assert (a.min_capacity, a.max_capacity, a.target_invocations_per_instance) == (1, 100, 10)
    assert (a.scale_in_cooldown_seconds, a.scale_out_cooldown_seconds) == (100, 100)
    assert (config.function.reserved_concurrency, config.function.provisioned_concurrency) == (100, 5)
