"""core/ec2_user_data.py: the script an EC2 training instance runs at boot.

Besides reading the rendered text, the script is run for real here, with `aws`, `shutdown`,
`curl` and `nvidia-smi` stubbed on PATH (a folder stands in for S3) and a fake train.py, so the
trap, the quoting, the upload order and the status marker are checked by behaviour."""
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from core.ec2_user_data import (
    CLIENT_TOKEN_MAX, DLAMI_SSM_PARAMETER, READ_RETRY_S, USER_DATA_LIMIT_BYTES, launch_token, render_user_data)

HOSTILE = {
    "epochs": "3",
    "learning-rate": "0.01",
    "architecture": "$(touch /tmp/sagemaker-flows-pwned)`touch /tmp/sagemaker-flows-pwned`",
    "note": "it's \"quoted\"; rm -rf / && echo ${HOME} | cat\nsecond line\t\\",
}
ARGS = dict(job_name="digits-260101-000000-abcd", code_uri="s3://bkt/proj/code/training-0123.tar.gz",
            data_uri="s3://bkt/proj/datasets/digits", output_uri="s3://bkt/proj/jobs/",
            hyperparameters=HOSTILE, region="eu-west-1", max_runtime_s=3600)
BASH = shutil.which("bash")


def test_parameter_is_the_public_dlami_pytorch_al2023_one():
    assert DLAMI_SSM_PARAMETER.startswith("/aws/service/deeplearning/ami/x86_64/oss-nvidia-driver-gpu-pytorch-")
    assert DLAMI_SSM_PARAMETER.endswith("-amazon-linux-2023/latest/ami-id")


def test_script_has_the_contract():
    script = render_user_data(**ARGS)
    assert script.startswith("#!/bin/bash\n")
    assert "set -euo pipefail" in script
    for name in ("SM_CHANNEL_TRAINING", "SM_MODEL_DIR", "SM_OUTPUT_DIR", "SM_OUTPUT_DATA_DIR", "SM_NUM_GPUS",
                 "SM_NUM_CPUS", "SM_HPS"):
        assert f"export {name}" in script or f"export SM_NUM_GPUS SM_NUM_CPUS" in script, name
    assert "nvidia-smi -L" in script and "nproc" in script
    assert "source /opt/pytorch/bin/activate" in script
    assert 'timeout --kill-after=60 "$MAX_RUNTIME_S" python3 -u train.py' in script
    assert "MAX_RUNTIME_S=3600" in script
    assert "JOB_URI=s3://bkt/proj/jobs/digits-260101-000000-abcd\n" in script  # no double slash
    assert "DATA_URI=s3://bkt/proj/datasets/digits/\n" in script  # a prefix for `aws s3 sync`
    assert "export AWS_DEFAULT_REGION=eu-west-1" in script
    assert f"READ_RETRY_S={READ_RETRY_S}\n" in script and READ_RETRY_S == 120  # IAM's propagation, about 2 min
    assert "pip install" not in script and "dnf " not in script and "yum " not in script
    assert len(script.encode()) < USER_DATA_LIMIT_BYTES


def test_trap_uploads_log_then_status_then_shuts_down():
    script = render_user_data(**ARGS)
    assert "trap 'finish $?' ERR EXIT" in script
    finish = script[script.index("finish() {"):script.index("trap 'finish $?'")]
    log_up = finish.index('upload "$LOG" "$LOG_URI"')
    status_up = finish.index('upload "$ML/status.json" "$STATUS_URI"')
    assert log_up < status_up < finish.index("shutdown -h now")
    # in the main body, the model upload comes before the end (and so before finish's marker)
    assert script.index('upload "$ML/output/model.tar.gz" "$MODEL_URI"') < script.index('STAGE="done"')


def test_hostile_values_are_single_quoted():
    script = render_user_data(**ARGS)
    assert "'$(touch /tmp/sagemaker-flows-pwned)`touch /tmp/sagemaker-flows-pwned`'" in script
    assert "'it'\"'\"'s" in script  # shlex.quote's way with an embedded single quote


def test_bash_syntax_check():
    for pretrained in (None, "s3://bkt/proj/weights/resnet18.pth", "s3://bkt/proj/weights/"):
        script = render_user_data(**ARGS, pretrained_uri=pretrained)
        result = subprocess.run([BASH, "-n"], input=script, text=True, capture_output=True)
        assert result.returncode == 0, result.stderr


def test_every_first_read_goes_through_the_retrying_fetch():
    script = render_user_data(**ARGS, pretrained_uri="s3://bkt/proj/weights/resnet18.pth")
    body = script[script.index("# -- inputs"):script.index("# -- the DLAMI")]
    assert "aws s3" not in body  # no bare read that a credential delay would fail at once
    assert body.count("fetch ") == 4  # code, data, and the weights (a file or a prefix)


def test_launch_tokens_are_per_job_and_attempt_and_fit_ec2():
    assert launch_token("digits-260101-000000-abcd", 1) == "digits-260101-000000-abcd-a1"
    assert launch_token("digits-260101-000000-abcd", 2) == "digits-260101-000000-abcd-a2"
    long_a, long_b = "x" * 63, "x" * 62 + "y"
    assert len(launch_token(long_a, 100)) <= CLIENT_TOKEN_MAX
    assert launch_token(long_a, 1) != launch_token(long_b, 1)  # cut, yet still one token per job
    assert launch_token(long_a, 1) == launch_token(long_a, 1)
    with pytest.raises(ValueError):
        launch_token("job", 0)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="s3://"):
        render_user_data(**{**ARGS, "data_uri": "/local/folder"})
    with pytest.raises(ValueError, match="over EC2"):
        render_user_data(**{**ARGS, "hyperparameters": {"x": "y" * USER_DATA_LIMIT_BYTES}})


# -- running the script ---------------------------------------------------------------------------
FAKE_TRAIN = r'''
import json, os, sys
args = sys.argv[1:]
with open(os.path.join(os.environ["SM_OUTPUT_DATA_DIR"], "argv.json"), "w") as f:
    json.dump({"argv": args, "env": {k: v for k, v in os.environ.items() if k.startswith("SM_")}}, f)
mode = dict(zip(args[::2], args[1::2])).get("--mode", "ok")
print("loading data from", os.environ["SM_CHANNEL_TRAINING"], sorted(os.listdir(os.environ["SM_CHANNEL_TRAINING"])))
if os.environ.get("SM_CHANNEL_PRETRAINED"):
    print("pretrained:", sorted(os.listdir(os.environ["SM_CHANNEL_PRETRAINED"])))
print("[metric] epoch=1 train_loss=1.5 valid_loss=1.2 valid_accuracy=0.5", flush=True)
if mode == "fail":
    with open(os.path.join(os.environ["SM_OUTPUT_DIR"], "failure"), "w") as f:
        f.write("HyperparameterError: --learning-rate is outside [1e-08, 10.0]\n")
    sys.exit(1)
if mode == "crash":
    sys.exit(3)
if mode == "hang":
    import time
    time.sleep(60)
model = os.environ["SM_MODEL_DIR"]
os.makedirs(os.path.join(model, "code"), exist_ok=True)
open(os.path.join(model, "model.pth"), "wb").write(b"weights")
open(os.path.join(model, "code", "inference.py"), "w").write("def model_fn(d): pass\n")
print("[metric] test_loss=0.9 test_accuracy=0.7")
'''

FAKE_AWS = r'''#!{python}
# `aws s3 cp|sync SRC DST [options]` against a folder standing in for S3; every call is recorded.
import os, shutil, sys, time
root = os.environ["FAKE_S3"]
args = [a for a in sys.argv[1:] if not a.startswith("--")]
opts = sys.argv[1:]
if "--content-type" in opts:
    args.remove(opts[opts.index("--content-type") + 1])
with open(os.environ["AWS_CALLS"], "a") as f:
    f.write(" ".join(args) + "\n")
def local(uri):
    return os.path.join(root, uri[5:]) if uri.startswith("s3://") else uri
service, verb, src, dst = args
assert service == "s3", args
if os.environ.get("FAIL_ON") and os.environ["FAIL_ON"] in src + dst:
    # FAIL_TIMES: fail only the first so many matching calls (credentials that start working)
    times = os.environ.get("FAIL_TIMES")
    counter = os.environ["AWS_CALLS"] + ".failures"
    failed = int(open(counter).read()) if os.path.exists(counter) else 0
    if times is None or failed < int(times):
        open(counter, "w").write(str(failed + 1))
        sys.exit(1)
src, dst = local(src), local(dst)
if verb == "sync":
    shutil.copytree(src, dst, dirs_exist_ok=True)
else:
    if dst.endswith("/"):
        dst = os.path.join(dst, os.path.basename(src))
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copyfile(src, dst)
'''


@pytest.fixture
def sandbox(tmp_path):
    s3, bin_dir, ml = tmp_path / "s3", tmp_path / "bin", tmp_path / "opt-ml"
    bin_dir.mkdir()
    (bin_dir / "aws").write_text(FAKE_AWS.replace("{python}", sys.executable))
    (bin_dir / "shutdown").write_text('#!/bin/sh\necho "$*" >> "$SHUTDOWN_CALLS"\n')
    (bin_dir / "curl").write_text("#!/bin/sh\nexit 7\n")  # no metadata service here
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: NVIDIA A10G (UUID: GPU-1)'\n")
    (bin_dir / "python3").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    code = io.BytesIO()
    with tarfile.open(fileobj=code, mode="w:gz") as tar:
        data = FAKE_TRAIN.encode()
        info = tarfile.TarInfo("train.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    (s3 / "bkt/proj/code").mkdir(parents=True)
    (s3 / "bkt/proj/code/training-0123.tar.gz").write_bytes(code.getvalue())
    for rel in ("train/cat/1.png", "valid/cat/2.png", "test/cat/3.png"):
        (s3 / "bkt/proj/datasets/digits" / rel).parent.mkdir(parents=True, exist_ok=True)
        (s3 / "bkt/proj/datasets/digits" / rel).write_bytes(b"png")
    (s3 / "bkt/proj/weights").mkdir(parents=True)
    (s3 / "bkt/proj/weights/resnet18.pth").write_bytes(b"w")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_S3": str(s3),
           "AWS_CALLS": str(tmp_path / "aws-calls"), "SHUTDOWN_CALLS": str(tmp_path / "shutdown-calls")}
    return {"tmp": tmp_path, "s3": s3, "ml": ml, "env": env}


def _run(sandbox, hyperparameters, timeout=60, **kwargs):
    script = render_user_data(**{**ARGS, "hyperparameters": hyperparameters, **kwargs}, ml_root=str(sandbox["ml"]))
    path = sandbox["tmp"] / "user-data.sh"
    path.write_text(script)
    result = subprocess.run([BASH, str(path)], env=sandbox["env"], capture_output=True, text=True, timeout=timeout)
    job = sandbox["s3"] / "bkt/proj/jobs/digits-260101-000000-abcd"
    status = json.loads((job / "status.json").read_text()) if (job / "status.json").exists() else None
    calls = Path(sandbox["env"]["AWS_CALLS"]).read_text().splitlines()
    shutdowns = Path(sandbox["env"]["SHUTDOWN_CALLS"]).read_text().splitlines()
    return result, job, status, calls, shutdowns


def test_run_completes_uploads_in_order_and_shuts_down(sandbox):
    marker_file = Path("/tmp/sagemaker-flows-pwned")
    marker_file.unlink(missing_ok=True)
    result, job, status, calls, shutdowns = _run(sandbox, HOSTILE, pretrained_uri="s3://bkt/proj/weights/resnet18.pth")
    assert result.returncode == 0, (result.stdout, result.stderr, (sandbox["ml"] / "training.log").read_text())
    assert status["status"] == "Completed" and status["failure_reason"] is None and status["exit_code"] == 0
    assert status["job_name"] == ARGS["job_name"] and status["ended_at"] >= status["started_at"]
    # the model as SageMaker stores it, with the serving code inside
    with tarfile.open(job / "output/model.tar.gz") as tar:
        names = {n.lstrip("./") for n in tar.getnames()}
    assert {"model.pth", "code/inference.py"} <= names
    # train.py got every value exactly, hostile ones included, and nothing was executed
    seen = json.loads((sandbox["ml"] / "output/data/argv.json").read_text())
    expected = [item for k, v in HOSTILE.items() for item in (f"--{k}", v)]
    expected += ["--pretrained-file", "resnet18.pth"] if "--pretrained-file" in seen["argv"] else []
    assert seen["argv"] == expected
    assert not marker_file.exists()
    env = seen["env"]
    assert json.loads(env["SM_HPS"]) == HOSTILE
    assert env["SM_CHANNEL_TRAINING"] == str(sandbox["ml"] / "input/data/training")
    assert env["SM_MODEL_DIR"] == str(sandbox["ml"] / "model")
    assert env["SM_OUTPUT_DIR"] == str(sandbox["ml"] / "output")
    assert env["SM_OUTPUT_DATA_DIR"] == str(sandbox["ml"] / "output/data")
    assert env["SM_CHANNEL_PRETRAINED"] == str(sandbox["ml"] / "input/data/pretrained")
    assert env["SM_NUM_GPUS"] == "1" and int(env["SM_NUM_CPUS"]) >= 1
    assert (sandbox["ml"] / "input/data/pretrained/resnet18.pth").is_file()
    # upload order: model, then the log, then the status marker, last of all
    uploads = [c.split()[-1] for c in calls if c.split()[1] == "cp" and c.split()[-1].startswith("s3://")]
    assert uploads[-3:] == [f"s3://bkt/proj/jobs/{ARGS['job_name']}/output/model.tar.gz",
                            f"s3://bkt/proj/jobs/{ARGS['job_name']}/training.log",
                            f"s3://bkt/proj/jobs/{ARGS['job_name']}/status.json"]
    assert sum(1 for u in uploads if u.endswith("status.json")) == 1
    log = (job / "training.log").read_text()
    assert "[metric] epoch=1 train_loss=1.5" in log and "[metric] test_loss=0.9" in log
    assert shutdowns[0].startswith("-h +") and shutdowns[-1] == "-h now"


def test_training_failure_reports_the_failure_file(sandbox):
    result, job, status, calls, shutdowns = _run(sandbox, {"epochs": "1", "mode": "fail"})
    assert result.returncode == 1
    assert status["status"] == "Failed" and status["exit_code"] == 1
    assert status["failure_reason"] == "HyperparameterError: --learning-rate is outside [1e-08, 10.0]"
    assert not (job / "output/model.tar.gz").exists()
    assert (job / "training.log").exists() and shutdowns[-1] == "-h now"


def test_crash_and_timeout_and_setup_failure_reasons(sandbox):
    _, _, status, _, _ = _run(sandbox, {"mode": "crash"})
    assert status["status"] == "Failed" and status["failure_reason"] == "AlgorithmError: training exited with code 3"

    _, _, status, _, shutdowns = _run(sandbox, {"mode": "hang"}, max_runtime_s=1)
    assert status["failure_reason"] == "MaxRuntimeExceeded: training ran past 1 s and was stopped"
    assert shutdowns[-1] == "-h now"

    sandbox["env"]["FAIL_ON"] = "datasets/digits"
    _, job, status, calls, _ = _run(sandbox, {"epochs": "1"}, read_retry_s=2)
    assert status["status"] == "Failed"
    assert status["failure_reason"] == "ClientError: the job failed while downloading the training data (exit code 1)"
    log = (job / "training.log").read_text()
    assert "could not read s3://bkt/proj/datasets/digits/ within 2 s" in log  # gave up after its budget
    assert sum(1 for c in calls if "datasets/digits" in c) >= 2


def test_first_reads_are_retried_while_the_instance_profile_propagates(sandbox):
    # The data read fails twice (credentials not usable yet), then works: the job goes on and completes.
    sandbox["env"].update(FAIL_ON="datasets/digits", FAIL_TIMES="2")
    result, job, status, calls, _ = _run(sandbox, {"epochs": "1"})
    assert status["status"] == "Completed", (job / "training.log").read_text()
    assert [c for c in calls if "datasets/digits" in c] == ["s3 sync s3://bkt/proj/datasets/digits/ "
                                                             f"{sandbox['ml'] / 'input/data/training'}"] * 3
    log = (job / "training.log").read_text()
    assert "could not read s3://bkt/proj/datasets/digits/ yet; trying again in 1 s" in log
    assert "could not read s3://bkt/proj/datasets/digits/ yet; trying again in 2 s" in log  # backing off


def test_status_json_escapes_an_odd_failure_reason(sandbox):
    script_reason = 'bad "value"\\ here\tand\x01there'
    train = FAKE_TRAIN.replace("HyperparameterError: --learning-rate is outside [1e-08, 10.0]\\n",
                               script_reason.replace("\\", "\\\\").replace('"', '\\"').replace("\t", "\\t")
                               .replace("\x01", "\\x01"))
    code = io.BytesIO()
    with tarfile.open(fileobj=code, mode="w:gz") as tar:
        info = tarfile.TarInfo("train.py")
        info.size = len(train.encode())
        tar.addfile(info, io.BytesIO(train.encode()))
    (sandbox["s3"] / "bkt/proj/code/training-0123.tar.gz").write_bytes(code.getvalue())
    _, _, status, _, _ = _run(sandbox, {"mode": "fail"})
    assert status["failure_reason"] == 'bad "value"\\ here\tandthere'


def test_the_partial_log_goes_to_its_own_key(sandbox):
    result, job, status, calls, _ = _run(sandbox, {"mode": "hang"}, max_runtime_s=3, log_sync_seconds=1)
    assert status["status"] == "Failed"
    assert any(c.endswith("/training.log.partial") for c in calls)
    assert [c for c in calls if c.endswith("/status.json")] == [calls[-1]]

