"""The loadtest flow against a real local gateway (loopback only, bounded): a tiny model endpoint with a
low autoscaling target, tested at a time scale of 60 (a datapoint a second, scale-in after fifteen
seconds below 90 % of the target): the load scales it out, the low rate after it scales it back in (a
quiet endpoint has no datapoints and is not scaled in, as on AWS); then a short test of the function
in front of it."""
import pytest

from backends.local.backend import LocalBackend
from backends.local.gateway.server import stop_gateway
from backends.types import ModelVersion
from core.config import PipelineConfig
from core.demo import demo_config
from core.loadtest import LoadTestSettings
from flows.loadtest import loadtest
from tests.helpers import make_model_artifact
from tests.integration.test_pipeline_flow import read_artifacts

pytestmark = [pytest.mark.integration, pytest.mark.slow(minutes=1.3)]


@pytest.mark.timeout(300)
def test_load_scales_out_then_a_low_rate_scales_in(prefect_api, tiny_dataset, tmp_path):
    values = demo_config(str(tiny_dataset)).model_dump(mode="json")
    values["local"] = {"home": str(tmp_path / "home")}
    # 120 invocations per instance a minute (2 requests a second); 1 s of scale-in cooldown at time scale 60.
    values["autoscaling"].update(min_capacity=1, max_capacity=2, target_invocations_per_instance=120,
                                 scale_out_cooldown_seconds=0, scale_in_cooldown_seconds=60)
    values["function"].update(reserved_concurrency=10, provisioned_concurrency=1)
    config = PipelineConfig.model_validate(values)
    backend = LocalBackend(home=config.local.home)
    names = config.names
    try:
        artifact = backend.storage.upload_file(make_model_artifact(tmp_path / "model"),
                                               f"s3://{backend.storage.default_bucket()}/models/model.tar.gz")
        version = ModelVersion(names.model_group, 1, artifact, {}, {}, "ab" * 32, "job-1", 1.7e9)
        backend.hosting.deploy_endpoint(names.endpoint, version, config.hosting)
        backend.hosting.register_autoscaling(names.endpoint, config.hosting.variant_name, config.autoscaling)

        # 4 requests a second (240 a minute on one instance) for 10 s: out after 3 datapoints above 120;
        # then 2 a second for 40 s, 60 a minute on each of two instances (at least one answer a datapoint,
        # all below 108): room for the new instance to start (~10 s here), and for fifteen datapoints below.
        settings = LoadTestSettings(rates=[4, 2, 2, 2, 2], step_seconds=10, time_scale=60, p95_ms=60000)
        state = loadtest(config, settings, return_state=True)
        report = state.result()

        load, *low = report.steps
        assert (load.offered_rps, load.requests, load.errors, load.throttled, load.dropped) == (4, 40, 0, 0, 0)
        assert load.succeeded == 40 and [(s.offered_rps, s.succeeded) for s in low] == [(2, 20)] * 4
        directions = [e.direction for e in report.events]
        assert "out" in directions and "in" in directions[directions.index("out"):], report.events
        scale_in = next(e for e in report.events if e.direction == "in")
        # Scaled in while the low rate went on (after the load: 4 rps on 2 instances is 120 a minute each).
        assert scale_in.quiet_seconds is None and scale_in.second > 10, scale_in
        assert len(report.seconds) >= 50 and {r.instances for r in report.seconds} >= {1, 2}
        assert sum(r.succeeded for r in report.seconds) == 120  # every answer, in the second it came back
        assert report.verdict.passed and report.verdict.summary.startswith("every step met p95 <= 60000 ms")
        assert report.plan.overrides()[0].startswith("autoscaling.target_invocations_per_instance=")

        status = backend.gateway.client().status()
        [endpoint] = status["endpoints"]
        policy = [(a["direction"], a["status"]) for a in endpoint["scaling_activities"] if a["cause"] == "policy"]
        assert ("out", "Successful") in policy and ("in", "Successful") in policy[policy.index(("out", "Successful")):]
        assert "time scale 60" in endpoint["scaling_activities"][-1]["reason"]
        assert endpoint["autoscaling"]["time_scale"] == 1  # real time again after the test
        for bad in (0.5, 601, "60", True):  # the control API refuses a time scale it cannot follow, naming it
            answer = backend.gateway.client().http.put(f"/_local/endpoints/{names.endpoint}/autoscaling",
                                                       json={**endpoint["autoscaling"], "time_scale": bad})
            assert (answer.status_code, answer.json()["field"]) == (400, "time_scale"), answer.text
        assert backend.gateway.client().status()["endpoints"][0]["autoscaling"]["time_scale"] == 1

        found = read_artifacts(state.state_details.flow_run_id)
        assert found["demo-load-test-steps"][0] == "table"
        assert "data:image/png;base64," in found["demo-load-test-chart"][1]
        verdict_text = found["demo-load-test-verdict"][1]
        assert "every step met" in verdict_text and "--set autoscaling" in verdict_text

        # The function in front of the endpoint, through its alias.
        backend.functions.publish_function(names.function, names.endpoint, config.function)
        short = loadtest(config, LoadTestSettings(target="function", rates=[2], step_seconds=3, p95_ms=60000))
        [step] = short.steps
        assert short.target == f"function {names.function}:live"
        assert (step.requests, step.succeeded, step.errors) == (6, 6, 0)
    finally:
        backend.close()
        stop_gateway(backend.state)
