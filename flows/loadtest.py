"""loadtest: an open-loop load test of the pipeline's deployed endpoint or function, and what it says
about capacity.

run_load_test (the load, the instance count every second) -> core.loadtest.build_report (per-second
rows, steps, scaling seen, verdict, the capacity plan and its costs) -> artifacts: a chart of latency,
throughput and instances over time, the steps, the verdict with the recommended `--set` overrides.
"""
# No `from __future__ import annotations` in flow modules: Prefect builds the parameter model (the
# UI's form, a deployment run's validation) from the real annotations.
import base64
import io

from prefect import flow

from backends import get_backend
from core.config import PipelineConfig
from core.loadtest import LoadTestReport, LoadTestSettings, build_report, check_settings
from core.pricing import load_prices
from tasks import artifacts
from tasks.run_load_test import LoadRecord, run_load_test


@flow(name="loadtest", log_prints=True)
def loadtest(config: PipelineConfig, settings: LoadTestSettings) -> LoadTestReport:
    """Send the load, sample the instance count, judge the latency, recommend the capacity settings."""
    check_settings(config, settings)
    backend = get_backend(config.backend, config)
    try:
        record = run_load_test(config, backend, settings)
    finally:
        backend.close()
    report = report_of(config, settings, record)
    leave_artifacts(config.stage, report)
    print(f"load test of {report.target}: {report.verdict.summary}")
    return report


def report_of(config: PipelineConfig, settings: LoadTestSettings, record: LoadRecord) -> LoadTestReport:
    """The record's report, priced with preflight.prices_file when the configuration names one."""
    return build_report(config, settings, target=record.target, outcomes=record.outcomes, samples=record.samples,
                        duration=record.duration, stopped=record.stopped, images=record.images,
                        prices=load_prices(config.preflight.prices_file))


# -- artifacts ----------------------------------------------------------------------------
def chart_png(report: LoadTestReport) -> bytes:
    """Latency (p50, p95, the objective) and throughput per second, the instance count as a step line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report.seconds
    x = [r.second for r in rows]
    fig, (latency, throughput) = plt.subplots(2, 1, figsize=(9, 5.5), dpi=90, sharex=True)
    for name, style in (("p50_ms", "-"), ("p95_ms", "--")):
        latency.plot(x, [getattr(r, name) for r in rows], style, label=name.replace("_ms", ""))
    latency.axhline(report.settings["p95_ms"], color="red", linewidth=0.8, linestyle=":", label="p95 objective")
    latency.set_ylabel("latency (ms)")
    throughput.plot(x, [r.sent for r in rows], ":", label="sent")
    throughput.plot(x, [r.succeeded for r in rows], "-", label="answered")
    throughput.bar(x, [r.errors + r.throttled + r.dropped for r in rows], color="red", alpha=0.5,
                   label="failed, throttled or dropped")
    throughput.set_ylabel("requests / s")
    throughput.set_xlabel("seconds")
    for ax in (latency, throughput):
        ax.grid(alpha=0.3)
        instances = ax.twinx()
        instances.step(x, [r.instances for r in rows], where="post", color="black", alpha=0.6, label="instances")
        instances.set_ylabel("instances")
        instances.set_ylim(0, max([r.instances or 0 for r in rows] + [1]) + 1)
        lines, labels = ax.get_legend_handles_labels()
        more, more_labels = instances.get_legend_handles_labels()
        ax.legend(lines + more, labels + more_labels, loc="upper left", fontsize=8)
    fig.suptitle(f"load test of {report.target}")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def step_rows(report: LoadTestReport) -> list[dict]:
    rounded = lambda v: None if v is None else round(v, 1)  # noqa: E731
    return [{"step": i, "offered_rps": s.offered_rps, "requests": s.requests, "achieved_rps": s.achieved_rps,
             "p50_ms": rounded(s.p50_ms), "p95_ms": rounded(s.p95_ms), "p99_ms": rounded(s.p99_ms),
             "errors": s.errors, "throttled": s.throttled, "dropped": s.dropped, "instances": s.instances}
            for i, s in enumerate(report.steps, 1)]


def verdict_markdown(report: LoadTestReport) -> str:
    lines = [f"## Load test of `{report.target}`: {'passed' if report.verdict.passed else 'not passed'}",
             f"- {report.verdict.summary}", *(f"- {finding}" for finding in report.verdict.findings),
             f"- {sum(s.requests for s in report.steps)} requests over {report.duration:g} s "
             f"({report.images} images); sending ended at {report.stopped}"]
    plan = report.plan
    if plan is not None:
        lines += ["", "## Recommended settings",
                  f"- one instance sustains{' at least' if report.verdict.passed else ''} "
                  f"{plan.sustainable_per_instance_per_minute:g} invocations a minute "
                  f"at p95 <= {plan.p95_objective_ms:g} ms; the target keeps half of that as headroom",
                  "```", " ".join(f"--set {o}" for o in plan.overrides()), "```"]
        if plan.peak_rps is not None and plan.provisioned_concurrency is None:
            lines.insert(-3, "- provisioned concurrency is sized only by a test of the function (--target function)")
    if report.costs:
        lines += ["", f"Costs: {report.cost_note}.", "",
                  "| setting | configured | recommended | per month now | per month recommended | of |",
                  "| --- | --- | --- | --- | --- | --- |"]
        money = lambda v: "-" if v is None else f"${v:,.2f}"  # noqa: E731
        lines += [f"| {c.setting} | {c.configured} | {c.recommended} | {money(c.configured_monthly)} | "
                  f"{money(c.recommended_monthly)} | {c.basis} |" for c in report.costs]
    elif report.cost_note:
        lines += ["", report.cost_note]
    return "\n".join(lines)


def leave_artifacts(stage: str, report: LoadTestReport) -> None:
    encoded = base64.b64encode(chart_png(report)).decode()
    artifacts.markdown(f"{stage}-load-test-chart", f"![load test of {report.target}](data:image/png;base64,{encoded})",
                       f"latency, throughput and instances over time: {report.target}")
    artifacts.table(f"{stage}-load-test-steps", step_rows(report), f"the load test's steps: {report.target}")
    artifacts.markdown(f"{stage}-load-test-verdict", verdict_markdown(report), "verdict and recommendation")
