"""The pipeline as Prefect deployments, on a real Prefect server: `sagemaker-flows serve` registers
them, a run created the way the UI's Run button creates it completes on the local backend, bad
parameters are refused naming the field, and deployments/prefect.yaml deploys the same four."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from core.config import PipelineConfig
from core.demo import demo_config

pytestmark = [pytest.mark.integration, pytest.mark.slow(minutes=2.2)]
ROOT = Path(__file__).resolve().parents[2]
FLOWS = {"train-and-deploy", "retrain", "teardown", "rollback"}


def tiny_config(home: Path, data: Path) -> PipelineConfig:
    values = demo_config(str(data)).model_dump(mode="json")
    values["training"].update(mode="instance", epochs=1)
    values["function"].update(reserved_concurrency=2, provisioned_concurrency=0)
    values["schedule"] = {"retrain_cron": "30 4 * * 2", "timezone": "Europe/Berlin"}
    values["local"] = {"home": str(home)}
    return PipelineConfig.model_validate(values)


def api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


def wait_for_run(client, run_id, timeout_s: float = 400):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = client.read_flow_run(run_id)
        if run.state and run.state.is_final():
            return run
        time.sleep(1)
    raise AssertionError(f"flow run {run_id} did not finish in {timeout_s} s")


def undescribed_fields(schema: dict) -> list[str]:
    missing = []
    for name, definition in schema.get("definitions", schema.get("$defs", {})).items():
        for field, spec in definition.get("properties", {}).items():
            if not spec.get("description"):
                missing.append(f"{name}.{field}")
    return missing


def test_serve_then_a_run_as_the_ui_starts_it(prefect_api, tiny_dataset, tmp_path):
    from prefect.client.orchestration import get_client

    from backends.local.backend import LocalBackend
    from flows.teardown import teardown

    config = tiny_config(tmp_path / "home", tiny_dataset)
    config_file = tmp_path / "pipeline.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    ready = tmp_path / "ready.json"
    env = {**os.environ, "PREFECT_API_URL": api_url()}
    serving = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--config", str(config_file),
                                "--ready-file", str(ready)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert serving.poll() is None, serving.stdout.read()
            assert time.monotonic() < deadline, "serve did not register its deployments"
            time.sleep(0.2)
        assert set(json.loads(ready.read_text())) == {f"{f}/sagemaker-flows-demo" for f in FLOWS}

        with get_client(sync_client=True) as client:
            by_flow = {client.read_flow(d.flow_id).name: d for d in client.read_deployments()
                       if d.name == "sagemaker-flows-demo"}
            assert set(by_flow) == FLOWS
            retrain = by_flow["retrain"]
            assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in retrain.schedules] == [
                ("30 4 * * 2", "Europe/Berlin", True)]
            assert not by_flow["train-and-deploy"].schedules

            run_deployment = by_flow["train-and-deploy"]
            schema = run_deployment.parameter_openapi_schema
            assert schema["required"] == ["config"]
            config_fields = schema["definitions"]["PipelineConfig"]["properties"]
            assert set(config_fields) == set(PipelineConfig.model_fields)
            assert undescribed_fields(schema) == []
            # The form starts from the configuration it was served with.
            assert PipelineConfig.model_validate(run_deployment.parameters["config"]) == config

            # Refused when the run is created, naming the field.
            bad = json.loads(json.dumps(run_deployment.parameters))
            bad["config"]["autoscaling"] = {"max_capacity": 0}
            with pytest.raises(Exception, match=r"config\.autoscaling\.max_capacity.*less than the minimum of 1"):
                client.create_flow_run_from_deployment(run_deployment.id, parameters=bad)
            # A rule across fields fails the run before any step, naming the field.
            crossed = json.loads(json.dumps(run_deployment.parameters))
            crossed["config"]["autoscaling"] = {"min_capacity": 3, "max_capacity": 2}
            failed = wait_for_run(client, client.create_flow_run_from_deployment(
                run_deployment.id, parameters=crossed).id, 120)
            assert failed.state.is_failed()
            assert "config.autoscaling.max_capacity" in failed.state.message and "min_capacity (3)" in failed.state.message

            # What the UI's Run button sends: the deployment's parameters, as JSON.
            parameters = json.loads(json.dumps(run_deployment.parameters))
            run = wait_for_run(client, client.create_flow_run_from_deployment(run_deployment.id,
                                                                              parameters=parameters).id)
            assert run.state.is_completed(), run.state.message
        backend = LocalBackend(home=config.local.home)
        versions = backend.registry.list_model_versions(config.names.model_group)
        assert [(v.version, v.champion) for v in versions] == [(1, True)]
        assert backend.hosting.describe_endpoint(config.names.endpoint).model_version == versions[0].label
    finally:
        serving.send_signal(signal.SIGINT)
        try:
            serving.wait(timeout=30)
        except subprocess.TimeoutExpired:
            serving.kill()
        teardown(config)


def test_prefect_yaml_deploys_the_same_four_to_a_work_pool(prefect_api, tmp_path):
    from prefect.client.orchestration import get_client

    env = {**os.environ, "PREFECT_API_URL": api_url(), "SAGEMAKER_FLOWS_DIR": str(ROOT),
           "SAGEMAKER_FLOWS_DATA": "s3://my-bucket/dogImages"}
    prefect = [sys.executable, "-m", "prefect", "--no-prompt"]
    subprocess.run([*prefect, "work-pool", "create", "sagemaker-flows", "--type", "process", "--overwrite"],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    deployed = subprocess.run([*prefect, "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    with get_client(sync_client=True) as client:
        prod = [d for d in client.read_deployments() if d.name == "sagemaker-flows-prod"]
        flows = {client.read_flow(d.flow_id).name: d for d in prod}
    assert set(flows) == FLOWS and {d.work_pool_name for d in prod} == {"sagemaker-flows"}
    assert [s.schedule.cron for s in flows["retrain"].schedules] == ["0 3 * * 1"]
    config = PipelineConfig.model_validate(flows["train-and-deploy"].parameters["config"])
    assert (config.backend, config.data.source, config.autoscaling.max_capacity) == ("aws", "s3://my-bucket/dogImages", 100)
