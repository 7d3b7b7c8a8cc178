"""From a load test to the numbers the seed guessed: what one instance sustains at a latency
objective, the autoscaling target and maximum capacity for a stated peak, and the Lambda
provisioned concurrency that peak needs.

- Sustainable rate: the highest rate per instance a load step achieved with its p95 latency within
  the objective and (almost) no errors or throttles.
- Target: SageMaker's guidance for SageMakerVariantInvocationsPerInstance, (MAX_RPS x SAFETY_FACTOR)
  x 60, starting from a safety factor of 0.5 ("Load testing your auto scaling configuration").
- Maximum capacity: enough instances for the peak at the target, ceil(peak per minute / target).
- Provisioned concurrency: by Little's law the executions in flight average L = arrival rate x mean
  time in the system (the function's mean latency); with Poisson arrivals (and any latency
  distribution) their number N is Poisson(L), so c = the smallest number with P(N <= c) >= 95 %
  environments hold every execution in flight 95 % of the time (at least 1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from core.config import PipelineConfig
from core.config_io import apply_overrides, validate_config
from core.costs import HOURS_PER_MONTH, function_cost
from core.pricing import PriceTable

SAFETY_FACTOR = 0.5  # SageMaker's advice to start from
CONCURRENCY_COVERAGE = 0.95  # the share of the time provisioned concurrency holds every execution in flight
MAX_ERROR_RATIO = 0.01  # a step with more failed or throttled requests than this is past what the instance sustains


@dataclass(frozen=True)
class LoadStep:
    """What one step of a load test measured."""

    offered_rps: float  # the rate requests were sent at
    requests: int  # scheduled in the step: sent, or dropped
    succeeded: int
    errors: int  # failed answers (5xx, 4xx other than throttling, timeouts)
    throttled: int  # 429s
    achieved_rps: float  # successful answers per second
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    instances: float  # the endpoint's mean instance count during the step
    dropped: int = 0  # not sent: the client's bound on requests in flight was reached (the answers lagged)
    mean_ms: float | None = None  # the mean latency of the successful answers

    @property
    def failed_ratio(self) -> float:
        return (self.errors + self.throttled + self.dropped) / self.requests if self.requests else 1.0

    def within(self, p95_objective_ms: float) -> bool:
        return (self.p95_ms is not None and self.p95_ms <= p95_objective_ms
                and self.failed_ratio <= MAX_ERROR_RATIO and self.succeeded > 0)


def sustainable_rps_per_instance(steps: list[LoadStep], p95_objective_ms: float) -> float | None:
    """The most successful requests per second per instance any step achieved within the objective;
    None when no step met it (the objective is out of reach even at the lowest rate tried)."""
    if not p95_objective_ms > 0:
        raise ValueError(f"p95_objective_ms must be > 0, got {p95_objective_ms!r}")
    good = [s.achieved_rps / max(s.instances, 1.0) for s in steps if s.within(p95_objective_ms)]
    return max(good) if good else None


@dataclass(frozen=True)
class CapacityPlan:
    p95_objective_ms: float
    sustainable_per_instance_per_minute: float
    target_invocations_per_instance: float
    peak_rps: float | None
    max_capacity: int | None
    provisioned_concurrency: int | None
    reserved_concurrency: int | None  # raised only where provisioned concurrency would exceed it
    executions_in_flight: float | None = None  # L = peak rps x the function's mean latency, on average

    def overrides(self) -> list[str]:
        """The plan as `--set` overrides of the pipeline's configuration."""
        values = [f"autoscaling.target_invocations_per_instance={self.target_invocations_per_instance:g}"]
        if self.max_capacity is not None:
            values.append(f"autoscaling.max_capacity={self.max_capacity}")
        if self.provisioned_concurrency is not None:
            values.append(f"function.provisioned_concurrency={self.provisioned_concurrency}")
        if self.reserved_concurrency is not None:
            values.append(f"function.reserved_concurrency={self.reserved_concurrency}")
        return values


def poisson_quantile(mean: float, coverage: float = CONCURRENCY_COVERAGE) -> int:
    """The smallest c with P(N <= c) >= coverage for N ~ Poisson(mean)."""
    if not (mean >= 0 and math.isfinite(mean)):
        raise ValueError(f"mean must be a finite number >= 0, got {mean!r}")
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must be in (0, 1), got {coverage!r}")
    c = max(0, math.floor(mean - 12 * math.sqrt(mean)))  # below it lies less than 1e-30 of the probability
    term = math.exp(c * math.log(mean) - mean - math.lgamma(c + 1)) if mean else 1.0  # P(N = c)
    total = term
    while total < coverage:
        c += 1
        term *= mean / c
        total += term
    return c


def recommend(steps: list[LoadStep], p95_objective_ms: float, *, peak_rps: float | None = None,
              function_mean_ms: float | None = None, min_capacity: int = 1,
              reserved_concurrency: int | None = None, safety_factor: float = SAFETY_FACTOR) -> CapacityPlan | None:
    """The settings the load test supports; None when no step met the latency objective. Provisioned
    concurrency needs the function's mean latency (a test of the function) as well as the peak."""
    if not 0 < safety_factor <= 1:
        raise ValueError(f"safety_factor must be in (0, 1], got {safety_factor!r}")
    if peak_rps is not None and not peak_rps > 0:
        raise ValueError(f"peak_rps must be > 0, got {peak_rps!r}")
    sustainable = sustainable_rps_per_instance(steps, p95_objective_ms)
    if sustainable is None:
        return None
    target = round(sustainable * safety_factor * 60, 1)
    max_capacity = provisioned = reserved = in_flight = None
    if peak_rps is not None:
        max_capacity = instances_for(peak_rps, target, min_capacity)
        if function_mean_ms is not None:
            in_flight = peak_rps * function_mean_ms / 1000
            provisioned = max(1, poisson_quantile(in_flight))
            if reserved_concurrency is not None and provisioned > reserved_concurrency:
                reserved = provisioned
    return CapacityPlan(p95_objective_ms, round(sustainable * 60, 1), target, peak_rps, max_capacity, provisioned,
                        reserved, in_flight)


def instances_for(peak_rps: float, target: float, min_capacity: int = 1) -> int:
    """Instances that keep `peak_rps` at `target` invocations per instance a minute (at least min_capacity)."""
    return max(min_capacity, math.ceil(peak_rps * 60 / target - 1e-9))


DEFAULT_REGION = "us-east-1"  # what the costs are priced in when the configuration names no region


@dataclass(frozen=True)
class ChoiceCost:
    """One recommended setting next to the configured one, with what each costs on AWS per month."""

    setting: str
    configured: str
    recommended: str
    basis: str  # what the cost is of
    configured_monthly: float | None  # None: no cost of its own, or a price the table lacks
    recommended_monthly: float | None


def choice_costs(config: PipelineConfig, plan: CapacityPlan, prices: PriceTable,
                 region: str | None = None) -> list[ChoiceCost]:
    """The plan's settings against the configuration's, priced on AWS (hosting.instance_type in `region`,
    else the configuration's aws.region, else us-east-1): the local backend costs nothing, and this is
    what the choice would cost there. ValueError when the plan is not a valid configuration."""
    region = region or config.aws.region or DEFAULT_REGION
    recommended = validate_config(apply_overrides(config.model_dump(mode="json"), plan.overrides()))
    hour = prices.hosting_hour(region, config.hosting.instance_type)
    instance_month = None if hour is None else hour * HOURS_PER_MONTH
    per = lambda count: None if instance_month is None else count * instance_month  # noqa: E731
    rows = []
    now, then = config.autoscaling.target_invocations_per_instance, plan.target_invocations_per_instance
    if plan.peak_rps is not None:
        low = config.autoscaling.min_capacity
        wanted_now, wanted_then = instances_for(plan.peak_rps, now, low), instances_for(plan.peak_rps, then, low)
        # Autoscaling never goes past max_capacity: that is all the peak gets.
        ceiling_now, ceiling_then = config.autoscaling.max_capacity, recommended.autoscaling.max_capacity
        got_now, got_then = min(wanted_now, ceiling_now), min(wanted_then, ceiling_then)
        basis = f"{got_now} -> {got_then} instances for {plan.peak_rps:g} rps, all month"
        for wanted, ceiling, target, which in ((wanted_now, ceiling_now, now, "configured"),
                                               (wanted_then, ceiling_then, then, "recommended")):
            if wanted > ceiling:
                basis += (f"; not met at the {which} settings: the peak needs {wanted} instances at a target of "
                          f"{target:g}, autoscaling.max_capacity is {ceiling} "
                          f"({ceiling * target / 60:.3g} rps at most)")
        rows.append(ChoiceCost("autoscaling.target_invocations_per_instance", f"{now:g}", f"{then:g}", basis,
                               per(got_now), per(got_then)))
        rows.append(ChoiceCost("autoscaling.max_capacity", str(config.autoscaling.max_capacity),
                               str(recommended.autoscaling.max_capacity), "the endpoint at max capacity all month",
                               per(config.autoscaling.max_capacity), per(recommended.autoscaling.max_capacity)))
    else:
        rows.append(ChoiceCost("autoscaling.target_invocations_per_instance", f"{now:g}", f"{then:g}",
                               "no cost of its own (give a peak rate to price the instances it needs)", None, None))
    if plan.provisioned_concurrency is not None:
        kept = lambda c: function_cost(c, prices, region, 100.0)[0].amount  # noqa: E731 - the provisioned line
        in_flight = "" if plan.executions_in_flight is None else (
            f": {plan.peak_rps:g} rps x the mean latency is {plan.executions_in_flight:.2f} executions in flight on "
            f"average, and {plan.provisioned_concurrency} hold them all {CONCURRENCY_COVERAGE:.0%} of the time (Poisson)")
        rows.append(ChoiceCost("function.provisioned_concurrency", str(config.function.provisioned_concurrency),
                               str(plan.provisioned_concurrency),
                               f"environments of {config.function.memory_mb} MB kept warm all month{in_flight}",
                               kept(config), kept(recommended)))
    if plan.reserved_concurrency is not None:
        rows.append(ChoiceCost("function.reserved_concurrency", str(config.function.reserved_concurrency),
                               str(plan.reserved_concurrency), "a limit: no cost of its own", None, None))
    return rows
