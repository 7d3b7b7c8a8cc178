"""What a pipeline costs on AWS, from its configuration and a price table (core/pricing.py): the
training once, the endpoint per month at its minimum and its maximum capacity, the function's
provisioned concurrency per month, and a million requests through the function. A line whose
price the table lacks has amount None and says "unknown"; nothing is guessed."""
from __future__ import annotations

import math
from dataclasses import dataclass

from core.config import PipelineConfig
from core.pricing import PriceTable

HOURS_PER_MONTH = 730  # AWS's own month in its pricing examples
SECONDS_PER_MONTH = HOURS_PER_MONTH * 3600


@dataclass(frozen=True)
class CostLine:
    item: str
    basis: str  # how the amount is made, e.g. "4 jobs x 1 h x ml.m5.xlarge at $0.23/h"
    amount: float | None  # in the table's currency; None: a price is unknown
    period: str  # "once", "month" or "million requests"

    @property
    def shown(self) -> str:
        return "unknown" if self.amount is None else f"${self.amount:,.2f}"


def _dollars(price: float | None) -> str:
    return "unknown price" if price is None else f"${price:g}"


def training_cost(config: PipelineConfig, prices: PriceTable, region: str,
                  expected_hours_per_job: float) -> list[CostLine]:
    """Expected (jobs x expected hours) and at most (jobs x max runtime), in instance-hours x price."""
    training = config.training
    if training.mode == "tuning":
        jobs, instance_type, where = training.tuning.max_jobs, training.instance_type, "SageMaker training"
    else:
        jobs, instance_type, where = 1, training.ec2_instance_type, "EC2"
    price = prices.training_hour(region, instance_type)
    cap_hours = training.max_runtime_seconds / 3600
    lines = []
    for label, hours in (("training (expected)", expected_hours_per_job), ("training (at most)", cap_hours)):
        amount = None if price is None else jobs * hours * price
        lines.append(CostLine(label, f"{jobs} job(s) x {hours:g} h x {instance_type} ({where}) at "
                              f"{_dollars(price)}/h", amount, "once"))
    return lines


def endpoint_cost(config: PipelineConfig, prices: PriceTable, region: str) -> list[CostLine]:
    """The endpoint running all month at its minimum and at its maximum capacity."""
    instance_type = config.hosting.instance_type
    price = prices.hosting_hour(region, instance_type)
    scaling = config.autoscaling
    counts = ((("min", scaling.min_capacity), ("max", scaling.max_capacity)) if scaling.enabled
              else (("fixed", config.hosting.initial_instance_count),))
    return [CostLine(f"endpoint at {label} capacity",
                     f"{count} x {instance_type} x {HOURS_PER_MONTH} h at {_dollars(price)}/h",
                     None if price is None else count * HOURS_PER_MONTH * price, "month")
            for label, count in counts]


def function_cost(config: PipelineConfig, prices: PriceTable, region: str,
                  request_duration_ms: float) -> list[CostLine]:
    """Provisioned concurrency kept all month, and a million requests of `request_duration_ms` each
    (on provisioned environments while they suffice, which is the point of having them)."""
    function = config.function
    gb = function.memory_mb / 1024
    lam = prices.lambda_prices(region)
    provisioned = function.provisioned_concurrency
    kept = None if lam is None else provisioned * gb * SECONDS_PER_MONTH * lam.provisioned_gb_second
    duration_price = None if lam is None else (
        lam.provisioned_duration_gb_second if provisioned else lam.duration_gb_second)
    per_million = None if lam is None else (
        lam.requests_per_million + 1_000_000 * (request_duration_ms / 1000) * gb * duration_price)
    return [
        CostLine("function provisioned concurrency",
                 f"{provisioned} x {function.memory_mb} MB x {HOURS_PER_MONTH} h", kept, "month"),
        CostLine("function requests",
                 f"1M requests x {request_duration_ms:g} ms x {function.memory_mb} MB (plus the endpoint's instances above)",
                 per_million, "million requests"),
    ]


def estimate(config: PipelineConfig, prices: PriceTable, region: str, *, expected_hours_per_job: float = 1.0,
             request_duration_ms: float = 100.0) -> list[CostLine]:
    """Every cost line of one run of the pipeline and of keeping what it deploys."""
    if not (expected_hours_per_job > 0 and math.isfinite(expected_hours_per_job)):
        raise ValueError(f"expected_hours_per_job must be > 0, got {expected_hours_per_job!r}")
    if not (request_duration_ms > 0 and math.isfinite(request_duration_ms)):
        raise ValueError(f"request_duration_ms must be > 0, got {request_duration_ms!r}")
    return [*training_cost(config, prices, region, expected_hours_per_job),
            *endpoint_cost(config, prices, region),
            *function_cost(config, prices, region, request_duration_ms)]


def monthly_total(lines: list[CostLine]) -> float | None:
    """The monthly lines at minimum capacity (what a quiet month costs); None when any is unknown."""
    monthly = [line for line in lines if line.period == "month" and "at max" not in line.item]
    if any(line.amount is None for line in monthly):
        return None
    return sum(line.amount for line in monthly)
