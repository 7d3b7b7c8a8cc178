"""A load test's plan and arithmetic (pure): the settings, the open-loop schedule of stepped or ramped
rates, and what the answers add up to: per-second rows, per-step LoadSteps (core.capacity), the
scaling seen in the instance count, and the verdict against a p95 latency objective.

Open loop: every request is due at a time fixed before the test starts, whatever the earlier answers
did: request n when the integral of the rate (steps, or a linear ramp's slices) since the start
reaches n, so a test sends what its rates add up to, however low the rates or short the slices. A request's
latency is counted from when it was due, so time spent waiting for the client counts (no
coordinated omission); one that could not be sent because the client's bound on requests in flight
was reached is `dropped`, not sent late.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.capacity import (DEFAULT_REGION, MAX_ERROR_RATIO, CapacityPlan, ChoiceCost, LoadStep, choice_costs,
                           recommend, sustainable_rps_per_instance)
from core.config import PipelineConfig
from core.costs import HOURS_PER_MONTH
from core.pricing import PriceTable
from core.target_tracking import MAX_TIME_SCALE

OK, ERROR, THROTTLED, DROPPED = "ok", "error", "throttled", "dropped"
INTEGRAL_TOLERANCE = 1e-9  # requests: a rate's integral this close below a whole number has reached it


class LoadTestSettings(BaseModel):
    """What to send, how fast, for how long, and what to judge it by."""

    model_config = ConfigDict(extra="forbid")

    target: Literal["endpoint", "function"] = Field(
        default="endpoint", description="endpoint: raw images through the SageMaker Runtime API; function: "
        "{\"image\": base64} through the Lambda Invoke API (its alias).")
    rates: list[float] = Field(default_factory=lambda: [2.0, 4.0, 8.0], min_length=1, max_length=100,
                               description="Requests per second of each step, in order (0: an idle step).")
    step_seconds: float = Field(default=30, ge=1, le=3600, description="How long each step (or slice of a ramp) lasts.")
    ramp: tuple[float, float] | None = Field(
        default=None, description="Instead of rates: a linear ramp from the first rate to the second.")
    ramp_seconds: float = Field(default=120, ge=1, le=86400, description="How long the ramp lasts.")
    idle_seconds: float = Field(default=0, ge=0, le=86400,
                                description="Quiet after the load, while the last answers come back. Without traffic "
                                "nothing scales in (no datapoints, as on AWS): end on a low rate to watch a scale-in.")
    max_requests: int = Field(default=20000, ge=1, le=1_000_000, description="Sends no more than this many.")
    max_seconds: float = Field(default=900, ge=1, le=86400, description="Stops sending after this many seconds.")
    max_in_flight: int = Field(default=32, ge=1, le=256,
                               description="Requests waiting for an answer at most; one more is dropped.")
    images: str | None = Field(default=None, description="A folder or s3:// prefix of images to send (default: the "
                               "test split of data.source: a local folder's, or 50 images spread over an s3:// "
                               "source's test/).")
    time_scale: float = Field(default=1, ge=1, le=MAX_TIME_SCALE,
                              description="Local backend: the autoscaler runs the policy's minutes and cooldowns "
                              "this many times faster during the test.")
    p95_ms: float = Field(default=500, gt=0, le=600000, description="The latency objective: p95 in milliseconds.")
    peak_rps: float | None = Field(default=None, gt=0, le=1_000_000,
                                   description="The peak request rate to size max_capacity for, and provisioned "
                                   "concurrency when the target is the function.")

    @field_validator("rates")
    @classmethod
    def _rates(cls, rates: list[float]) -> list[float]:
        if any(not (0 <= r <= 10000 and math.isfinite(r)) for r in rates):
            raise ValueError(f"each rate must be within 0..10000 requests per second, got {rates}")
        return rates

    @model_validator(mode="after")
    def _some_load(self) -> "LoadTestSettings":
        if self.ramp is not None:
            if any(not (0 <= r <= 10000 and math.isfinite(r)) for r in self.ramp) or max(self.ramp) <= 0:
                raise ValueError(f"ramp: both rates must be within 0..10000 and one above 0, got {self.ramp}")
        elif max(self.rates) <= 0:
            raise ValueError("rates: at least one step must send requests")
        return self

    def steps(self) -> list[StepPlan]:
        """The steps, one after another from 0 s (each knowing the requests due before it); an idle step
        at the end when idle_seconds > 0."""
        if self.ramp is None:
            plans = [StepPlan(i, i * self.step_seconds, self.step_seconds, rate, rate)
                     for i, rate in enumerate(self.rates)]
        else:
            low, high = self.ramp
            count = max(1, math.ceil(self.ramp_seconds / self.step_seconds - 1e-9))
            edges = [min(self.ramp_seconds, i * self.step_seconds) for i in range(count + 1)]
            at = lambda t: low + (high - low) * t / self.ramp_seconds  # noqa: E731
            plans = [StepPlan(i, a, b - a, at(a), at(b)) for i, (a, b) in enumerate(zip(edges, edges[1:]))]
        if self.idle_seconds > 0:
            end = plans[-1].end
            plans.append(StepPlan(len(plans), end, self.idle_seconds, 0.0, 0.0))
        carried, counted = 0.0, []
        for plan in plans:
            counted.append(replace(plan, due_before=carried))
            carried += plan.due
        return counted

    def schedule(self) -> list[Planned]:
        """Every request's due time, in order, cut at max_requests and max_seconds."""
        due = [p for step in self.steps() for p in step.arrivals() if p.offset <= self.max_seconds]
        return due[:self.max_requests]

    def duration(self) -> float:
        """How long the test runs: its steps, cut at max_seconds."""
        return min(self.steps()[-1].end, self.max_seconds)

    def stop_reason(self) -> str:
        """What ends the sending: the schedule, or the bound that cuts it."""
        steps = self.steps()
        if sum(len(s.arrivals()) for s in steps) > len(self.schedule()) == self.max_requests:
            return f"max_requests ({self.max_requests})"
        if self.max_seconds < steps[-1].end:
            return f"max_seconds ({self.max_seconds:g})"
        return "the schedule's end"


@dataclass(frozen=True)
class StepPlan:
    index: int
    start: float  # seconds from the test's start
    seconds: float
    rate_from: float  # requests per second at the start; equal to rate_to unless ramped
    rate_to: float
    due_before: float = 0.0  # the rate's integral over the steps before this one (requests due, with a fraction)

    @property
    def end(self) -> float:
        return self.start + self.seconds

    @property
    def offered_rps(self) -> float:
        return (self.rate_from + self.rate_to) / 2

    @property
    def due(self) -> float:
        """The rate's integral over the step: the requests it is due, with a fraction."""
        return self.offered_rps * self.seconds

    def arrivals(self) -> list[Planned]:
        """Requests due in the step: request n (counted from the test's start) when the rate's integral
        since the start reaches n, within (start, end]. The fraction a step leaves is carried into the
        next, so 0.5 rps for 3 s is one request (at 2 s), and a ramp sends what it integrates to however
        it is sliced."""
        a, span = self.rate_from, self.seconds
        slope = (self.rate_to - a) / span
        first = math.floor(self.due_before + INTEGRAL_TOLERANCE) + 1
        last = math.floor(self.due_before + self.due + INTEGRAL_TOLERANCE)
        times = []
        for n in range(first, last + 1):
            x = n - self.due_before  # what the integral must reach within the step: a t + slope t^2 / 2 = x
            t = 2 * x / (a + math.sqrt(max(0.0, a * a + 2 * slope * x)))  # the root, without cancellation
            times.append(Planned(self.start + min(t, span), self.index))
        return times


@dataclass(frozen=True)
class Planned:
    offset: float  # when the request is due, seconds from the test's start
    step: int


@dataclass(frozen=True)
class Outcome:
    """One request: due at `offset`; status ok | error | throttled | dropped; latency from when it was due."""

    offset: float
    step: int
    status: str
    latency_ms: float | None = None  # None: dropped
    detail: str = ""  # the error, for errors

    @property
    def finished(self) -> float | None:
        return None if self.latency_ms is None else self.offset + self.latency_ms / 1000


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100), interpolated between the closest ranks; None for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"q must be within 0..100, got {q!r}")
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class SecondRow:
    second: int  # from the test's start
    sent: int  # requests due in this second that were sent
    succeeded: int  # answers that came back in this second ...
    errors: int
    throttled: int
    dropped: int  # requests due in this second that were dropped
    p50_ms: float | None  # ... and the latency of the successful ones
    p95_ms: float | None
    p99_ms: float | None
    instances: int | None  # the endpoint's instance count sampled in this second (None: not known)


def _latencies(outcomes: Iterable[Outcome]) -> list[float]:
    return [o.latency_ms for o in outcomes if o.status == OK]


def instances_at(samples: Sequence[tuple[float, int | None]], second: float) -> int | None:
    """The last instance count sampled before the end of `second` (None before the first sample)."""
    known = [count for t, count in samples if t < second + 1 and count is not None]
    return known[-1] if known else None


def per_second(outcomes: Sequence[Outcome], samples: Sequence[tuple[float, int | None]],
               duration: float) -> list[SecondRow]:
    """One row per second of the test (and of the answers that came after it)."""
    moments = [t for o in outcomes for t in (o.offset, o.finished) if t is not None]
    # Through the last second anything happened in: a request due at the very end has its row.
    seconds = max([1, math.ceil(duration - 1e-9), *(math.floor(t) + 1 for t in moments)])
    due: dict[int, list[Outcome]] = {}
    done: dict[int, list[Outcome]] = {}
    for o in outcomes:
        due.setdefault(math.floor(o.offset), []).append(o)
        if o.finished is not None:
            done.setdefault(math.floor(o.finished), []).append(o)
    known = [(t, c) for t, c in samples if c is not None]
    rows, seen, count = [], 0, None
    for second in range(seconds):
        while seen < len(known) and known[seen][0] < second + 1:
            count, seen = known[seen][1], seen + 1
        sent, answered = due.get(second, []), done.get(second, [])
        latencies = _latencies(answered)
        rows.append(SecondRow(second, sum(o.status != DROPPED for o in sent), len(latencies),
                              sum(o.status == ERROR for o in answered), sum(o.status == THROTTLED for o in answered),
                              sum(o.status == DROPPED for o in sent), percentile(latencies, 50),
                              percentile(latencies, 95), percentile(latencies, 99), count))
    return rows


def summarize_steps(plans: Sequence[StepPlan], outcomes: Sequence[Outcome],
                    samples: Sequence[tuple[float, int | None]], duration: float) -> list[LoadStep]:
    """A LoadStep per step that ran (a step cut short by max_seconds counts for the time it ran)."""
    steps = []
    for plan in plans:
        seconds = min(plan.end, duration) - plan.start
        if seconds <= 0:
            break
        mine = [o for o in outcomes if o.step == plan.index]
        latencies = _latencies(mine)
        counts = [c for t, c in samples if plan.start <= t < plan.start + seconds and c is not None]
        before = instances_at(samples, plan.start - 1)
        instances = sum(counts) / len(counts) if counts else float(before or 1)
        steps.append(LoadStep(
            offered_rps=round(plan.offered_rps, 3), requests=len(mine), succeeded=len(latencies),
            errors=sum(o.status == ERROR for o in mine), throttled=sum(o.status == THROTTLED for o in mine),
            achieved_rps=round(len(latencies) / seconds, 3), p50_ms=percentile(latencies, 50),
            p95_ms=percentile(latencies, 95), p99_ms=percentile(latencies, 99), instances=round(instances, 2),
            dropped=sum(o.status == DROPPED for o in mine),
            mean_ms=sum(latencies) / len(latencies) if latencies else None))
    return steps


@dataclass(frozen=True)
class ScalingEvent:
    second: float  # when the new count was first seen, from the test's start
    from_count: int
    to_count: int
    quiet_seconds: float | None  # for a scale-in: how long after the last answer before it (None: traffic went on)

    @property
    def direction(self) -> str:
        return "out" if self.to_count > self.from_count else "in"


def scaling_events(samples: Sequence[tuple[float, int | None]], outcomes: Sequence[Outcome] = ()) -> list[ScalingEvent]:
    """Each change of the sampled instance count."""
    events, previous = [], None
    finished = sorted(o.finished for o in outcomes if o.finished is not None)
    for t, count in samples:
        if count is None:
            continue
        if previous is not None and count != previous:
            before = [f for f in finished if f <= t]
            quiet = None
            sent = [o for o in outcomes if o.status != DROPPED]
            # Traffic went on: a request out at the time, or one sent after it (a low rate has gaps).
            if count < previous and before and not any(t < (o.finished or math.inf) for o in sent):
                quiet = round(t - before[-1], 1)
            events.append(ScalingEvent(round(t, 1), previous, count, quiet))
        previous = count
    return events


@dataclass(frozen=True)
class Verdict:
    passed: bool  # every step that sent requests met the objective (so the limit was not found)
    sustainable_rps_per_instance: float | None
    summary: str
    findings: list[str]


def verdict(steps: Sequence[LoadStep], p95_objective_ms: float, events: Sequence[ScalingEvent] = ()) -> Verdict:
    """The test judged against p95 <= the objective with at most MAX_ERROR_RATIO failed, step by step."""
    loaded = [(i, s) for i, s in enumerate(steps, 1) if s.requests]
    missed = [(i, s) for i, s in loaded if not s.within(p95_objective_ms)]
    findings = []
    for i, s in missed:
        why = []
        if s.p95_ms is None:
            why.append("no successful answer")
        elif s.p95_ms > p95_objective_ms:
            why.append(f"p95 {s.p95_ms:.0f} ms > {p95_objective_ms:g} ms")
        if s.failed_ratio > MAX_ERROR_RATIO:
            why.append(f"{s.failed_ratio:.1%} failed ({s.errors} errors, {s.throttled} throttled, {s.dropped} dropped)")
        findings.append(f"step {i} ({s.offered_rps:g} rps): " + "; ".join(why))
    for event in events:
        quiet = f", {event.quiet_seconds:g} s after the last answer" if event.quiet_seconds is not None else ""
        findings.append(f"scaled {event.direction} {event.from_count} -> {event.to_count} at {event.second:g} s{quiet}")
    sustainable = sustainable_rps_per_instance(list(steps), p95_objective_ms)
    reach = ("no step met it" if sustainable is None else
             f"{sustainable:.2f} requests/s per instance ({sustainable * 60:.0f}/min) sustained within it")
    if loaded and not missed:
        findings.insert(0, "no step went past the objective: the rate sustained is a lower bound of what an "
                           "instance can take (higher rates would find its limit)")
    if not loaded:
        summary = "nothing was sent"
    elif missed:
        summary = f"{len(missed)} of {len(loaded)} steps missed p95 <= {p95_objective_ms:g} ms; {reach}"
    else:
        summary = f"every step met p95 <= {p95_objective_ms:g} ms with <= {MAX_ERROR_RATIO:.0%} failed; {reach}"
    return Verdict(bool(loaded) and not missed, sustainable, summary, findings)


def function_mean_ms(steps: Sequence[LoadStep], p95_objective_ms: float) -> float | None:
    """The mean latency that Little's law sizes provisioned concurrency with: the highest of the steps
    that met the objective (the latency the function has at the rates it can serve). Counted from the
    client, it includes the network: a little more than the function's own duration."""
    met = [s.mean_ms for s in steps if s.within(p95_objective_ms) and s.mean_ms is not None]
    return max(met) if met else None


@dataclass(frozen=True)
class LoadTestReport:
    target: str  # "endpoint NAME" or "function NAME:ALIAS"
    backend: str
    settings: dict
    duration: float
    stopped: str  # what ended the sending
    images: int
    seconds: list[SecondRow]
    steps: list[LoadStep]
    events: list[ScalingEvent]
    verdict: Verdict
    plan: CapacityPlan | None
    costs: list[ChoiceCost]
    cost_note: str  # where the costs are priced, or why there are none


def build_report(config: PipelineConfig, settings: LoadTestSettings, *, target: str, outcomes: Sequence[Outcome],
                 samples: Sequence[tuple[float, int | None]], duration: float, stopped: str, images: int,
                 prices: PriceTable) -> LoadTestReport:
    """What the answers add up to, the verdict, and the capacity plan with its costs."""
    steps = summarize_steps(settings.steps(), outcomes, samples, duration)
    events = scaling_events(samples, outcomes)
    judged = verdict(steps, settings.p95_ms, events)
    mean_ms = function_mean_ms(steps, settings.p95_ms) if settings.target == "function" else None
    plan = recommend(steps, settings.p95_ms, peak_rps=settings.peak_rps, function_mean_ms=mean_ms,
                     min_capacity=config.autoscaling.min_capacity,
                     reserved_concurrency=config.function.reserved_concurrency)
    region = config.aws.region or DEFAULT_REGION
    costs, note = [], ""
    if plan is None:
        note = f"no step met p95 <= {settings.p95_ms:g} ms: nothing to recommend"
    else:
        try:
            costs = choice_costs(config, plan, prices, region)
        except ValueError as exc:
            note = f"the recommended settings are not a valid configuration: {exc}"
        else:
            where = (f"on AWS: {config.hosting.instance_type} instances and Lambda in {region}, "
                     f"{HOURS_PER_MONTH} h a month, prices of {prices.as_of}")
            note = (f"the local backend costs nothing; this is what each choice would cost {where}. "
                    f"{local_measurement_caveat(config)}"
                    if config.backend == "local" else f"what each choice costs {where}")
    return LoadTestReport(target, config.backend, settings.model_dump(mode="json"), duration, stopped, images,
                          per_second(outcomes, samples, duration), steps, events, judged, plan, costs, note)


def local_measurement_caveat(config: PipelineConfig) -> str:
    """Why a local test's rate does not carry over to the AWS instances it is priced on."""
    training = config.training
    return (f"But the rate was measured on this machine's local instances serving {training.architecture} at "
            f"{training.image_size} px, not on {config.hosting.instance_type} serving the model you deploy there: "
            "before using these settings on AWS, measure there (sagemaker-flows loadtest --config <your aws "
            "configuration> --recommend, against the aws endpoint)")


def check_settings(config: PipelineConfig, settings: LoadTestSettings) -> None:
    """ValueError naming the setting when the test cannot run as asked against this configuration."""
    if settings.time_scale != 1:
        if config.backend != "local":
            raise ValueError(f"time_scale {settings.time_scale:g}: only the local backend's autoscaler can run faster "
                             f"than real time (backend {config.backend}'s alarms count real minutes)")
        if not config.autoscaling.enabled:
            raise ValueError("time_scale applies to the autoscaling policy, and autoscaling.enabled is false")
