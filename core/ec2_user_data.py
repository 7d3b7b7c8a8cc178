"""The user data that turns a plain EC2 instance into a one-shot training job (the seed's
ec2train1.py, automated).

The script runs training/train.py unchanged under the SageMaker script-mode contract: an
/opt/ml layout (input/data/<channel>, model/, output/), the SM_* environment, hyperparameters as
command-line flags. It then packs model/ (which already holds code/inference.py) as
model.tar.gz and uploads, under `<output_uri>/<job_name>/`:

    output/model.tar.gz   the model, as SageMaker would store it (only when training succeeded)
    training.log.partial  the log so far, every `log_sync_seconds` while the job runs
    training.log          the whole log, at the end
    status.json           {"status": "Completed" | "Failed", "failure_reason": ...}, ALWAYS LAST

A trap on ERR and EXIT writes the log and status.json whatever happens, then shuts the
instance down (launched with InstanceInitiatedShutdownBehavior=terminate, so it terminates).
A scheduled `shutdown` at start is the dead man's switch for a job nobody is watching any more.
The first S3 reads (code, data, weights) are retried for up to `read_retry_s`: the instance
profile's credentials can take a while to work on a just-created role.

Pure: no AWS calls. Every value that reaches the script is shell-quoted (shlex.quote).
"""
from __future__ import annotations

import hashlib
import json
import shlex

from core.hyperparameters import hyperparameter_flags

# The public SSM parameter that names the latest Deep Learning OSS Nvidia Driver AMI GPU PyTorch
# on Amazon Linux 2023 (x86_64). Format documented at
# https://docs.aws.amazon.com/dlami/latest/devguide/find-dlami-id.html
# (/aws/service/deeplearning/ami/$architecture/$ami_type/latest/ami-id). PyTorch 2.13 is the
# newest AL2023 PyTorch DLAMI in the release notes (2026-10); its Python is /opt/pytorch/bin/python.
# Override it per backend (Ec2Training(ami_parameter=...) or SAGEMAKER_FLOWS_DLAMI_PARAMETER) or per
# run (ami_id=...).
DLAMI_SSM_PARAMETER = ("/aws/service/deeplearning/ami/x86_64/"
                       "oss-nvidia-driver-gpu-pytorch-2.13-amazon-linux-2023/latest/ami-id")

USER_DATA_LIMIT_BYTES = 16 * 1024  # EC2's limit on user data, before base64
DEFAULT_LOG_SYNC_SECONDS = 30
WATCHDOG_ALLOWANCE_S = 1800  # download + upload time the dead man's switch allows beyond max runtime
READ_RETRY_S = 120  # AWS: a new role (and its instance profile) is usable everywhere within about two minutes
CLIENT_TOKEN_MAX = 64  # EC2's limit on RunInstances' ClientToken


def job_prefix(output_uri: str, job_name: str) -> str:
    """`<output_uri>/<job_name>`: where one job's model, log and status marker go."""
    return f"{output_uri.rstrip('/')}/{job_name}"


def launch_token(job_name: str, attempt: int) -> str:
    """RunInstances' ClientToken for one attempt of a job: the same on every retry of that attempt
    (botocore's, a task's, a flow run's), so EC2 answers with the instance it already launched.
    A new attempt (the previous one ended without a model) gets the next number, never a random one."""
    if attempt < 1:
        raise ValueError(f"attempt must be 1 or more, got {attempt}")
    suffix = f"-a{attempt}"
    if len(job_name) + len(suffix) <= CLIENT_TOKEN_MAX:
        return job_name + suffix
    digest = hashlib.sha256(job_name.encode()).hexdigest()[:16]  # a cut name must stay unique
    return f"{job_name[:CLIENT_TOKEN_MAX - len(suffix) - 17]}-{digest}{suffix}"


def render_user_data(job_name: str, code_uri: str, data_uri: str, output_uri: str,
                     hyperparameters: dict[str, str], region: str, max_runtime_s: int,
                     pretrained_uri: str | None = None, *, watchdog_s: int | None = None,
                     log_sync_seconds: int = DEFAULT_LOG_SYNC_SECONDS, read_retry_s: int = READ_RETRY_S,
                     ml_root: str = "/opt/ml") -> str:
    """The bash script an instance runs at first boot to train, upload and shut down.

    `code_uri` is a .tar.gz of training/*.py (train.py at its top); `data_uri` a prefix holding
    train/, valid/, test/; `pretrained_uri` a weights file (or a prefix ending in '/') for the
    `pretrained` channel. `watchdog_s` (default: max runtime + 30 min) is when the instance shuts
    itself down even if the script hangs. `read_retry_s` is how long the first S3 reads are
    retried while the instance profile's credentials propagate. `ml_root` exists for tests; on
    EC2 it is /opt/ml.
    """
    for name, uri in (("code_uri", code_uri), ("data_uri", data_uri), ("output_uri", output_uri),
                      ("pretrained_uri", pretrained_uri or "s3://")):
        if not uri.startswith("s3://"):
            raise ValueError(f"{name} must be an s3:// URI, got {uri!r}")
    if not job_name or "/" in job_name or job_name.strip() != job_name:
        raise ValueError(f"job_name {job_name!r} is not a valid job name")
    if int(max_runtime_s) < 1:
        raise ValueError(f"max_runtime_s must be positive, got {max_runtime_s}")
    max_runtime_s = int(max_runtime_s)
    watchdog_s = int(watchdog_s) if watchdog_s else max_runtime_s + WATCHDOG_ALLOWANCE_S
    hyperparameters = {str(k): str(v) for k, v in hyperparameters.items()}
    flags = hyperparameter_flags(hyperparameters)
    channels = ["training"] + (["pretrained"] if pretrained_uri else [])
    q = shlex.quote

    train_args = "".join(f"\n    {q(name)} {q(value)}" for name, value in zip(flags[::2], flags[1::2]))
    header = f"""\
#!/bin/bash
# sagemaker-flows: EC2 training job {q(job_name)} (generated by core/ec2_user_data.py).
# Downloads the code and data, runs train.py as SageMaker script mode would, uploads
# model.tar.gz and the log, writes status.json LAST, and shuts the instance down.
set -euo pipefail

JOB_NAME={q(job_name)}
CODE_URI={q(code_uri)}
DATA_URI={q(data_uri.rstrip('/') + '/')}
PRETRAINED_URI={q(pretrained_uri or '')}
JOB_URI={q(job_prefix(output_uri, job_name))}
MODEL_URI="$JOB_URI/output/model.tar.gz"
LOG_URI="$JOB_URI/training.log"
PARTIAL_LOG_URI="$JOB_URI/training.log.partial"
STATUS_URI="$JOB_URI/status.json"
MAX_RUNTIME_S={max_runtime_s}
WATCHDOG_MINUTES={-(-watchdog_s // 60)}
LOG_SYNC_SECONDS={max(1, int(log_sync_seconds))}
READ_RETRY_S={max(0, int(read_retry_s))}
ML={q(ml_root.rstrip('/') or '/')}
HPS_JSON={q(json.dumps(hyperparameters, sort_keys=True))}
CHANNELS_JSON={q(json.dumps(channels))}
TRAIN_ARGS=({train_args}
)
export AWS_DEFAULT_REGION={q(region)} AWS_REGION={q(region)}
"""
    script = header + _BODY
    size = len(script.encode())
    if size > USER_DATA_LIMIT_BYTES:
        raise ValueError(f"user data is {size} bytes, over EC2's {USER_DATA_LIMIT_BYTES}; "
                         "shorten the hyperparameters")
    return script


# Static: it reads only the variables the header sets, so nothing here needs quoting care.
_BODY = r"""
export SM_MODEL_DIR="$ML/model"
export SM_OUTPUT_DIR="$ML/output"
export SM_OUTPUT_DATA_DIR="$ML/output/data"
export SM_INPUT_DIR="$ML/input"
export SM_INPUT_CONFIG_DIR="$ML/input/config"
export SM_CHANNEL_TRAINING="$ML/input/data/training"
export SM_CHANNELS="$CHANNELS_JSON"
export SM_HPS="$HPS_JSON"
export SM_CURRENT_HOST=algo-1 SM_HOSTS='["algo-1"]'
export TRAINING_JOB_NAME="$JOB_NAME" PYTHONUNBUFFERED=1
LOG="$ML/training.log"
STAGE="starting"
STARTED_AT=$(date +%s)
INSTANCE_ID=""
LOG_SYNC_PID=""
STOPPED=0
FINISHED=0

json_string() {  # a JSON string literal, with no python needed (python may be what broke)
  local s
  s=$(printf '%s' "$1" | tr -d '\000-\010\013\014\016-\037')
  s=${s//\\/\\\\}; s=${s//\"/\\\"}; s=${s//$'\n'/\\n}; s=${s//$'\r'/\\r}; s=${s//$'\t'/\\t}
  printf '"%s"' "$s"
}

fetch() {  # fetch cp|sync SRC DST: retried with backoff (1, 2, 4 ... 16 s) for up to READ_RETRY_S, as a
  # just-created instance profile's credentials may not work yet; then it fails (and so the job)
  local verb=$1 src=$2 dst=$3 delay=1 left
  local deadline=$((SECONDS + READ_RETRY_S))
  until aws s3 "$verb" --only-show-errors "$src" "$dst"; do
    left=$((deadline - SECONDS))
    if [ "$left" -le 0 ]; then
      echo "sagemaker-flows: could not read $src within $READ_RETRY_S s"
      return 1
    fi
    echo "sagemaker-flows: could not read $src yet; trying again in $((delay < left ? delay : left)) s"
    sleep $((delay < left ? delay : left))
    delay=$((delay * 2 > 16 ? 16 : delay * 2))
  done
}

upload() {  # upload FILE URI [aws s3 cp options]: a few tries, never fails the caller
  local file=$1 uri=$2 try
  shift 2
  for try in 1 2 3 4 5; do
    aws s3 cp --only-show-errors "$@" "$file" "$uri" && return 0
    sleep $((try * 2))
  done
  echo "sagemaker-flows: could not upload $file to $uri"
  return 1
}

finish() {  # runs once, on ERR or EXIT: log, then status.json (always last), then shutdown
  local code=$1 status="Failed" reason=""
  if [ "$FINISHED" -eq 1 ]; then return 0; fi
  FINISHED=1
  trap - ERR
  set +e
  if [ "$code" -eq 0 ] && [ "$STAGE" = "done" ]; then
    status="Completed"
  elif [ "$STOPPED" -eq 1 ]; then
    reason="Stopped: the instance was stopped while $STAGE"
  elif [ "$STAGE" = "training" ] && [ "$code" -eq 124 ]; then
    reason="MaxRuntimeExceeded: training ran past $MAX_RUNTIME_S s and was stopped"
  elif [ -s "$SM_OUTPUT_DIR/failure" ]; then
    reason=$(head -c 1024 "$SM_OUTPUT_DIR/failure")
  elif [ "$STAGE" = "training" ] && [ "$code" -gt 128 ]; then
    reason="AlgorithmError: training was killed by signal $((code - 128)) (out of memory?)"
  elif [ "$STAGE" = "training" ]; then
    reason="AlgorithmError: training exited with code $code"
  else
    reason="ClientError: the job failed while $STAGE (exit code $code)"
  fi
  echo "sagemaker-flows: job $JOB_NAME ended: $status${reason:+: $reason}"
  if [ -n "$LOG_SYNC_PID" ]; then kill "$LOG_SYNC_PID" 2>/dev/null; fi
  upload "$LOG" "$LOG_URI"
  {
    printf '{"status": "%s", ' "$status"
    printf '"failure_reason": %s, ' "$( [ -n "$reason" ] && json_string "$reason" || echo null )"
    printf '"exit_code": %d, ' "$code"
    printf '"job_name": %s, "instance_id": %s, ' "$(json_string "$JOB_NAME")" "$(json_string "$INSTANCE_ID")"
    printf '"started_at": %d, "ended_at": %d}\n' "$STARTED_AT" "$(date +%s)"
  } > "$ML/status.json"
  upload "$ML/status.json" "$STATUS_URI" --content-type application/json
  shutdown -h now
}
trap 'finish $?' ERR EXIT
trap 'STOPPED=1; exit 143' TERM
trap 'STOPPED=1; exit 130' INT

imds() {  # IMDSv2 (the instance requires tokens); empty when there is no metadata service
  local token
  token=$(curl -sf --connect-timeout 2 --max-time 5 -X PUT \
    -H "X-aws-ec2-metadata-token-ttl-seconds: 300" http://169.254.169.254/latest/api/token) || return 0
  curl -sf --connect-timeout 2 --max-time 5 -H "X-aws-ec2-metadata-token: $token" \
    "http://169.254.169.254/latest/meta-data/$1" || true
}

sync_log() {  # the log so far, for whoever is watching; a separate key, so no race with the final one
  while sleep "$LOG_SYNC_SECONDS"; do
    aws s3 cp --only-show-errors "$LOG" "$PARTIAL_LOG_URI" || true
  done
}

# -- the /opt/ml layout, and everything from here on into the log -------------------------------
mkdir -p "$ML/code" "$SM_CHANNEL_TRAINING" "$SM_INPUT_CONFIG_DIR" "$SM_MODEL_DIR" "$SM_OUTPUT_DATA_DIR"
echo "sagemaker-flows: job $JOB_NAME, logging to $LOG"
exec >>"$LOG" 2>&1
INSTANCE_ID=$(imds instance-id)
echo "sagemaker-flows: job $JOB_NAME on ${INSTANCE_ID:-an unknown instance} ($(imds instance-type))," \
  "started $(date -u +%FT%TZ)"
shutdown -h "+$WATCHDOG_MINUTES" "sagemaker-flows: $JOB_NAME ran past its deadline" \
  || echo "sagemaker-flows: warning: could not schedule the watchdog shutdown"
sync_log &
LOG_SYNC_PID=$!

# -- inputs -------------------------------------------------------------------------------------
STAGE="downloading the training code"
fetch cp "$CODE_URI" "$ML/code.tar.gz"
tar -xzf "$ML/code.tar.gz" -C "$ML/code"
STAGE="downloading the training data"
fetch sync "$DATA_URI" "$SM_CHANNEL_TRAINING"
if [ -n "$PRETRAINED_URI" ]; then
  STAGE="downloading the pretrained weights"
  export SM_CHANNEL_PRETRAINED="$ML/input/data/pretrained"
  mkdir -p "$SM_CHANNEL_PRETRAINED"
  case "$PRETRAINED_URI" in
    */) fetch sync "$PRETRAINED_URI" "$SM_CHANNEL_PRETRAINED" ;;
    *) fetch cp "$PRETRAINED_URI" "$SM_CHANNEL_PRETRAINED/" ;;
  esac
fi
printf '%s\n' "$SM_HPS" > "$SM_INPUT_CONFIG_DIR/hyperparameters.json"

# -- the DLAMI's PyTorch environment (nothing is installed) -------------------------------------
STAGE="preparing the Python environment"
if [ -f /opt/pytorch/bin/activate ]; then
  set +u
  source /opt/pytorch/bin/activate
  set -u
fi
SM_NUM_GPUS=$( { nvidia-smi -L 2>/dev/null || true; } | grep -c '^GPU' || true)
SM_NUM_CPUS=$(nproc)
export SM_NUM_GPUS SM_NUM_CPUS
echo "sagemaker-flows: $(command -v python3), $SM_NUM_GPUS GPU(s), $SM_NUM_CPUS CPU(s)"

# -- training, as SageMaker script mode runs it -------------------------------------------------
STAGE="training"
cd "$ML/code"
TRAIN_EXIT=0
timeout --kill-after=60 "$MAX_RUNTIME_S" python3 -u train.py "${TRAIN_ARGS[@]}" || TRAIN_EXIT=$?
if [ "$TRAIN_EXIT" -ne 0 ]; then exit "$TRAIN_EXIT"; fi

# -- outputs: the model first, then (in finish) the log and, last, status.json ------------------
STAGE="packing the model"
if [ ! -f "$SM_MODEL_DIR/code/inference.py" ]; then
  echo "ClientError: training left no code/inference.py in the model folder" > "$SM_OUTPUT_DIR/failure"
  exit 1
fi
tar -czf "$ML/output/model.tar.gz" -C "$SM_MODEL_DIR" .
STAGE="uploading the model"
upload "$ML/output/model.tar.gz" "$MODEL_URI"
STAGE="done"
"""
