"""Retraining on the local backend, end to end through Prefect: a champion, challengers that are
and are not better, a reviewer's approval and rejection, and a release that fails its smoke test
and rolls back. What serves is read back through boto3, as a user would."""
import json
import threading
import time

import boto3
import pytest

from backends.local.backend import LocalBackend
from core.config import PipelineConfig
from core.demo import demo_config
from flows.release import ReleaseRolledBackError
from flows.retrain import retrain
from flows.rollback import rollback
from flows.teardown import teardown
from flows.train_and_deploy import train_and_deploy

pytestmark = [pytest.mark.integration, pytest.mark.slow(minutes=5)]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """600 digits (60 a class): enough for a 2-epoch model to be far better than a crippled one."""
    from core.demo_data import write_demo_dataset

    root = tmp_path_factory.mktemp("digits") / "digits"
    write_demo_dataset(str(root), seed=0, image_size=32, per_class=60)
    return root


def config_for(home, data, *, crippled: bool, seed: int = 0, **promotion) -> PipelineConfig:
    values = demo_config(str(data)).model_dump(mode="json")
    values["training"].update(mode="instance", epochs=1 if crippled else 2, seed=seed,
                              hyperparameters={"learning_rate": 1e-6 if crippled else 1e-3, "batch_size": 32})
    values["function"].update(reserved_concurrency=4, provisioned_concurrency=0)
    values["promotion"] = promotion
    values["local"] = {"home": str(home)}
    return PipelineConfig.model_validate(values)


def served_version(backend: LocalBackend, config: PipelineConfig, image: bytes) -> str:
    """What the endpoint answers, through boto3's sagemaker-runtime client."""
    runtime = boto3.client("sagemaker-runtime", endpoint_url=backend.endpoint_url, region_name="us-east-1")
    answer = runtime.invoke_endpoint(EndpointName=config.names.endpoint, ContentType="image/png", Body=image)
    return json.loads(answer["Body"].read())["model_version"]


def answer_review(run_input: dict, timeout_s: float = 300) -> None:
    """Wait for the paused retrain run and resume it with the reviewer's answer."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.flow_runs import resume_flow_run

    deadline = time.monotonic() + timeout_s
    paused = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(flow_run_filter=paused)
            if runs:
                resume_flow_run(runs[0].id, run_input=run_input)
                return
            time.sleep(1)
    raise AssertionError("no retrain run paused for approval")


def reviewed_retrain(config: PipelineConfig, run_input: dict):
    reviewer = threading.Thread(target=answer_review, args=(run_input,), daemon=True)
    reviewer.start()
    result = retrain(config)
    reviewer.join(timeout=5)
    return result


def test_champion_challengers_approval_and_rollback(prefect_api, digits, tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    crippled = config_for(home, digits, crippled=True)
    good = config_for(home, digits, crippled=False, require_approval=True)
    backend = LocalBackend(home=str(home))
    image = next((digits / "test").rglob("*.png")).read_bytes()
    group = crippled.names.model_group
    try:
        first = train_and_deploy(crippled)  # a first model is the champion, however poor
        assert first.model_version == 1 and served_version(backend, crippled, image) == f"{group}/1"

        # Better and significant, but the reviewer says no: nothing changes.
        refused = reviewed_retrain(good, {"approve": False, "comment": "not before the release freeze ends"})
        assert not refused.promoted and "rejected by a reviewer: not before the release freeze ends" in refused.reason
        assert refused.challenger.test_accuracy > refused.champion.test_accuracy + 0.3 and refused.p_value < 0.001
        assert served_version(backend, crippled, image) == f"{group}/1"

        # The same rule, approved: deployed blue/green, smoke-tested, promoted.
        approved = reviewed_retrain(good.model_copy(update={"training": good.training.model_copy(update={"seed": 1})}),
                                    {"approve": True})
        assert approved.promoted and approved.serving == f"{group}/3" and "approved by a reviewer" in approved.reason
        assert served_version(backend, crippled, image) == f"{group}/3"
        function = next(f for f in backend.gateway.client().status()["functions"] if f["name"] == crippled.names.function)
        assert function["environment"]["MODEL_VERSION"] == f"{group}/3"

        # A crippled challenger is not promoted; the CLI's --json says so, and exits 0.
        from flows.cli import main
        from prefect.settings import PREFECT_API_URL

        # The champion's own data and configuration: its job is found again, nothing is trained.
        same = retrain(good.model_copy(update={"training": good.training.model_copy(update={"seed": 1})}))
        assert not same.promoted and same.reason.startswith("nothing new was trained")
        assert same.challenger.version == 3 and same.serving == f"{group}/3"

        crippled_file = tmp_path / "crippled.json"
        crippled_file.write_text(config_for(home, digits, crippled=True, seed=2).model_dump_json())
        monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
        capsys.readouterr()
        assert main(["retrain", "--config", str(crippled_file), "--json"]) == 0
        verdict = json.loads(capsys.readouterr().out)
        assert verdict["promoted"] is False and verdict["champion"]["version"] == 3
        assert verdict["challenger"]["version"] == 4 and verdict["challenger"]["status"] == "Rejected"
        assert verdict["champion"]["test_accuracy"] > verdict["challenger"]["test_accuracy"]
        assert set(verdict) >= {"promoted", "reason", "champion", "challenger", "p_value"}
        assert served_version(backend, crippled, image) == f"{group}/3"

        # Serving the crippled version 1 again fails its smoke test: back to version 3.
        strict = crippled.model_copy(update={"promotion": crippled.promotion.model_copy(
            update={"smoke_test_min_accuracy": 0.8})})
        with pytest.raises(ReleaseRolledBackError, match=f"{group}/1 failed its smoke test.*{group}/3 serves again"):
            rollback(strict, 1)
        assert served_version(backend, crippled, image) == f"{group}/3"
        versions = {v.version: v for v in backend.registry.list_model_versions(group)}
        assert versions[3].champion and versions[1].status == "Rejected"
        assert versions[1].status_reason.startswith("failed its smoke test: accuracy")
        assert [versions[n].status for n in (2, 4)] == ["Rejected", "Rejected"]
        function = next(f for f in backend.gateway.client().status()["functions"] if f["name"] == crippled.names.function)
        assert function["environment"]["MODEL_VERSION"] == f"{group}/3"
    finally:
        backend.close()
        teardown(crippled)
