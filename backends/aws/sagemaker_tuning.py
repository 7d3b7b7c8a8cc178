"""Hyperparameter tuning on SageMaker: the SDK v3 starts the tuning job, boto3 follows it.

`SageMakerTuning.run` is the aws counterpart of backends/local/tuning.py. It describes the
tuning job first and starts one (a `ModelTrainer` running training/train.py in the PyTorch
training image, under a `HyperparameterTuner`) only when none of that name exists, so a
retry attaches to the job a previous attempt started (a create whose answer was lost included:
SageMaker answers the resend ResourceInUse). A new flow run (a new job name) with the same
configuration attaches to the stage's tuning job tagged with the same configuration digest,
running or completed, instead of paying for another. It then polls the tuning job and its
training jobs, reports each trial once when it ends, and turns the result into a
`TuningOutcome`. A trial that completed without reporting the objective metric counts as
failed, as it does locally, so both backends choose the best trial the same way.

The SDK makes its own clients from the boto3 session (not from `sagemaker_client`), so an
endpoint override for it has to come from boto3's own configuration (AWS_ENDPOINT_URL_*);
the polling below uses the client passed in.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import boto3
from botocore.exceptions import ClientError

from backends.aws.errors import already_exists, or_none, while_role_propagates
from backends.aws.tuning_conversions import (
    CODE_IGNORE_PATTERNS, grid_size, pretrained_manifest, sdk_parameter_ranges, source_digest, trial_from_summary,
    trial_index, tuning_digest,
)
from backends.errors import WaitTimedOutError
from backends.types import TrialCallback, TrialProgressCallback, TrialSummary, TuningOutcome, TuningRequest
from backends.waiting import SYSTEM_CLOCK, Clock, wait_for
from core.metrics import METRIC_DEFINITIONS
from core.names import PipelineNames
from core.uris import parse_s3_uri

logger = logging.getLogger(__name__)

ENTRY_SCRIPT = "train.py"
TRAINING_CHANNEL = "training"
PRETRAINED_CHANNEL = "pretrained"
TERMINAL_TRIAL_STATUSES = frozenset({"Completed", "Failed", "Stopped"})
TERMINAL_TUNING_STATUSES = frozenset({"Completed", "Failed", "Stopped"})
# SageMaker's bounds of ResourceLimits.MaxRuntimeInSeconds.
_TUNING_RUNTIME_BOUNDS = (120, 15_768_000)
# The SDK's switch for its client-side role check (sagemaker.core.helper.iam_role_resolver).
_VALIDATE_ROLE_ENV = "SAGEMAKER_VALIDATE_ROLE"
# How many of the stage's newest tuning jobs, of each status, a re-run looks at for its configuration.
_SAME_CONFIGURATION_CANDIDATES = 50


@contextmanager
def _sdk_role_check_skipped() -> Iterator[None]:
    """ModelTrainer validates its role against the SDK's generic execution-role smoke test, which asks for
    VPC network-interface permissions. Our role is generated from what it guards (core/iam.py: one S3
    prefix, logs, image pulls; jobs run outside a VPC), so that check would reject it."""
    previous = os.environ.get(_VALIDATE_ROLE_ENV)
    os.environ[_VALIDATE_ROLE_ENV] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(_VALIDATE_ROLE_ENV, None)
        else:
            os.environ[_VALIDATE_ROLE_ENV] = previous


# -- the tuning job -------------------------------------------------------------------------

class SageMakerTuning:
    """Starts (once) and follows a SageMaker hyperparameter tuning job."""

    def __init__(self, boto_session: boto3.Session, sagemaker_client, s3_client, poll_seconds: float = 30.0,
                 clock: Clock = SYSTEM_CLOCK):
        self.boto_session = boto_session
        self.sagemaker_client = sagemaker_client
        self.s3_client = s3_client
        self.poll_seconds = poll_seconds
        self.clock = clock

    def run(self, request: TuningRequest, *, role_arn: str, region: str, source_dir: str,
            code_bucket_prefix: str | None = None, tags: dict[str, str] | None = None, name_prefix: str | None = None,
            on_trial: TrialCallback | None = None, on_trial_progress: TrialProgressCallback | None = None,
            timeout_s: float | None = None) -> TuningOutcome:
        """Run the tuning job `request.job_name` to its end (or attach to it if it exists) and return its trials.

        code_bucket_prefix: s3:// prefix the training code is uploaded under (default: `<output_uri>/code`);
        the execution role must be able to read it. tags: the pipeline's, put on the job with its
        configuration digest. name_prefix: the stage's tuning job names start with it; when the job does
        not exist, one of them with the same tags and digest, in progress or completed, is followed
        instead (the outcome then bears its name). timeout_s: past it, the tuning job is stopped and the
        outcome is Failed.
        """
        deadline = None if timeout_s is None else self.clock.now() + timeout_s
        static = self.static_hyperparameters(request)
        wanted_tags = {**(tags or {}), PipelineNames.DIGEST_TAG: tuning_digest(request, source_digest(source_dir))}
        if self.describe(request.job_name) is not None:
            logger.info("tuning job %s exists: attaching to it", request.job_name)
        elif (same := self.same_configuration(name_prefix, wanted_tags)) is not None:
            logger.info("tuning job %s: %s was asked the same and is not Failed: following it", request.job_name, same)
            request = replace(request, job_name=same)
        else:
            code_uri = code_bucket_prefix or parse_s3_uri(request.output_uri).join("code").uri
            try:
                self.start(request, role_arn=role_arn, region=region, source_dir=source_dir, code_uri=code_uri,
                           timeout_s=timeout_s, tags=wanted_tags)
            except ClientError as exc:  # started meanwhile, or a resend of a create whose answer was lost
                if not already_exists(exc, job=True):
                    raise
                logger.info("tuning job %s already exists: attaching to it", request.job_name)
        try:
            return self._follow(request, static, deadline, timeout_s, on_trial, on_trial_progress)
        except BaseException as exc:
            if not isinstance(exc, Exception):  # cancelled (Ctrl-C, flow cancellation): leave nothing running
                self.stop(request.job_name)
            raise

    @staticmethod
    def static_hyperparameters(request: TuningRequest) -> dict[str, str]:
        """What every trial gets besides its tuned values: the request's, and the weights file's name."""
        hyperparameters = {str(k): str(v) for k, v in request.static_hyperparameters.items()}
        if request.pretrained_uri and not request.pretrained_uri.endswith("/"):
            hyperparameters["pretrained-file"] = request.pretrained_uri.rpartition("/")[2]
        return hyperparameters

    # -- AWS calls ------------------------------------------------------------------------
    def describe(self, job_name: str) -> dict | None:
        return or_none(self.sagemaker_client.describe_hyper_parameter_tuning_job, HyperParameterTuningJobName=job_name)

    def same_configuration(self, name_prefix: str | None, wanted_tags: dict[str, str]) -> str | None:
        """The newest of the stage's tuning jobs carrying all of `wanted_tags` (the pipeline's and the
        digest) that completed with a trial that reported its objective, else that is still running."""
        if not name_prefix:
            return None
        for status in ("Completed", "InProgress"):  # a finished one costs nothing more
            summaries = self.sagemaker_client.list_hyper_parameter_tuning_jobs(
                NameContains=name_prefix, StatusEquals=status, SortBy="CreationTime", SortOrder="Descending",
                MaxResults=_SAME_CONFIGURATION_CANDIDATES)["HyperParameterTuningJobSummaries"]
            for summary in summaries:
                if status == "Completed" and not (summary.get("ObjectiveStatusCounters") or {}).get("Succeeded"):
                    continue  # no trial to choose from: a re-run should tune again
                # A tuning job carries at most 50 tags: one page.
                listed = self.sagemaker_client.list_tags(ResourceArn=summary["HyperParameterTuningJobArn"],
                                                         MaxResults=100)["Tags"]
                tags = {t["Key"]: t["Value"] for t in listed}
                if all(tags.get(k) == v for k, v in wanted_tags.items()):
                    return summary["HyperParameterTuningJobName"]
        return None

    def list_trials(self, job_name: str) -> list[dict]:
        """Every training job of the tuning job (all pages), oldest first."""
        summaries: list[dict] = []
        kwargs = {"HyperParameterTuningJobName": job_name, "MaxResults": 100,
                  "SortBy": "CreationTime", "SortOrder": "Ascending"}
        while True:
            page = self.sagemaker_client.list_training_jobs_for_hyper_parameter_tuning_job(**kwargs)
            summaries.extend(page.get("TrainingJobSummaries", []))
            token = page.get("NextToken")
            if not token:
                return summaries
            kwargs["NextToken"] = token

    def stop(self, job_name: str) -> None:
        try:
            self.sagemaker_client.stop_hyper_parameter_tuning_job(HyperParameterTuningJobName=job_name)
        except ClientError as exc:  # already ended or gone: nothing to stop
            logger.info("tuning job %s not stopped: %s", job_name, exc)

    def start(self, request: TuningRequest, *, role_arn: str, region: str, source_dir: str, code_uri: str,
              timeout_s: float | None = None, tags: dict[str, str] | None = None) -> None:
        """Create the tuning job with the SDK (ModelTrainer + HyperparameterTuner) and return without waiting.
        The job (and so each of its training jobs) carries `tags`."""
        from sagemaker.core.helper.session_helper import Session
        from sagemaker.core.shapes import Channel, DataSource, S3DataSource
        from sagemaker.core.training.configs import (
            Compute, InputData, MetricDefinition, OutputDataConfig, SourceCode, StoppingCondition)

        with warnings.catch_warnings():  # the SDK imports its own deprecated sagemaker.train.configs shim
            warnings.simplefilter("ignore", DeprecationWarning)
            from sagemaker.train import ModelTrainer
            from sagemaker.train.tuner import HyperparameterTuner

        from backends.aws.images import training_image_uri

        code = parse_s3_uri(code_uri)
        session = Session(boto_session=self._sdk_boto_session(region), sagemaker_client=self.sagemaker_client,
                          default_bucket=code.bucket)
        hyperparameters = self.static_hyperparameters(request)
        inputs: list = [InputData(channel_name=TRAINING_CHANNEL, data_source=request.dataset_uri.rstrip("/") + "/")]
        if request.pretrained_uri and request.pretrained_uri.endswith("/"):  # a folder: all of it
            inputs.append(InputData(channel_name=PRETRAINED_CHANNEL, data_source=request.pretrained_uri))
        elif request.pretrained_uri:  # one file: a manifest naming it alone (a Channel: InputData means S3Prefix)
            manifest = code.join(request.job_name, "pretrained.manifest")
            self.s3_client.put_object(Bucket=manifest.bucket, Key=manifest.key, ContentType="application/json",
                                      Body=json.dumps(pretrained_manifest(request.pretrained_uri)).encode())
            inputs.append(Channel(channel_name=PRETRAINED_CHANNEL, data_source=DataSource(s3_data_source=S3DataSource(
                s3_data_type="ManifestFile", s3_uri=manifest.uri, s3_data_distribution_type="FullyReplicated"))))
        metric_definitions = [dict(d) for d in METRIC_DEFINITIONS]

        with tempfile.TemporaryDirectory(prefix="sagemaker-flows-code-") as tmp:
            staged = os.path.join(tmp, "code")  # only the code: no caches or dotfiles in the upload
            shutil.copytree(source_dir, staged, ignore=shutil.ignore_patterns(*CODE_IGNORE_PATTERNS))
            with _sdk_role_check_skipped():
                trainer = ModelTrainer(
                    sagemaker_session=session,
                    role=role_arn,
                    # The tuner uploads the code to <default bucket>/<base_job_name>/tuning-<time>/input/.
                    base_job_name=code.join(request.job_name).key,
                    training_image=training_image_uri(region, request.instance_type),
                    source_code=SourceCode(source_dir=staged, entry_script=ENTRY_SCRIPT,
                                           ignore_patterns=list(CODE_IGNORE_PATTERNS)),
                    compute=Compute(instance_type=request.instance_type, instance_count=1),
                    stopping_condition=StoppingCondition(max_runtime_in_seconds=request.max_runtime_seconds),
                    output_data_config=OutputDataConfig(s3_output_path=request.output_uri),
                    hyperparameters=hyperparameters,
                )
            trainer.with_metric_definitions(
                [MetricDefinition(name=d["Name"], regex=d["Regex"]) for d in metric_definitions])
            tuner = HyperparameterTuner(
                model_trainer=trainer,
                objective_metric_name=request.objective_metric,
                objective_type=request.objective_type,
                hyperparameter_ranges=sdk_parameter_ranges(request.parameter_ranges),
                metric_definitions=metric_definitions,
                strategy=request.strategy,
                # Grid runs every combination; SageMaker takes no job count for it.
                max_jobs=None if request.strategy == "Grid" else request.max_jobs,
                max_parallel_jobs=request.max_parallel_jobs,
                max_runtime_in_seconds=_tuning_runtime(timeout_s),
                random_seed=request.seed or None,
                tags=dict(tags or {}),
            )
            # tune() makes the CreateHyperParameterTuningJob call; a just-created role may not be
            # assumable yet. A repeat uploads the code again (to a new tuning-<time> prefix): seconds.
            while_role_propagates(tuner.tune, clock=self.clock, inputs=inputs, job_name=request.job_name, wait=False)
        logger.info("started tuning job %s (%s, %s trials, %s at a time)", request.job_name, request.strategy,
                    "all grid" if request.strategy == "Grid" else request.max_jobs, request.max_parallel_jobs)

    # -- following ------------------------------------------------------------------------
    def _follow(self, request: TuningRequest, static: dict[str, str], deadline: float | None, timeout_s: float | None,
                on_trial: TrialCallback | None, on_trial_progress: TrialProgressCallback | None) -> TuningOutcome:
        name = request.job_name
        ended: dict[str, TrialSummary] = {}
        started: set[str] = set()  # SageMaker streams no epochs: a trial's progress is its start
        seen: dict = {}  # the last look: description and trial summaries

        def look() -> bool | None:
            """One look at the job, reporting the trials that ended since the last; True once it has ended."""
            description = self.describe(name)
            if description is None:
                raise RuntimeError(f"tuning job {name} disappeared while it was followed")
            summaries = self.list_trials(name)  # after describe: a finished job's list is complete
            seen.update(description=description, summaries=summaries)
            total = _total_trials(description, len(summaries))
            for position, summary in enumerate(summaries):
                job = summary["TrainingJobName"]
                if on_trial_progress and job not in started:
                    started.add(job)
                    on_trial_progress(job, {})
                if job in ended or summary["TrainingJobStatus"] not in TERMINAL_TRIAL_STATUSES:
                    continue
                ended[job] = self._trial(summary, trial_index(job, name, position), request.objective_metric)
                if on_trial:
                    on_trial(ended[job], len(ended), total)
            return True if description["HyperParameterTuningJobStatus"] in TERMINAL_TUNING_STATUSES else None

        timed_out = False
        remaining = math.inf if deadline is None else max(0.0, deadline - self.clock.now())
        try:
            wait_for(look, what=f"tuning job {name}", timeout_s=remaining, interval_s=self.poll_seconds,
                     clock=self.clock)
        except WaitTimedOutError:
            logger.warning("tuning job %s still %s after %s s: stopping it", name,
                           seen["description"]["HyperParameterTuningJobStatus"], timeout_s)
            self.stop(name)
            timed_out = True
        description, summaries = seen["description"], seen["summaries"]
        status = description["HyperParameterTuningJobStatus"]

        trials = sorted(
            (ended.get(s["TrainingJobName"])
             or trial_from_summary(s, trial_index(s["TrainingJobName"], name, i), request.objective_metric)
             for i, s in enumerate(summaries)),
            key=lambda t: (t.index, t.job_name))
        def outcome(status: str, reason: str | None = None) -> TuningOutcome:
            return TuningOutcome(name, status, request.objective_metric, request.objective_type, trials, reason,
                                 static_hyperparameters=dict(static))

        if timed_out:
            return outcome("Failed", f"tuning job {name} did not finish within {timeout_s:g} s and was stopped")
        if any(t.status == "Completed" for t in trials):
            return outcome("Completed")
        reasons = "; ".join(f"{t.job_name}: {t.failure_reason or t.status}" for t in trials) or "no trials ran"
        return outcome("Failed", description.get("FailureReason")
                       or f"tuning job {name} {status}, no trial completed ({reasons})")

    def _trial(self, summary: dict, index: int, objective_metric: str) -> TrialSummary:
        description = None
        if summary["TrainingJobStatus"] == "Completed":
            description = or_none(self.sagemaker_client.describe_training_job,
                                  TrainingJobName=summary["TrainingJobName"])
        return trial_from_summary(summary, index, objective_metric, description)

    def _sdk_boto_session(self, region: str) -> boto3.Session:
        """The session the SDK makes its clients from: ours, or the same credentials in `region`."""
        if self.boto_session.region_name == region:
            return self.boto_session
        credentials = self.boto_session.get_credentials()
        if credentials is None:
            return boto3.Session(region_name=region)
        frozen = credentials.get_frozen_credentials()  # the SDK only uploads code and creates the job: seconds
        return boto3.Session(aws_access_key_id=frozen.access_key, aws_secret_access_key=frozen.secret_key,
                             aws_session_token=frozen.token, region_name=region)


def _total_trials(description: dict, listed: int) -> int:
    config = description.get("HyperParameterTuningJobConfig") or {}
    limit = (config.get("ResourceLimits") or {}).get("MaxNumberOfTrainingJobs")
    if not limit and config.get("Strategy") == "Grid":
        limit = grid_size(config.get("ParameterRanges") or {})
    return max(int(limit or 0), listed, 1)


def _tuning_runtime(timeout_s: float | None) -> int | None:
    """A server-side stop a little after our own, should this process be gone by then."""
    if timeout_s is None:
        return None
    low, high = _TUNING_RUNTIME_BOUNDS
    return int(min(high, max(low, math.ceil(timeout_s) + 60)))
