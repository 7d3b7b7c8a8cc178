"""The load test's plan and arithmetic (core.loadtest), the open-loop sender's bookkeeping with fake
senders, the planner's costs, and the command's options."""
import argparse
import io
import json
import threading
from types import SimpleNamespace

import boto3
import pytest
import yaml
from botocore.awsrequest import AWSResponse
from moto import mock_aws

from backends.aws.storage import S3Storage
from backends.session import local_session, make_client
from core.capacity import LoadStep, choice_costs, recommend
from core.costs import HOURS_PER_MONTH
from core.config_io import load_config
from core.demo import demo_config
from core.loadtest import (
    DROPPED, ERROR, OK, THROTTLED, LoadTestSettings, Outcome, Planned, build_report, check_settings, function_mean_ms,
    per_second, percentile, scaling_events, summarize_steps, verdict,
)
from core.pricing import load_prices
from core.retry import PermanentError
from flows import cli
from flows.loadtest import report_of
from flows.loadtest_options import add_arguments, settings_from_arguments
from tasks import run_load_test as load_module
from tasks.run_load_test import (LoadRecord, endpoint_sender, function_sender, image_names, images_location,
                                 read_images, run_open_loop, single_attempt)


# -- the schedule ---------------------------------------------------------------------------
def test_steps_send_at_their_rate_one_after_another():
    settings = LoadTestSettings(rates=[2, 0, 4], step_seconds=2, idle_seconds=3)
    due = settings.schedule()
    # Request n is due when the rate's integral reaches n: the first half a second in, the last at the end.
    assert [(p.offset, p.step) for p in due] == [(0.5, 0), (1, 0), (1.5, 0), (2, 0),
                                                 (4.25, 2), (4.5, 2), (4.75, 2), (5, 2), (5.25, 2), (5.5, 2),
                                                 (5.75, 2), (6, 2)]
    assert [(s.start, s.seconds, s.offered_rps) for s in settings.steps()] == [(0, 2, 2), (2, 2, 0), (4, 2, 4),
                                                                             (6, 3, 0)]
    assert settings.duration() == 9 and settings.stop_reason() == "the schedule's end"


def test_a_ramp_sends_what_its_rate_integrates_to_ever_faster():
    settings = LoadTestSettings(ramp=(1, 9), ramp_seconds=10, step_seconds=5)
    due = settings.schedule()
    assert len(due) == 50  # (1 + 9) / 2 x 10
    gaps = [b.offset - a.offset for a, b in zip(due, due[1:])]
    assert all(later < earlier for earlier, later in zip(gaps, gaps[1:]))
    first, second = settings.steps()
    assert (first.offered_rps, second.offered_rps) == (3, 7)
    assert [sum(p.step == i for p in due) for i in (0, 1)] == [15, 35]
    down = LoadTestSettings(ramp=(9, 1), ramp_seconds=10, step_seconds=10).schedule()
    assert len(down) == 50 and down[-1].offset == pytest.approx(10)


def test_low_rates_and_thin_slices_send_what_their_rates_add_up_to():
    # The fraction of a request a step (or a ramp's slice) leaves is carried into the next one.
    thin = LoadTestSettings(ramp=(0.2, 0.2), ramp_seconds=10, step_seconds=1).schedule()
    assert [(pytest.approx(p.offset), p.step) for p in thin] == [(5, 4), (10, 9)]
    assert [p.offset for p in LoadTestSettings(rates=[0.5], step_seconds=3).schedule()] == [2]
    across = LoadTestSettings(rates=[0.5, 0.5], step_seconds=3).schedule()
    assert [(p.offset, p.step) for p in across] == [(2, 0), (4, 1), (6, 1)]
    assert [p.offset for p in LoadTestSettings(rates=[0.3], step_seconds=3).schedule()] == []  # 0.9: none yet
    sliced = LoadTestSettings(ramp=(0.3, 7.7), ramp_seconds=123, step_seconds=7)
    assert len(sliced.steps()) == 18 and len(sliced.schedule()) == 492  # (0.3 + 7.7) / 2 x 123


def test_the_bounds_cut_the_schedule():
    by_count = LoadTestSettings(rates=[10], step_seconds=10, max_requests=25)
    assert len(by_count.schedule()) == 25 and by_count.stop_reason() == "max_requests (25)"
    by_time = LoadTestSettings(rates=[10, 20], step_seconds=10, max_seconds=12)
    assert by_time.schedule()[-1].offset == 12 and len(by_time.schedule()) == 100 + 40
    assert by_time.duration() == 12 and by_time.stop_reason() == "max_seconds (12)"


@pytest.mark.parametrize("values, field", [
    ({"rates": [0, 0]}, "at least one step"), ({"rates": [-1]}, "rates"), ({"ramp": (0, 0)}, "ramp"),
    ({"time_scale": 601}, "time_scale"), ({"time_scale": 0.5}, "time_scale"), ({"p95_ms": 0}, "p95_ms"),
    ({"max_in_flight": 0}, "max_in_flight"), ({"target": "queue"}, "target"),
])
def test_settings_refuse_what_cannot_run(values, field):
    with pytest.raises(ValueError, match=field):
        LoadTestSettings(**values)


def test_time_scale_needs_the_local_backends_autoscaler():
    local = demo_config("/data")
    check_settings(local, LoadTestSettings(time_scale=60))
    with pytest.raises(ValueError, match="only the local backend"):
        check_settings(local.model_copy(update={"backend": "aws"}), LoadTestSettings(time_scale=60))
    check_settings(local.model_copy(update={"backend": "aws"}), LoadTestSettings())
    off = local.model_copy(update={"autoscaling": local.autoscaling.model_copy(update={"enabled": False})})
    with pytest.raises(ValueError, match="autoscaling.enabled"):
        check_settings(off, LoadTestSettings(time_scale=60))


# -- what the answers add up to ---------------------------------------------------------------
def test_percentile_interpolates_between_ranks():
    values = list(range(1, 101))
    assert percentile(values, 50) == 50.5 and percentile(values, 95) == pytest.approx(95.05)
    assert percentile([7], 99) == 7 and percentile([], 50) is None
    assert percentile([30, 10, 20], 100) == 30 and percentile([30, 10, 20], 0) == 10


def _outcomes():
    """Step 0 (0-2 s, 2 rps): 4 answers; step 1 (2-4 s, 4 rps): 5 answers, a 429, an error, a dropped one."""
    return [Outcome(0.0, 0, OK, 100), Outcome(0.5, 0, OK, 100), Outcome(1.0, 0, OK, 200), Outcome(1.5, 0, OK, 300),
            Outcome(2.0, 1, OK, 500), Outcome(2.25, 1, OK, 500), Outcome(2.5, 1, OK, 600), Outcome(2.75, 1, THROTTLED, 5),
            Outcome(3.0, 1, ERROR, 50, "ModelError"), Outcome(3.25, 1, DROPPED), Outcome(3.5, 1, OK, 900),
            Outcome(3.75, 1, OK, 1500)]


SAMPLES = [(0.0, 1), (1.0, 1), (2.0, 1), (3.0, 2), (4.0, 2), (5.0, None), (6.0, 1)]


def test_per_second_rows():
    rows = per_second(_outcomes(), SAMPLES, duration=4)
    assert [r.second for r in rows] == [0, 1, 2, 3, 4, 5]  # the last answer came at 5.25 s
    assert [r.sent for r in rows] == [2, 2, 4, 3, 0, 0]
    assert [r.dropped for r in rows] == [0, 0, 0, 1, 0, 0]
    assert [r.succeeded for r in rows] == [2, 2, 2, 1, 1, 1]  # answers by the second they came back in
    assert [(r.errors, r.throttled) for r in rows] == [(0, 0), (0, 0), (0, 1), (1, 0), (0, 0), (0, 0)]
    assert (rows[0].p50_ms, rows[1].p95_ms, rows[3].p99_ms) == (100, pytest.approx(295), 600)
    assert [r.instances for r in rows] == [1, 1, 1, 2, 2, 2]  # a failed sample keeps the last count


def test_steps_summarize_what_each_sent_and_got():
    plans = LoadTestSettings(rates=[2, 4], step_seconds=2).steps()
    first, second = summarize_steps(plans, _outcomes(), SAMPLES, duration=4)
    assert (first.requests, first.succeeded, first.achieved_rps, first.instances) == (4, 4, 2.0, 1.0)
    assert (first.p50_ms, first.p95_ms) == (150, pytest.approx(285))
    assert (second.requests, second.succeeded, second.errors, second.throttled, second.dropped) == (8, 5, 1, 1, 1)
    assert second.achieved_rps == 2.5 and second.instances == 1.5 and second.failed_ratio == 3 / 8
    cut = summarize_steps(plans, _outcomes(), SAMPLES, duration=3)  # max_seconds cut the second step
    assert len(cut) == 2 and cut[1].achieved_rps == 5.0


def test_scaling_events_and_the_quiet_before_a_scale_in():
    outcomes = [Outcome(0.0, 0, OK, 100), Outcome(1.0, 0, OK, 500)]
    events = scaling_events([(0.0, 1), (1.2, 2), (2.0, None), (9.5, 2), (10.0, 1)], outcomes)
    assert [(e.second, e.direction, e.from_count, e.to_count) for e in events] == [(1.2, "out", 1, 2),
                                                                                   (10.0, "in", 2, 1)]
    assert events[0].quiet_seconds is None and events[1].quiet_seconds == 8.5  # the last answer came at 1.5 s
    # A scale-in while a low rate goes on is not after a quiet, though nothing was out at that moment.
    low = [*outcomes, Outcome(9.0, 1, OK, 10), Outcome(11.0, 1, OK, 10)]
    assert scaling_events([(0.0, 2), (10.0, 1)], low)[0].quiet_seconds is None


def test_verdict_names_the_steps_that_missed_the_objective():
    plans = LoadTestSettings(rates=[2, 4], step_seconds=2).steps()
    steps = summarize_steps(plans, _outcomes(), SAMPLES, duration=4)
    judged = verdict(steps, 500, scaling_events(SAMPLES, _outcomes()))
    assert not judged.passed and judged.sustainable_rps_per_instance == 2.0
    assert judged.summary == ("1 of 2 steps missed p95 <= 500 ms; 2.00 requests/s per instance (120/min) "
                              "sustained within it")
    assert judged.findings[0] == "step 2 (4 rps): p95 1380 ms > 500 ms; 37.5% failed (1 errors, 1 throttled, 1 dropped)"
    assert judged.findings[1] == "scaled out 1 -> 2 at 3 s"
    only_first = verdict(steps[:1], 500)
    assert only_first.passed and only_first.findings[0].startswith("no step went past the objective")
    assert verdict(steps, 100).summary.endswith("no step met it")
    assert function_mean_ms(steps, 500) == 175  # (100 + 100 + 200 + 300) / 4: step 2 missed the objective


# -- the planner ----------------------------------------------------------------------------------
def _step(rate, p95, instances=1.0):
    return LoadStep(rate, 100, 100, 0, 0, achieved_rps=rate, p50_ms=p95 / 2, p95_ms=p95, p99_ms=p95, instances=instances)


def test_each_choice_is_priced_on_aws():
    config = demo_config("/data")  # ml.m5.large at $0.115/h; max 4, target 10; provisioned 2, reserved 10
    prices = load_prices()
    plan = recommend([_step(2, 100), _step(4, 300), _step(8, 900)], 500, peak_rps=20, function_mean_ms=600,
                     min_capacity=1, reserved_concurrency=10)
    # 20 rps x 0.6 s = 12 in flight on average; P(Poisson(12) <= 17) = 0.937, <= 18: 0.963.
    assert plan.overrides() == ["autoscaling.target_invocations_per_instance=120", "autoscaling.max_capacity=10",
                                "function.provisioned_concurrency=18", "function.reserved_concurrency=18"]
    rows = {c.setting: c for c in choice_costs(config, plan, prices)}
    month = 0.115 * HOURS_PER_MONTH
    target = rows["autoscaling.target_invocations_per_instance"]
    # 20 rps is 1200 a minute: 120 instances at a target of 10, but max_capacity stops it at 4; 10 at 120.
    assert (target.configured, target.recommended) == ("10", "120")
    assert target.configured_monthly == pytest.approx(4 * month)
    assert target.recommended_monthly == pytest.approx(10 * month)
    assert "not met at the configured settings" in target.basis and "autoscaling.max_capacity is 4" in target.basis
    maximum = rows["autoscaling.max_capacity"]
    assert maximum.configured_monthly == pytest.approx(4 * month) and maximum.recommended_monthly == pytest.approx(10 * month)
    warm = rows["function.provisioned_concurrency"]  # 512 MB kept warm all month
    gb_month = 0.5 * HOURS_PER_MONTH * 3600 * prices.lambda_prices("us-east-1").provisioned_gb_second
    assert warm.configured_monthly == pytest.approx(2 * gb_month)
    assert warm.recommended_monthly == pytest.approx(18 * gb_month)
    assert warm.basis == ("environments of 512 MB kept warm all month: 20 rps x the mean latency is 12.00 executions "
                          "in flight on average, and 18 hold them all 95% of the time (Poisson)")
    assert rows["function.reserved_concurrency"].recommended_monthly is None
    no_peak = choice_costs(config, recommend([_step(4, 300)], 500), prices)
    assert [(c.setting, c.configured_monthly) for c in no_peak] == [("autoscaling.target_invocations_per_instance", None)]
    unknown = choice_costs(config.model_copy(update={"hosting": config.hosting.model_copy(
        update={"instance_type": "ml.x9.huge"})}), plan, prices)
    assert unknown[0].recommended_monthly is None


def test_the_report_recommends_from_a_function_test():
    config = demo_config("/data")
    settings = LoadTestSettings(target="function", rates=[2, 4], step_seconds=2, peak_rps=10)
    report = build_report(config, settings, target="function f:live", outcomes=_outcomes(), samples=SAMPLES,
                          duration=4, stopped="the schedule's end", images=3, prices=load_prices())
    # 2 rps per instance within 500 ms: target 60; 10 rps needs 10 instances; 10 rps x 175 ms mean = 1.75 in
    # flight on average, and P(Poisson(1.75) <= 3) = 0.899, <= 4: 0.967, so 4 warm (p95 x rate said 3).
    assert report.plan.overrides() == ["autoscaling.target_invocations_per_instance=60", "autoscaling.max_capacity=10",
                                       "function.provisioned_concurrency=4"]
    assert report.plan.executions_in_flight == pytest.approx(1.75)
    assert report.cost_note.startswith("the local backend costs nothing; this is what each choice would cost on AWS: "
                                       "ml.m5.large instances and Lambda in us-east-1, 730 h a month")
    # The rate was measured here, on the demo's model: the note says it does not carry over to AWS.
    assert ("measured on this machine's local instances serving resnet18 at 32 px, not on ml.m5.large"
            in report.cost_note and "loadtest --config <your aws configuration> --recommend" in report.cost_note)
    on_aws = build_report(config.model_copy(update={"backend": "aws"}), settings, target="function f:live",
                          outcomes=_outcomes(), samples=SAMPLES, duration=4, stopped="", images=3, prices=load_prices())
    assert on_aws.cost_note.startswith("what each choice costs on AWS") and "measured on" not in on_aws.cost_note
    assert [len(report.seconds), len(report.steps)] == [6, 2] and not report.verdict.passed
    none = build_report(config, settings.model_copy(update={"p95_ms": 10}), target="function f:live",
                        outcomes=_outcomes(), samples=SAMPLES, duration=4, stopped="", images=3, prices=load_prices())
    assert none.plan is None and none.costs == [] and "nothing to recommend" in none.cost_note


# -- the sender ---------------------------------------------------------------------------------
def test_open_loop_drops_what_it_cannot_send_and_counts_latency_from_the_due_time():
    release, started = threading.Event(), threading.Event()

    def send(number):
        if number == 0:
            started.set()
            release.wait(5)  # the first answer is slow: the next ones find the bound reached
        return OK, ""

    threading.Timer(0.3, release.set).start()
    schedule = [Planned(0.0, 0), Planned(0.05, 0), Planned(0.1, 0), Planned(0.5, 1)]
    outcomes, samples = run_open_loop(schedule, send, duration=0.6, max_in_flight=1, sample=lambda: 3)
    assert [o.status for o in outcomes] == [OK, DROPPED, DROPPED, OK]
    assert outcomes[0].latency_ms >= 300 and outcomes[1].latency_ms is None
    assert samples[0][1] == 3


def test_a_failing_sender_or_describe_is_one_failed_request_not_a_failed_test():
    def send(number):
        if number == 1:
            raise RuntimeError("bug")
        return (THROTTLED, "429") if number == 2 else (OK, "")

    def describe():
        raise ConnectionError("gateway busy")

    outcomes, samples = run_open_loop([Planned(0.0, 0), Planned(0.01, 0), Planned(0.02, 0)], send, duration=0.1,
                                      max_in_flight=4, sample=describe)
    assert [o.status for o in outcomes] == [OK, ERROR, THROTTLED] and "RuntimeError: bug" in outcomes[1].detail
    assert samples and samples[0][1] is None


def test_each_request_is_sent_once_and_a_throttle_is_a_throttle(monkeypatch):
    # botocore's endpoint sleeps between retries with `time.sleep` (its only use of `time`): not here.
    monkeypatch.setattr("botocore.endpoint.time", SimpleNamespace(sleep=lambda seconds: None))
    client = make_client(local_session(), "sagemaker-runtime", endpoint_url="http://127.0.0.1:9")
    calls = []

    def throttled(request, **_):  # answered before anything leaves the process
        calls.append(request.url)
        return AWSResponse(request.url, 400, {"x-amzn-ErrorType": "ThrottlingException"},
                           SimpleNamespace(stream=lambda: iter([b'{"message": "slow down"}'])))

    client.meta.events.register("before-send.sagemaker-runtime.InvokeEndpoint", throttled)
    send = endpoint_sender(client, "ep", [(b"png", "image/png")])
    assert send(0)[0] == THROTTLED and len(calls) == 4  # the backend's client: a try and three retries
    calls.clear()
    assert endpoint_sender(single_attempt(client), "ep", [(b"png", "image/png")])(0) == (
        THROTTLED, "ThrottlingException: slow down") and len(calls) == 1


def test_function_answers_are_judged_by_their_payload():
    answers = iter([{"statusCode": 200, "body": "{}"}, {"statusCode": 429, "body": "busy"},
                    {"errorType": "Boom", "errorMessage": "no"}])
    sent = []

    def invoke(**kwargs):
        sent.append(kwargs)
        answer = next(answers)
        extra = {"FunctionError": "Unhandled"} if "errorType" in answer else {}
        return {"Payload": io.BytesIO(json.dumps(answer).encode()), **extra}

    send = function_sender(SimpleNamespace(invoke=invoke), "fn", [(b"\x89PNG", "image/png")])
    assert [send(i)[0] for i in range(3)] == [OK, THROTTLED, ERROR]
    assert sent[0]["Qualifier"] == "live" and json.loads(sent[0]["Payload"]) == {"image": "iVBORw=="}


# -- the command's options ------------------------------------------------------------------------
def _parse(*argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return settings_from_arguments(parser.parse_args(list(argv)))


def test_options_make_the_settings_and_errors_name_the_option():
    settings = _parse("--rates", "1,2.5", "--step-seconds", "5", "--time-scale", "60", "--peak-rps", "30")
    assert (settings.rates, settings.step_seconds, settings.time_scale, settings.peak_rps) == ([1, 2.5], 5, 60, 30)
    assert _parse("--ramp", "1:20", "--seconds", "60").ramp == (1, 20)
    with pytest.raises(ValueError, match="--time-scale"):
        _parse("--time-scale", "1000")
    with pytest.raises(ValueError, match="--step-seconds"):
        _parse("--step-seconds", "0")
    with pytest.raises(ValueError, match="--rates takes numbers"):
        _parse("--rates", "fast")
    with pytest.raises(ValueError, match="--seconds is the length of a --ramp"):
        _parse("--seconds", "60")


# -- what the command checks and says -------------------------------------------------------------
def test_an_s3_data_source_sends_a_sample_of_its_test_split(monkeypatch):
    monkeypatch.setattr(load_module, "MAX_S3_IMAGES", 4)
    config = load_config("examples/pipeline.aws.yaml")  # data.source: s3://my-ml-data/dogImages
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="my-ml-data")
        for breed in ("001.Affenpinscher", "002.Afghan_hound", "003.Airedale"):
            for i in range(4):
                s3.put_object(Bucket="my-ml-data", Key=f"dogImages/test/{breed}/{i}.jpg", Body=f"{breed} {i}".encode())
        s3.put_object(Bucket="my-ml-data", Key="dogImages/test/README.txt", Body=b"not an image")
        s3.put_object(Bucket="my-ml-data", Key="dogImages/train/001.Affenpinscher/9.jpg", Body=b"training")
        storage = S3Storage(s3)
        location = images_location(config, LoadTestSettings())
        assert location == "s3://my-ml-data/dogImages/test"
        names = image_names(location, storage)  # 4 of the 12, spread over every breed
        assert names == ["001.Affenpinscher/0.jpg", "001.Affenpinscher/3.jpg", "002.Afghan_hound/2.jpg",
                         "003.Airedale/1.jpg"]
        assert read_images(location, names[:2], storage) == [(b"001.Affenpinscher 0", "image/jpeg"),
                                                             (b"001.Affenpinscher 3", "image/jpeg")]
        with pytest.raises(PermanentError, match="no .png, .jpg or .jpeg images under s3://my-ml-data/elsewhere"):
            image_names("s3://my-ml-data/elsewhere", storage)
        with pytest.raises(PermanentError, match="s3://no-such-bucket/test cannot be listed"):
            image_names("s3://no-such-bucket/test", storage)
    assert images_location(config, LoadTestSettings(images="s3://other/pics")) == "s3://other/pics"
    https = config.model_copy(update={"data": config.data.model_copy(update={"source": "https://x.org/d.zip"})})
    with pytest.raises(PermanentError, match="--images DIR or s3://bucket/prefix"):
        images_location(https, LoadTestSettings())


def _local_config_file(tmp_path) -> str:
    values = demo_config(str(tmp_path / "data")).model_dump(mode="json")
    values["local"] = {"home": str(tmp_path / "home")}  # no gateway runs there: nothing is deployed
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


@pytest.mark.parametrize("local, extra, says", [
    (False, ["--time-scale", "20"], "error: time_scale 20: only the local backend's autoscaler can run faster"),
    (True, ["--time-scale", "20", "--set", "autoscaling.enabled=false"],
     "error: time_scale applies to the autoscaling policy, and autoscaling.enabled is false"),
    (True, [], "error: endpoint sagemaker-flows-demo-endpoint is not deployed: deploy it first"),
])
def test_bad_loadtest_input_is_one_line_before_any_server_starts(monkeypatch, capsys, tmp_path, local, extra, says):
    def no_server(config):
        raise AssertionError("a Prefect server was asked for")

    monkeypatch.setattr(cli, "_prefect_api", no_server)
    config = _local_config_file(tmp_path) if local else "examples/pipeline.aws.yaml"
    assert cli.main(["loadtest", "--config", config, *extra]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and err.startswith(says), err


def test_loadtest_help_says_what_the_options_need(capsys):
    with pytest.raises(SystemExit):
        cli.main(["loadtest", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Send an open-loop load" in text and "you pay the endpoint's instance-hours while it runs" in text
    assert "with --recommend: the peak rate to size autoscaling.max_capacity for, and, with --target function, " \
           "provisioned concurrency" in text


def test_the_report_is_priced_with_the_configurations_price_table(tmp_path):
    table = {"as_of": "2030-01", "regions": {"us-east-1": {"sagemaker_hosting": {"ml.m5.large": 1.0}}}}
    (tmp_path / "prices.json").write_text(json.dumps(table))
    config = demo_config("/data")
    config = config.model_copy(update={"preflight": config.preflight.model_copy(
        update={"prices_file": str(tmp_path / "prices.json")})})
    record = LoadRecord("endpoint e", _outcomes(), SAMPLES, 4, "the schedule's end", 3)
    report = report_of(config, LoadTestSettings(rates=[2, 4], step_seconds=2, peak_rps=4), record)
    # 2 rps per instance within 500 ms: a target of 60; 4 rps is 4 instances, at $1 an hour.
    assert report.costs[0].recommended_monthly == pytest.approx(4 * HOURS_PER_MONTH)
    assert "prices of 2030-01" in report.cost_note
