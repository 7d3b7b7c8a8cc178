import pytest

from core.config import PipelineConfig
from core.config_io import ConfigError, apply_overrides, load_config

BASE = {"data": {"source": "./images"}}


def messages(overrides, base=BASE):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=overrides, base=base)
    return str(info.value)


def test_defaults_are_the_seed_project():
    config = load_config(base=BASE)
    assert config.backend == "local"
    assert config.training.architecture == "resnet50" and config.training.freeze_backbone
    a = config.autoscaling
    assert (a.min_capacity, a.max_capacity, a.target_invocations_per_instance) == (1, 100, 10.0)
    assert (a.scale_in_cooldown_seconds, a.scale_out_cooldown_seconds) == (100, 100)
    assert (config.function.reserved_concurrency, config.function.provisioned_concurrency) == (100, 5)


def test_max_capacity_below_min_names_the_field():
    text = messages(["autoscaling.min_capacity=5", "autoscaling.max_capacity=2", "hosting.initial_instance_count=5"])
    assert "autoscaling.max_capacity must be >= min_capacity (5)" in text


def test_provisioned_above_reserved_names_the_field():
    text = messages(["function.reserved_concurrency=3", "function.provisioned_concurrency=4"])
    assert "function.provisioned_concurrency must be <= reserved_concurrency (3)" in text


def test_parallel_jobs_above_max_jobs():
    assert "training.tuning.max_parallel_jobs must be <= max_jobs (2)" in messages(
        ["training.tuning.max_jobs=2", "training.tuning.max_parallel_jobs=3"])


def test_bounds_and_enums_name_the_field():
    text = messages(["training.epochs=0", "training.tuning.strategy=Hyperband", "backend=gcp"])
    assert "training.epochs Input should be greater than or equal to 1" in text
    assert "training.tuning.strategy" in text and "'Bayesian'" in text
    assert "backend" in text


def test_unknown_setting_is_refused_not_ignored():
    assert "training.epoch is not a known setting" in messages(["training.epoch=3"])


def test_https_source_needs_sha256():
    assert "sha256 is required" in messages([], base={"data": {"source": "https://example.com/d.zip"}})
    ok = load_config(base={"data": {"source": "https://example.com/d.zip", "sha256": "a" * 64}})
    assert ok.data.sha256 == "a" * 64


def test_unsupported_source_scheme():
    assert "only local folders, s3:// prefixes and https:// zip URLs" in messages(
        [], base={"data": {"source": "ftp://host/x"}})
    assert "valid bucket name" in messages([], base={"data": {"source": "s3://Bad_Bucket/x"}})


def test_objective_direction_must_fit_metric():
    text = messages(["training.tuning.objective.metric=valid_accuracy"])
    assert "training.tuning.objective type must be Maximize for valid_accuracy" in text


def test_parameter_ranges_are_checked():
    text = messages(["training.tuning.parameter_ranges.continuous="
                     "[{name: learning-rate, min_value: 0.1, max_value: 0.01}]"])
    assert "max_value (0.01) must be > min_value (0.1)" in text
    text = messages(["training.tuning.parameter_ranges.categorical=[{name: momentum, values: ['0.9']}]"])
    assert "unknown hyperparameter 'momentum'" in text
    text = messages(["training.tuning.parameter_ranges.continuous="
                     "[{name: learning-rate, min_value: 0, max_value: 0.1, scaling_type: Logarithmic}]"])
    assert "Logarithmic scaling needs min_value > 0" in text


def test_grid_refuses_continuous_ranges():
    assert "Grid strategy takes only integer and categorical ranges" in messages(["training.tuning.strategy=Grid"])


def test_ranges_in_sagemaker_form():
    config = load_config(base=BASE, overrides=[
        "training.tuning.parameter_ranges.integer=[{name: epochs, min_value: 1, max_value: 4}]",
        "training.tuning.parameter_ranges.continuous="
        "[{name: learning-rate, min_value: 0.001, max_value: 0.1, scaling_type: Logarithmic}]",
        "training.tuning.parameter_ranges.categorical=[{name: batch-size, values: ['32', '64', '128']}]"])
    ranges = config.training.tuning.parameter_ranges.to_sagemaker()
    assert ranges["ContinuousParameterRanges"] == [
        {"Name": "learning-rate", "MinValue": "0.001", "MaxValue": "0.1", "ScalingType": "Logarithmic"}]
    assert ranges["IntegerParameterRanges"] == [{"Name": "epochs", "MinValue": "1", "MaxValue": "4", "ScalingType": "Auto"}]
    assert ranges["CategoricalParameterRanges"] == [{"Name": "batch-size", "Values": ["32", "64", "128"]}]


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text("data:\n  source: s3://my-bucket/dogs\ntraining:\n  mode: instance\n  epochs: 7\n")
    config = load_config(path, overrides=["training.epochs=9", "stage=prod"])
    assert config.data.source == "s3://my-bucket/dogs"
    assert (config.training.mode, config.training.epochs, config.stage) == ("instance", 9, "prod")


def test_yaml_file_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(bad)


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="expected section.field=value"):
        apply_overrides({}, ["training.epochs"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"stage": "dev"}, ["stage.name=x"])


def test_schema_is_a_form_with_descriptions():
    schema = PipelineConfig.model_json_schema()
    autoscaling = schema["$defs"]["AutoscalingConfig"]["properties"]
    assert autoscaling["max_capacity"]["description"]
    assert autoscaling["min_capacity"]["minimum"] == 1
    assert schema["$defs"]["TuningConfig"]["properties"]["strategy"]["enum"] == ["Bayesian", "Random", "Grid"]


def test_traffic_shift_sizes_are_what_sagemaker_accepts():
    # TrafficRoutingConfig: CanarySize at most 50 % of the new fleet, LinearStepSize 10-50 %.
    text = messages(["hosting.traffic_shift.canary_percent=51", "hosting.traffic_shift.linear_step_percent=5"])
    assert "hosting.traffic_shift.canary_percent Input should be less than or equal to 50" in text
    assert "hosting.traffic_shift.linear_step_percent Input should be greater than or equal to 10" in text
    assert "linear_step_percent Input should be less than or equal to 50" in messages(
        ["hosting.traffic_shift.linear_step_percent=60"])
    shift = load_config(base=BASE, overrides=["hosting.traffic_shift.type=canary",
                                              "hosting.traffic_shift.canary_percent=50"]).hosting.traffic_shift
    assert shift.canary_percent == 50


def test_a_traffic_shift_that_cannot_end_within_sagemakers_limit_is_refused():
    # Ten linear steps of an hour each, with the new fleet's start and the termination wait, exceed 28800 s.
    text = messages(["hosting.traffic_shift.type=linear", "hosting.traffic_shift.linear_step_percent=10",
                     "hosting.traffic_shift.wait_seconds=3600"])
    assert "hosting.traffic_shift.wait_seconds must be at most 2550 with 10 linear steps" in text
    assert "39300 s needed" in text
    fits = load_config(base=BASE, overrides=["hosting.traffic_shift.type=linear",
                                             "hosting.traffic_shift.linear_step_percent=10",
                                             "hosting.traffic_shift.wait_seconds=2550"])
    assert fits.hosting.traffic_shift.wait_seconds == 2550
    hour_long_canary = load_config(base=BASE, overrides=["hosting.traffic_shift.type=canary",
                                                         "hosting.traffic_shift.wait_seconds=3600"])
    assert hour_long_canary.hosting.traffic_shift.wait_seconds == 3600
