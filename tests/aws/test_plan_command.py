"""`sagemaker-flows plan` on the aws backend, against moto: the seed's configuration, a price table
of one's own, and the caller's least-privilege policy."""
import json
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

import backends.aws.backend as aws_backend
from core import caller_policy
from core import iam
from flows.cli import main
from tests.aws.fakes import answer

SEED = Path(__file__).resolve().parents[2] / "examples" / "pipeline.aws.yaml"


@pytest.fixture
def account(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with mock_aws():
        yield boto3.Session(region_name="us-east-1")


def test_the_seed_configuration_prices_its_run_and_fails_on_data_that_is_not_there(account, capsys):
    assert main(["plan", "--config", str(SEED)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("plan of dog-breeds-dev (aws, us-east-1):\n  + create  S3 bucket ")
    assert "+ create  tuning job " in out and "dev-tune-<run>  (4 training jobs, 2 at a time, on ml.m5.xlarge)" in out
    assert "on-demand prices as of 2025-01" in out
    assert "$8,395.00" in out  # the endpoint at its maximum: 100 x ml.m5.large x 730 h x $0.115
    assert "data.source s3://my-ml-data/dogImages: " in out and "check(s) failed" in out


def test_a_price_file_replaces_the_table_and_unknown_prices_say_so(account, tmp_path, capsys):
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"as_of": "2026-11-30", "source": "our negotiated rates",
                                  "regions": {"us-east-1": {"sagemaker_hosting": {"ml.m5.large": 0.1}}}}))
    assert main(["plan", "--config", str(SEED), "--prices", str(prices), "--json"]) == 1
    plan = json.loads(capsys.readouterr().out)
    shown = {c["item"]: c["shown"] for c in plan["costs"]}
    assert shown["endpoint at max capacity"] == "$7,300.00"
    assert shown["training (expected)"] == shown["function provisioned concurrency"] == "unknown"
    assert (plan["prices_as_of"], plan["prices_source"], plan["monthly_at_min_capacity"]) == (
        "2026-11-30", "our negotiated rates", None)

    prices.write_text("{not json")
    assert main(["plan", "--config", str(SEED), "--prices", str(prices)]) == 2
    assert "is not JSON" in capsys.readouterr().err


def test_caller_policy_is_the_least_privilege_policy_of_the_seed_run(account, capsys):
    assert main(["plan", "--config", str(SEED), "--caller-policy", "--json"]) == 0
    documents = json.loads(capsys.readouterr().out)
    assert list(documents) == [f"dog-breeds-dev-caller-{group}"
                               for group in ("storage", "roles", "sagemaker", "function", "scaling")]
    sids = {}
    for document in documents.values():
        assert document["Version"] == "2012-10-17" and caller_policy.policy_size(document) <= caller_policy.MANAGED_POLICY_MAX
        assert set(iam.wildcard_resources(document)) <= caller_policy.CALLER_WILDCARD_SIDS
        sids.update({s["Sid"]: s for s in document["Statement"]})
    assert sids["PipelineObjects"]["Resource"] == "arn:aws:s3:::sagemaker-flows-123456789012-us-east-1/dog-breeds/dev/*"
    assert sids["ReadGivenLocations"]["Resource"] == ["arn:aws:s3:::my-ml-data/dogImages/*",
                                                      "arn:aws:s3:::my-ml-data/weights/resnet50-11ad3fa6.pth"]
    assert sids["PassSagemakerRoleToItsService"]["Condition"] == {
        "StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}


def test_caller_policy_is_printed_under_headings_or_written_to_a_folder_with_its_commands(account, tmp_path, capsys):
    assert main(["plan", "--config", str(SEED), "--caller-policy", "--set", "training.mode=instance"]) == 0
    out = capsys.readouterr().out
    headings = [line for line in out.splitlines() if line.startswith("# dog-breeds-dev-caller-")]
    assert [h.split()[1] for h in headings] == [f"dog-breeds-dev-caller-{group}" for group in (
        "storage", "roles", "sagemaker", "instances", "function", "scaling")]
    assert all(h.endswith("of IAM's 6,144 characters)") for h in headings)

    folder = tmp_path / "caller-policy"
    assert main(["plan", "--config", str(SEED), "--caller-policy", str(folder)]) == 0
    out = capsys.readouterr().out
    written = sorted(folder.iterdir())
    assert [p.name for p in written] == sorted(f"dog-breeds-dev-caller-{group}.json"
                                               for group in ("storage", "roles", "sagemaker", "function", "scaling"))
    assert all(caller_policy.policy_size(json.loads(p.read_text())) <= caller_policy.MANAGED_POLICY_MAX for p in written)
    name = "dog-breeds-dev-caller-sagemaker"
    assert (f"  aws iam create-policy --policy-name {name} --policy-document file://{folder}/{name}.json\n" in out)
    assert (f"  aws iam attach-user-policy --user-name USER --policy-arn arn:aws:iam::123456789012:policy/{name}\n"
            in out) and "attach-role-policy --role-name ROLE" in out


def test_a_fault_that_outlasts_the_retries_is_one_line_naming_the_service(account, monkeypatch, capsys):
    # moto answers ListServiceQuotas with an error; AWS answering 500 after the client's retries is this.
    account.events.register("before-call.service-quotas.ListServiceQuotas", lambda **_: answer(
        500, {"Error": {"Code": "InternalError", "Message": "We encountered an internal error."}}))
    monkeypatch.setattr(aws_backend, "aws_session", lambda *args, **kwargs: account)

    assert main(["plan", "--config", str(SEED)]) == 1

    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert captured.err.startswith("error: service-quotas kept failing: ListServiceQuotas answered InternalError "
                                   "(HTTP 500) on every retry. This is on AWS's side")
    assert "try again in a few minutes" in captured.err
