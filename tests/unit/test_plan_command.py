"""`sagemaker-flows plan` on the local backend: the table, --json, and the exit code scripts gate on."""
import json

import pytest

from flows.cli import main


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SAGEMAKER_FLOWS_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_plan_demo_prints_what_it_creates_costs_and_checks(home, capsys):
    assert main(["plan", "--demo", "--data-dir", str(home / "digits")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("plan of sagemaker-flows-demo (local, this machine):\n  + create  dataset ")
    assert "  + create  endpoint       sagemaker-flows-demo-endpoint  (1 worker process(es) serving " in out
    assert "Plan: 7 to create, 0 to update, 0 to keep, 0 to delete." in out
    assert "$0.00" in out and "pre-flight checks" in out and "free disk" in out


def test_plan_json_and_exit_1_when_a_check_fails(home, capsys):
    data_dir = str(home / "digits")
    assert main(["plan", "--demo", "--data-dir", data_dir, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["backend"] == "local" and plan["failed"] == 0
    assert plan["counts"] == {"create": 7, "update": 0, "keep": 0, "delete": 0}
    assert [c["shown"] for c in plan["costs"]] == ["$0.00"]

    too_many = ["--set", "function.reserved_concurrency=100", "--set", "function.provisioned_concurrency=50"]
    assert main(["plan", "--demo", "--data-dir", data_dir, "--json", *too_many]) == 1
    failed = [c for c in json.loads(capsys.readouterr().out)["checks"] if c["status"] == "fail"]
    assert [c["name"] for c in failed] == ["function concurrency"]


def test_plan_needs_a_configuration_and_caller_policy_needs_aws(home, capsys):
    assert main(["plan"]) == 2
    assert "plan needs --config FILE (or --demo)" in capsys.readouterr().err
    assert main(["plan", "--demo", "--data-dir", str(home / "digits"), "--caller-policy"]) == 2
    assert "--caller-policy is the policy of an AWS caller: it needs backend: aws" in capsys.readouterr().err


def test_a_failed_check_under_enforce_false_does_not_claim_the_run_stops(home, capsys):
    data_dir = str(home / "digits")
    too_many = ["--set", "function.reserved_concurrency=100", "--set", "function.provisioned_concurrency=50"]
    assert main(["plan", "--demo", "--data-dir", data_dir, *too_many]) == 1
    assert "1 check(s) failed: a run stops before anything is paid for" in capsys.readouterr().out

    assert main(["plan", "--demo", "--data-dir", data_dir, *too_many, "--set", "preflight.enforce=false"]) == 1
    out = " ".join(capsys.readouterr().out.split())  # the footer as one line, whatever the terminal's width
    assert "a run stops before" not in out
    assert "1 check(s) failed and preflight.enforce is false: a run does not stop for them" in out


def test_prices_on_the_local_backend_and_a_folder_as_configuration_are_refused_in_one_line(home, capsys):
    assert main(["plan", "--demo", "--data-dir", str(home / "digits"), "--prices", "missing.json"]) == 2
    err = capsys.readouterr().err
    assert err == ("error: --prices missing.json: a price table prices AWS; the local backend's runs cost nothing, "
                   "so it has no use for one\n")

    assert main(["plan", "--config", str(home)]) == 2
    assert capsys.readouterr().err == f"error: configuration file {home} is a folder: give the YAML file in it\n"
