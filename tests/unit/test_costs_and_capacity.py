"""The price table, the cost arithmetic and the capacity planner: plain functions, no AWS."""
import json

import pytest

from core.capacity import LoadStep, choice_costs, poisson_quantile, recommend, sustainable_rps_per_instance
from core.config import PipelineConfig
from core.costs import HOURS_PER_MONTH, estimate, monthly_total
from core.pricing import load_prices

SEED = PipelineConfig(
    backend="aws", data={"source": "s3://my-bucket/dogImages"},
    training={"mode": "tuning", "instance_type": "ml.m5.xlarge", "tuning": {"max_jobs": 4, "max_parallel_jobs": 2}},
    hosting={"instance_type": "ml.m5.large"},
    autoscaling={"min_capacity": 1, "max_capacity": 100, "target_invocations_per_instance": 10},
    function={"memory_mb": 512, "reserved_concurrency": 100, "provisioned_concurrency": 5})


def _line(lines, item):
    return next(line for line in lines if line.item == item)


def test_shipped_table_is_dated_and_knows_the_seed_instance_types():
    prices = load_prices()
    assert prices.as_of.startswith("20")
    assert prices.training_hour("us-east-1", "ml.m5.xlarge") == 0.23
    assert prices.hosting_hour("us-east-1", "ml.m5.large") == 0.115
    assert prices.training_hour("us-east-1", "m5.xlarge") == 0.192  # EC2: no ml. prefix
    assert prices.hosting_hour("ap-south-2", "ml.m5.large") is None
    assert prices.hosting_hour("us-east-1", "ml.x9.huge") is None


def test_seed_costs():
    lines = estimate(SEED, load_prices(), "us-east-1", expected_hours_per_job=0.5, request_duration_ms=200)
    assert _line(lines, "training (expected)").amount == pytest.approx(4 * 0.5 * 0.23)
    assert _line(lines, "training (at most)").amount == pytest.approx(4 * 24 * 0.23)  # 86400 s max runtime
    assert _line(lines, "endpoint at min capacity").amount == pytest.approx(HOURS_PER_MONTH * 0.115)
    assert _line(lines, "endpoint at max capacity").amount == pytest.approx(100 * HOURS_PER_MONTH * 0.115)
    # 5 environments x 0.5 GB x 730 h x 3600 s x $0.0000041667
    assert _line(lines, "function provisioned concurrency").amount == pytest.approx(5 * 0.5 * 2_628_000 * 0.0000041667)
    assert _line(lines, "function requests").amount == pytest.approx(0.20 + 1e6 * 0.2 * 0.5 * 0.0000097222)
    assert monthly_total(lines) == pytest.approx(HOURS_PER_MONTH * 0.115 + 5 * 0.5 * 2_628_000 * 0.0000041667)


def test_instance_mode_prices_the_ec2_instance():
    config = SEED.model_copy(update={"training": SEED.training.model_copy(update={"mode": "instance"})})
    line = _line(estimate(config, load_prices(), "us-east-1"), "training (expected)")
    assert line.amount == pytest.approx(0.192) and "m5.xlarge (EC2)" in line.basis


def test_unknown_prices_say_unknown(tmp_path):
    lines = estimate(SEED, load_prices(), "ap-south-2")
    assert all(line.amount is None and line.shown == "unknown" for line in lines)
    assert monthly_total(lines) is None


def test_a_price_file_replaces_the_table_and_bad_ones_are_refused(tmp_path):
    table = {"as_of": "2026-11-30", "regions": {"eu-west-1": {"sagemaker_hosting": {"ml.m5.large": 0.13}}}}
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(table))
    prices = load_prices(path)
    assert prices.hosting_hour("eu-west-1", "ml.m5.large") == 0.13
    assert prices.hosting_hour("us-east-1", "ml.m5.large") is None
    path.write_text(json.dumps({"regions": {}}))
    with pytest.raises(ValueError, match="as_of"):
        load_prices(path)
    with pytest.raises(ValueError, match="does not exist"):
        load_prices(tmp_path / "missing.json")


def _step(rate, p95, instances=1.0, errors=0, throttled=0, requests=100):
    succeeded = requests - errors - throttled
    return LoadStep(rate, requests, succeeded, errors, throttled, achieved_rps=rate * succeeded / requests,
                    p50_ms=p95 / 2, p95_ms=p95, p99_ms=p95 * 1.2, instances=instances)


def test_sustainable_rate_is_the_best_step_within_the_objective():
    steps = [_step(2, 120), _step(4, 300), _step(6, 900), _step(8, 2500, errors=20)]
    assert sustainable_rps_per_instance(steps, 500) == 4
    assert sustainable_rps_per_instance(steps, 1000) == 6
    assert sustainable_rps_per_instance(steps, 100) is None
    # Per instance: a step served by two instances counts half.
    assert sustainable_rps_per_instance([_step(10, 200, instances=2)], 500) == 5
    # Too many throttles disqualify a step however fast it was.
    assert sustainable_rps_per_instance([_step(3, 100, throttled=5)], 500) is None


def test_recommendation_follows_sagemakers_formula_and_littles_law():
    plan = recommend([_step(2, 120), _step(4, 300), _step(6, 900)], 500, peak_rps=50, function_mean_ms=350,
                     reserved_concurrency=10)
    assert plan.sustainable_per_instance_per_minute == 240
    assert plan.target_invocations_per_instance == 120  # 4 rps x 0.5 x 60
    assert plan.max_capacity == 25  # 50 rps x 60 / 120
    # 50 rps x 0.35 s = 17.5 in flight on average (Little); P(Poisson(17.5) <= 24) = 0.947, <= 25: 0.966.
    assert plan.executions_in_flight == pytest.approx(17.5) and plan.provisioned_concurrency == 25
    assert plan.reserved_concurrency == 25  # raised: provisioned may not exceed reserved
    assert plan.overrides() == ["autoscaling.target_invocations_per_instance=120", "autoscaling.max_capacity=25",
                                "function.provisioned_concurrency=25", "function.reserved_concurrency=25"]
    # Where rate x latency is small, the quantile is well above it: 1 rps x 500 ms mean is 0.5 in flight,
    # and P(N <= 1) = 0.910, P(N <= 2) = 0.986.
    assert recommend([_step(2, 120)], 500, peak_rps=1, function_mean_ms=500).provisioned_concurrency == 2
    # Far below one in flight it keeps one environment warm.
    assert recommend([_step(2, 120)], 500, peak_rps=0.1, function_mean_ms=100).provisioned_concurrency == 1
    assert recommend([_step(2, 900)], 500) is None
    only_target = recommend([_step(2, 100)], 500)
    assert only_target.overrides() == ["autoscaling.target_invocations_per_instance=60"]


@pytest.mark.parametrize("mean, c", [(0, 0), (0.05, 0), (0.06, 1), (0.5, 2), (1, 3), (1.75, 4), (12, 18), (17.5, 25),
                                     (100, 117), (1e6, 1_001_645)])
def test_poisson_quantile_is_the_smallest_count_covering_95_percent(mean, c):
    # P(N <= c) >= 0.95 > P(N <= c - 1) for N ~ Poisson(mean): e.g. e^-0.05 = 0.951, e^-0.06 = 0.942.
    assert poisson_quantile(mean) == c


def test_poisson_quantile_refuses_what_is_not_a_mean():
    for mean in (-1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="mean"):
            poisson_quantile(mean)


def test_a_peak_past_max_capacity_is_priced_at_max_capacity_and_said_not_met():
    # The seed: target 10, at most 100 instances. 50 rps is 3000 a minute: 300 instances at a target of 10,
    # but autoscaling stops at 100, and 100 instances take 100 x 10 / 60 = 16.7 rps.
    plan = recommend([_step(10, 200)], 500, peak_rps=50)  # target 300 (10 rps x 0.5 x 60): 10 instances
    row = choice_costs(SEED, plan, load_prices())[0]
    month = 0.115 * HOURS_PER_MONTH
    assert (row.setting, row.configured, row.recommended) == (
        "autoscaling.target_invocations_per_instance", "10", "300")
    assert row.configured_monthly == pytest.approx(100 * month) and row.recommended_monthly == pytest.approx(10 * month)
    assert row.basis == ("100 -> 10 instances for 50 rps, all month; not met at the configured settings: the peak "
                         "needs 300 instances at a target of 10, autoscaling.max_capacity is 100 (16.7 rps at most)")
    within = choice_costs(SEED, recommend([_step(10, 200)], 500, peak_rps=10), load_prices())[0]
    assert within.basis == "60 -> 2 instances for 10 rps, all month"
    assert within.configured_monthly == pytest.approx(60 * month)
