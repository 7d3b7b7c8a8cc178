"""SageMaker hyperparameter tuning on moto, through the real SDK v3 (ModelTrainer + HyperparameterTuner).

moto implements CreateHyperParameterTuningJob, DescribeHyperParameterTuningJob and the training-job
calls, so the SDK really builds and sends its request, uploads the code to (moto's) S3, and the job
is described back. What moto lacks is stood in for with botocore event handlers on the boto3 session
(so both our client and the clients the SDK makes from that session get them):

- ListTrainingJobsForHyperParameterTuningJob: moto has no such API. A `before-call` handler answers
  with canned, schema-shaped HyperParameterTrainingJobSummaries, one scripted snapshot per poll, two
  per page so that pagination runs.
- StopHyperParameterTuningJob: moto has no such API either; a `before-call` handler records it.
- A running tuning job: moto marks one Completed on creation; an `after-call` handler rewrites the
  DescribeHyperParameterTuningJob status to InProgress until the last scripted snapshot of trials
  is listed, so the polling runs.

moto has ListHyperParameterTuningJobs and ListTags for tuning jobs, so a re-run's search for a job
of the same configuration runs on moto itself. Faults are injected after moto did the work (an
`after-call` or a late `before-send` handler raising a dropped connection: the answer is lost).

A botocore Stubber is not used: it intercepts every call of a client, and the point is that
moto answers the rest. The request the SDK sends is captured with a `before-parameter-build` handler.
"""
import io
import json
import os
import shutil
import tarfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

# Fake credentials before boto3 is imported: no test may reach a real AWS account.
for _key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
    os.environ[_key] = "testing"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"

import boto3  # noqa: E402
import pytest  # noqa: E402
from botocore.awsrequest import AWSResponse  # noqa: E402
from botocore.exceptions import ConnectionClosedError  # noqa: E402
from moto import mock_aws  # noqa: E402
from moto.core import DEFAULT_ACCOUNT_ID  # noqa: E402

from backends.aws import images  # noqa: E402
from backends.aws.sagemaker_tuning import SageMakerTuning  # noqa: E402
from backends.aws.tuning_conversions import (  # noqa: E402
    grid_size, pretrained_manifest, sdk_parameter_ranges, trial_from_summary, trial_index)
from backends.types import TuningRequest  # noqa: E402
from backends.waiting import Clock  # noqa: E402
from core.names import PipelineNames  # noqa: E402
from core.config import (  # noqa: E402
    CategoricalParameterRange, ContinuousParameterRange, IntegerParameterRange, ParameterRanges)
from core.metrics import METRIC_DEFINITIONS  # noqa: E402

REGION = "us-east-1"
BUCKET = "flows-bucket"
ROLE = "arn:aws:iam::123456789012:role/proj-dev-sagemaker"  # never created: the SDK's role check is skipped
TRAINING_DIR = Path(__file__).resolve().parents[2] / "training"
OUTPUT = f"s3://{BUCKET}/proj/dev/jobs"
CODE = f"s3://{BUCKET}/proj/dev/code"
T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
TAGS = {"sagemaker-flows:project": "proj", "sagemaker-flows:stage": "dev"}
PREFIX = "dev-tune"  # PipelineNames("proj", "dev").tuning_job_prefix

RANGES = ParameterRanges(
    continuous=[ContinuousParameterRange(name="learning-rate", min_value=0.0001, max_value=0.1,
                                         scaling_type="Logarithmic")],
    integer=[IntegerParameterRange(name="epochs", min_value=1, max_value=8)],
    categorical=[CategoricalParameterRange(name="batch-size", values=["32", "64", "128"])],
).to_sagemaker()
GRID_RANGES = ParameterRanges(
    integer=[IntegerParameterRange(name="epochs", min_value=1, max_value=2)],
    categorical=[CategoricalParameterRange(name="batch-size", values=["32", "64"])],
).to_sagemaker()


def _request(name: str = "dev-tune-250101-1200-ab12", **changes) -> TuningRequest:
    fields = dict(
        job_name=name,
        static_hyperparameters={"architecture": "resnet18", "image-size": "64", "freeze-backbone": "true"},
        parameter_ranges=RANGES, strategy="Bayesian", objective_metric="valid_loss", objective_type="Minimize",
        max_jobs=3, max_parallel_jobs=2, dataset_uri=f"s3://{BUCKET}/proj/dev/data/abc123",
        output_uri=OUTPUT, pretrained_uri=f"s3://{BUCKET}/proj/dev/weights/resnet18.pth",
        instance_type="ml.g5.xlarge", max_runtime_seconds=7200, seed=7)
    fields.update(changes)
    return TuningRequest(**fields)


def _summary(tuning: str, number: int, status: str, objective: float | None = None, reason: str | None = None,
             tuned: dict | None = None) -> dict:
    """A HyperParameterTrainingJobSummary as SageMaker returns it."""
    name = f"{tuning}-{number:03d}-{number:08x}"
    summary = {
        "TrainingJobName": name,
        "TrainingJobArn": f"arn:aws:sagemaker:{REGION}:123456789012:training-job/{name}",
        "TuningJobName": tuning,
        "CreationTime": T0 + timedelta(minutes=number),
        "TrainingJobStatus": status,
        "TunedHyperParameters": tuned or {"learning-rate": f"0.00{number}", "epochs": str(number),
                                          "batch-size": "64"},
    }
    if status in ("Completed", "Failed", "Stopped"):
        summary["TrainingStartTime"] = T0 + timedelta(minutes=number)
        summary["TrainingEndTime"] = T0 + timedelta(minutes=number, seconds=90)
    if objective is not None:
        summary["FinalHyperParameterTuningJobObjectiveMetric"] = {
            "Type": "Minimize", "MetricName": "valid_loss", "Value": objective}
        summary["ObjectiveStatus"] = "Succeeded"
    if reason:
        summary["FailureReason"] = reason
    return summary


class FakeSageMaker:
    """moto, plus what moto lacks (see the module docstring), on one boto3 session."""

    PAGE_SIZE = 2

    def __init__(self, session: boto3.Session):
        self.session = session
        self.created: list[dict] = []  # CreateHyperParameterTuningJob requests, as sent
        self.list_requests: list[dict] = []
        self.stopped: list[str] = []
        self.snapshots: list[list[dict]] = [[]]  # trial summaries per poll; the last one repeats
        self.never_ends = False  # the tuning job stays InProgress
        events = session.events
        events.register("before-parameter-build.sagemaker.CreateHyperParameterTuningJob", self._on_create)
        events.register("before-call.sagemaker.ListTrainingJobsForHyperParameterTuningJob", self._on_list)
        events.register("before-call.sagemaker.StopHyperParameterTuningJob", self._on_stop)
        events.register("after-call.sagemaker.DescribeHyperParameterTuningJob", self._on_describe)
        self.client = session.client("sagemaker", region_name=REGION)
        self.s3 = session.client("s3", region_name=REGION)

    def _on_create(self, params, **_):
        self.created.append(json.loads(json.dumps(params, default=str)))

    @property
    def polls(self) -> int:
        return sum(1 for r in self.list_requests if "NextToken" not in r)

    def _on_list(self, params, **_):
        body = json.loads(params["body"])
        self.list_requests.append(body)
        polls = self.polls
        summaries = self.snapshots[min(polls, len(self.snapshots)) - 1]
        start = int(body.get("NextToken", "0"))
        page = {"TrainingJobSummaries": summaries[start:start + self.PAGE_SIZE]}
        if start + self.PAGE_SIZE < len(summaries):
            page["NextToken"] = str(start + self.PAGE_SIZE)
        return AWSResponse("https://api.sagemaker", 200, {}, None), page

    def _on_stop(self, params, **_):
        self.stopped.append(json.loads(params["body"])["HyperParameterTuningJobName"])
        return AWSResponse("https://api.sagemaker", 200, {}, None), {}

    def _on_describe(self, parsed, **_):
        # Describe comes before the list on each poll: the job ends with the last snapshot.
        if "HyperParameterTuningJobStatus" in parsed:
            running = self.never_ends or self.polls + 1 < len(self.snapshots)
            parsed["HyperParameterTuningJobStatus"] = "InProgress" if running else "Completed"

    def jobs(self) -> list[str]:
        """Every tuning job SageMaker (moto) has."""
        return [j["HyperParameterTuningJobName"] for j in
                self.client.list_hyper_parameter_tuning_jobs()["HyperParameterTuningJobSummaries"]]

    @staticmethod
    def moto_job(name: str):
        """moto's own record of a tuning job (what ListHyperParameterTuningJobs reports)."""
        from moto.sagemaker.models import sagemaker_backends

        return sagemaker_backends[DEFAULT_ACCOUNT_ID][REGION].hyper_parameter_tuning_jobs[name]

    def finished_training_job(self, name: str) -> None:
        """A completed training job in moto, as the tuning job would have run it."""
        self.client.create_training_job(
            TrainingJobName=name, RoleArn=ROLE,
            AlgorithmSpecification={"TrainingImage": "image", "TrainingInputMode": "File"},
            OutputDataConfig={"S3OutputPath": OUTPUT},
            ResourceConfig={"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30},
            StoppingCondition={"MaxRuntimeInSeconds": 7200})

    def keys(self, prefix: str = "") -> list[str]:
        return [o["Key"] for o in self.s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])]


@pytest.fixture
def aws():
    with mock_aws():
        fake = FakeSageMaker(boto3.Session(region_name=REGION))
        fake.s3.create_bucket(Bucket=BUCKET)
        yield fake


@pytest.fixture
def source_dir(tmp_path) -> str:
    """training/ as it is in a working copy, byte-code caches included."""
    folder = tmp_path / "training"
    shutil.copytree(TRAINING_DIR, folder, ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"\0")
    return str(folder)


def _run(fake: FakeSageMaker, request: TuningRequest, source_dir: str, calls: list | None = None,
         clock: Clock | None = None, **kwargs):
    tuning = SageMakerTuning(fake.session, fake.client, fake.s3, poll_seconds=0, **({"clock": clock} if clock else {}))
    kwargs.setdefault("code_bucket_prefix", CODE)
    kwargs.setdefault("tags", TAGS)
    kwargs.setdefault("name_prefix", PREFIX)
    return tuning.run(request, role_arn=ROLE, region=REGION, source_dir=source_dir,
                      on_trial=(lambda t, done, total: calls.append((t.job_name, t.status, done, total)))
                      if calls is not None else None, **kwargs)


# -- a tuning job end to end --------------------------------------------------------------

def test_run_sends_our_tuning_job_and_reports_each_trial_once(aws, source_dir):
    request = _request()
    name = request.job_name
    one, two, three = (_summary(name, 1, "Completed", 0.52), _summary(name, 2, "Completed", 0.41),
                       _summary(name, 3, "Failed", reason="AlgorithmError: CUDA out of memory"))
    for s in (one, two):
        aws.finished_training_job(s["TrainingJobName"])
    aws.snapshots = [
        [one, {**two, "TrainingJobStatus": "InProgress"}],
        [one, two, {**three, "TrainingJobStatus": "InProgress"}],
        [one, two, three],
    ]
    calls: list = []
    assert "SAGEMAKER_VALIDATE_ROLE" not in os.environ

    outcome = _run(aws, request, source_dir, calls)

    # The request the SDK sent: ours.
    assert len(aws.created) == 1
    sent = aws.created[0]
    assert sent["HyperParameterTuningJobName"] == name
    config = sent["HyperParameterTuningJobConfig"]
    assert config["Strategy"] == "Bayesian"
    assert config["HyperParameterTuningJobObjective"] == {"Type": "Minimize", "MetricName": "valid_loss"}
    assert config["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 3, "MaxParallelTrainingJobs": 2}
    assert config["RandomSeed"] == 7
    for kind in ("ContinuousParameterRanges", "IntegerParameterRanges", "CategoricalParameterRanges"):
        assert config["ParameterRanges"][kind] == RANGES[kind], kind
    assert config["ParameterRanges"]["ContinuousParameterRanges"] == [
        {"Name": "learning-rate", "MinValue": "0.0001", "MaxValue": "0.1", "ScalingType": "Logarithmic"}]

    definition = sent["TrainingJobDefinition"]
    assert definition["RoleArn"] == ROLE
    assert definition["AlgorithmSpecification"]["TrainingImage"] == images.training_image_uri(REGION, "ml.g5.xlarge")
    assert "-gpu-" in definition["AlgorithmSpecification"]["TrainingImage"]
    assert definition["AlgorithmSpecification"]["MetricDefinitions"] == METRIC_DEFINITIONS
    assert definition["ResourceConfig"]["InstanceType"] == "ml.g5.xlarge"
    assert definition["ResourceConfig"]["InstanceCount"] == 1
    assert definition["StoppingCondition"]["MaxRuntimeInSeconds"] == 7200
    assert definition["OutputDataConfig"]["S3OutputPath"] == OUTPUT
    static = definition["StaticHyperParameters"]
    assert {k: static[k] for k in request.static_hyperparameters} == request.static_hyperparameters
    assert static["pretrained-file"] == "resnet18.pth"
    assert static["sagemaker_program"] == "train.py"
    assert not {"learning-rate", "epochs", "batch-size"} & set(static)  # tuned, so not static
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"] for c in definition["InputDataConfig"]}
    assert channels["training"]["S3Uri"] == f"s3://{BUCKET}/proj/dev/data/abc123/"
    assert channels["training"]["S3DataType"] == "S3Prefix"
    # The weights file alone (train.py finds it by --pretrained-file), not every file beside it.
    assert channels["pretrained"]["S3DataType"] == "ManifestFile"
    assert channels["pretrained"]["S3Uri"] == f"{CODE}/{name}/pretrained.manifest"
    manifest = aws.s3.get_object(Bucket=BUCKET, Key=f"proj/dev/code/{name}/pretrained.manifest")["Body"].read()
    assert json.loads(manifest) == [{"prefix": f"s3://{BUCKET}/proj/dev/weights/"}, "resnet18.pth"]
    # The pipeline's tags and what the job was asked to do, for a re-run to find it by.
    tags = {t["Key"]: t["Value"] for t in sent["Tags"]}
    assert tags == {**TAGS, PipelineNames.DIGEST_TAG: tags[PipelineNames.DIGEST_TAG]}
    assert len(tags[PipelineNames.DIGEST_TAG]) == 16

    # The code went up under the code prefix, without caches.
    submit = static["sagemaker_submit_directory"]
    assert submit.startswith(f"{CODE}/{name}/") and submit.endswith("/sourcedir.tar.gz")
    body = aws.s3.get_object(Bucket=BUCKET, Key=submit.removeprefix(f"s3://{BUCKET}/"))["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        members = tar.getnames()
    assert {"train.py", "model.py", "data.py", "inference.py"} <= set(members)
    assert not [m for m in members if "__pycache__" in m or m.endswith(".pyc")]
    assert all(k.startswith(f"proj/dev/code/{name}/") for k in aws.keys("proj/dev/code/"))
    assert set(aws.jobs()) == {name}
    assert aws.client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)[
        "HyperParameterTuningJobConfig"]["Strategy"] == "Bayesian"

    # Each trial reported once, when it ended, although it was listed on every poll.
    assert calls == [(one["TrainingJobName"], "Completed", 1, 3), (two["TrainingJobName"], "Completed", 2, 3),
                     (three["TrainingJobName"], "Failed", 3, 3)]
    assert any("NextToken" in r for r in aws.list_requests)  # three trials: two pages
    assert aws.stopped == []
    assert "SAGEMAKER_VALIDATE_ROLE" not in os.environ  # the SDK's role check was skipped only inside

    assert outcome.status == "Completed" and outcome.failure_reason is None
    assert (outcome.job_name, outcome.objective_metric, outcome.objective_type) == (name, "valid_loss", "Minimize")
    # What every trial was trained with besides its tuned values (SageMaker's own entries left out).
    assert outcome.static_hyperparameters == {**request.static_hyperparameters, "pretrained-file": "resnet18.pth"}
    assert [t.index for t in outcome.trials] == [0, 1, 2]
    first, second, failed = outcome.trials
    assert first.objective == 0.52 and second.objective == 0.41
    assert second.model_artifact == f"{OUTPUT}/{two['TrainingJobName']}/output/model.tar.gz"
    assert second.tuned_hyperparameters == {"learning-rate": "0.002", "epochs": "2", "batch-size": "64"}
    assert second.final_metrics == {"train:progress": 100.0}  # moto's FinalMetricDataList
    assert failed.status == "Failed" and failed.objective is None and failed.model_artifact is None
    assert failed.failure_reason == "AlgorithmError: CUDA out of memory"
    assert failed.duration_seconds == 90.0


def test_a_second_run_attaches_to_the_existing_job(aws, source_dir):
    request = _request()
    trial = _summary(request.job_name, 1, "Completed", 0.3)
    aws.finished_training_job(trial["TrainingJobName"])
    aws.snapshots = [[trial]]
    first_calls, second_calls = [], []

    first = _run(aws, request, source_dir, first_calls)
    uploaded = aws.keys()
    second = _run(aws, request, source_dir, second_calls)

    assert len(aws.created) == 1  # no second CreateHyperParameterTuningJob
    assert aws.keys() == uploaded  # nor a second upload
    assert second == first
    assert first_calls == second_calls == [(trial["TrainingJobName"], "Completed", 1, 3)]


def test_a_job_past_its_timeout_is_stopped_and_fails(aws, source_dir):
    request = _request()
    aws.snapshots = [[_summary(request.job_name, 1, "InProgress")]]
    aws.never_ends = True
    calls: list = []

    outcome = _run(aws, request, source_dir, calls, timeout_s=0)

    assert aws.stopped == [request.job_name]
    # A server-side limit too, should this process be gone: SageMaker's minimum, 120 s.
    assert aws.created[0]["HyperParameterTuningJobConfig"]["ResourceLimits"]["MaxRuntimeInSeconds"] == 120
    assert outcome.status == "Failed" and "did not finish within 0 s" in outcome.failure_reason
    assert [t.status for t in outcome.trials] == ["InProgress"] and calls == []


def test_a_cancelled_run_stops_its_job_and_an_error_does_not(aws, source_dir):
    request = _request()
    aws.snapshots = [[_summary(request.job_name, 1, "Failed", reason="x")]]
    aws.never_ends = True
    tuning = SageMakerTuning(aws.session, aws.client, aws.s3, poll_seconds=0)

    def interrupted(*_):
        raise KeyboardInterrupt

    def broken(*_):
        raise RuntimeError("callback bug")

    with pytest.raises(RuntimeError):  # a bug here is no reason to stop the paid-for job: a re-run attaches
        tuning.run(request, role_arn=ROLE, region=REGION, source_dir=source_dir, on_trial=broken)
    assert aws.stopped == []
    with pytest.raises(KeyboardInterrupt):
        tuning.run(request, role_arn=ROLE, region=REGION, source_dir=source_dir, on_trial=interrupted)
    assert aws.stopped == [request.job_name] and len(aws.created) == 1


def test_grid_runs_every_combination_and_fails_when_no_trial_completes(aws, source_dir):
    request = _request("dev-grid-1", parameter_ranges=GRID_RANGES, strategy="Grid", pretrained_uri=None)
    name = request.job_name
    aws.snapshots = [[_summary(name, 1, "Failed", reason="ClientError: no images"),
                      _summary(name, 2, "Completed", tuned={"epochs": "2", "batch-size": "32"}),  # no objective
                      _summary(name, 3, "Stopped")]]
    aws.finished_training_job(f"{name}-002-00000002")
    calls: list = []

    outcome = _run(aws, request, source_dir, calls, code_bucket_prefix=None)

    sent = aws.created[0]
    assert "MaxNumberOfTrainingJobs" not in sent["HyperParameterTuningJobConfig"]["ResourceLimits"]
    assert "pretrained" not in {c["ChannelName"] for c in sent["TrainingJobDefinition"]["InputDataConfig"]}
    assert "pretrained-file" not in sent["TrainingJobDefinition"]["StaticHyperParameters"]
    assert sent["TrainingJobDefinition"]["StaticHyperParameters"]["sagemaker_submit_directory"].startswith(
        f"{OUTPUT}/code/{name}/")  # the default code location: under the output prefix
    assert [c[2:] for c in calls] == [(1, 4), (2, 4), (3, 4)]  # 2 epochs x 2 batch sizes
    assert outcome.status == "Failed"
    assert [t.status for t in outcome.trials] == ["Failed", "Failed", "Stopped"]
    assert outcome.trials[1].failure_reason == "the objective metric valid_loss was never reported"
    assert "ClientError: no images" in outcome.failure_reason and f"{name}-003-00000003: Stopped" in outcome.failure_reason


# -- repeated runs ------------------------------------------------------------------------

def test_a_lost_create_answer_is_attached_to_by_the_retry(aws, source_dir):
    request = _request()
    trial = _summary(request.job_name, 1, "Completed", 0.3)
    aws.finished_training_job(trial["TrainingJobName"])
    aws.snapshots = [[trial]]
    lost = []

    def lose(**_):  # SageMaker created the job; the answer never arrives
        if not lost:
            lost.append(1)
            raise ConnectionClosedError(endpoint_url="https://api.sagemaker.us-east-1.amazonaws.com")

    aws.session.events.register("after-call.sagemaker.CreateHyperParameterTuningJob", lose)
    with pytest.raises(ConnectionClosedError):
        _run(aws, request, source_dir)
    outcome = _run(aws, request, source_dir)  # the task's retry

    assert lost and aws.jobs() == [request.job_name] and len(aws.created) == 1
    assert outcome.status == "Completed" and outcome.job_name == request.job_name


def test_a_create_resent_by_botocore_after_a_lost_answer_attaches(aws, source_dir):
    request = _request()
    trial = _summary(request.job_name, 1, "Completed", 0.3)
    aws.finished_training_job(trial["TrainingJobName"])
    aws.snapshots = [[trial]]
    sent = []

    def drop_after_moto(event_name, request, **_):
        # Registered after moto's own before-send handler: moto has created the job, then the
        # connection drops. botocore resends the same request; SageMaker (moto) answers ResourceInUse.
        if event_name.endswith(".CreateHyperParameterTuningJob"):
            sent.append(1)
            if len(sent) == 1:
                raise ConnectionClosedError(endpoint_url=request.url)

    aws.session.events.register("before-send", drop_after_moto)
    outcome = _run(aws, request, source_dir)

    assert len(sent) == 2 and aws.jobs() == [request.job_name]
    assert outcome.status == "Completed" and outcome.job_name == request.job_name


def test_a_rerun_with_the_same_configuration_follows_that_job(aws, source_dir):
    first = _request("dev-tune-250101-1200-aaaa")
    trial = _summary(first.job_name, 1, "Completed", 0.3)
    aws.finished_training_job(trial["TrainingJobName"])
    aws.snapshots = [[trial]]
    done = _run(aws, first, source_dir)

    # A new flow run after a crash: a new name, the same configuration. The completed job is the answer.
    again = _run(aws, _request("dev-tune-250102-0900-bbbb"), source_dir)
    assert aws.jobs() == [first.job_name] and len(aws.created) == 1
    assert again.job_name == first.job_name and again.trials == done.trials and again.status == "Completed"

    # A changed configuration (one more trial) is tuned anew.
    changed = _run(aws, _request("dev-tune-250103-0900-cccc", max_jobs=4), source_dir)
    assert changed.job_name == "dev-tune-250103-0900-cccc"
    assert sorted(aws.jobs()) == [first.job_name, changed.job_name]
    # So is the same configuration of another pipeline (its tags differ).
    other = _run(aws, _request("dev-tune-250104-0900-dddd"), source_dir,
                 tags={**TAGS, "sagemaker-flows:project": "other"})
    assert other.job_name == "dev-tune-250104-0900-dddd" and len(aws.jobs()) == 3


def test_a_rerun_waits_for_a_running_job_of_the_same_configuration(aws, source_dir):
    first = _request("dev-tune-250101-1200-aaaa")
    name = first.job_name
    aws.snapshots = [[_summary(name, 1, "InProgress")]]
    aws.never_ends = True
    def process_killed(*_):
        raise SystemExit(137)  # as good as a crash: nothing after this line of the first run happens

    with pytest.raises(SystemExit):
        _run(aws, first, source_dir, on_trial_progress=process_killed)
    aws.stopped.clear()  # (an exit on the way out asks to stop it; a killed process would not have)
    aws.moto_job(name).hyper_parameter_tuning_job_status = "InProgress"  # moto's record: it runs on

    done = _summary(name, 1, "Completed", 0.2)
    aws.finished_training_job(done["TrainingJobName"])
    aws.never_ends = False
    aws.list_requests.clear()
    aws.snapshots = [[_summary(name, 1, "InProgress")], [done]]
    calls: list = []
    outcome = _run(aws, _request("dev-tune-250102-0900-bbbb"), source_dir, calls)

    assert aws.jobs() == [name] and len(aws.created) == 1
    assert outcome.job_name == name and outcome.status == "Completed" and calls == [(done["TrainingJobName"],
                                                                                     "Completed", 1, 3)]


def test_a_completed_job_with_no_usable_trial_is_not_reused(aws, source_dir):
    first = _request("dev-tune-250101-1200-aaaa")
    aws.snapshots = [[_summary(first.job_name, 1, "Failed", reason="boom")]]
    assert _run(aws, first, source_dir).status == "Failed"
    aws.moto_job(first.job_name).objective_status_counters = {"Succeeded": 0, "Pending": 0, "Failed": 1}
    again = _run(aws, _request("dev-tune-250102-0900-bbbb"), source_dir)
    assert again.job_name == "dev-tune-250102-0900-bbbb" and len(aws.jobs()) == 2


def test_a_role_not_yet_assumable_is_waited_for(aws, source_dir):
    request = _request()
    trial = _summary(request.job_name, 1, "Completed", 0.3)
    aws.finished_training_job(trial["TrainingJobName"])
    aws.snapshots = [[trial]]
    refusals = [3]

    def not_yet(**_):
        if refusals[0]:
            refusals[0] -= 1
            return AWSResponse("https://api.sagemaker", 400, {}, None), {"Error": {
                "Code": "ValidationException", "Message": f"Could not assume role {ROLE}. Please ensure that the "
                "role exists and allows principal 'sagemaker.amazonaws.com' to assume the role."}}

    aws.session.events.register("before-call.sagemaker.CreateHyperParameterTuningJob", not_yet)
    now, naps = [0.0], []
    clock = Clock(now=lambda: now[0], sleep=lambda s: (naps.append(s), now.__setitem__(0, now[0] + s)))
    outcome = _run(aws, request, source_dir, clock=clock)
    assert naps == [1.0, 2.0, 4.0] and aws.jobs() == [request.job_name] and outcome.status == "Completed"
    # (A role never assumable ends in RoleNotUsableError: test_ec2_training's profile test shows the budget.)


# -- pure conversions ---------------------------------------------------------------------

def test_the_pretrained_manifest_names_the_file_alone():
    assert pretrained_manifest("s3://b/p/weights/resnet18.pth") == [{"prefix": "s3://b/p/weights/"}, "resnet18.pth"]
    with pytest.raises(ValueError, match="prefix"):
        pretrained_manifest("s3://b/p/weights/")


def test_sdk_parameter_ranges_keep_kind_bounds_scaling_and_values():
    from sagemaker.core.parameter import CategoricalParameter, ContinuousParameter, IntegerParameter

    ranges = sdk_parameter_ranges(RANGES)
    lr, epochs, batch = ranges["learning-rate"], ranges["epochs"], ranges["batch-size"]
    assert isinstance(lr, ContinuousParameter) and (lr.min_value, lr.max_value, lr.scaling_type) == (
        0.0001, 0.1, "Logarithmic")
    assert isinstance(epochs, IntegerParameter) and (epochs.min_value, epochs.max_value, epochs.scaling_type) == (
        1, 8, "Auto")
    assert isinstance(batch, CategoricalParameter) and batch.values == ["32", "64", "128"]
    assert lr.as_tuning_range("learning-rate") == RANGES["ContinuousParameterRanges"][0]
    assert epochs.as_tuning_range("epochs") == RANGES["IntegerParameterRanges"][0]
    assert batch.as_tuning_range("batch-size") == RANGES["CategoricalParameterRanges"][0]


def test_sdk_parameter_ranges_refuse_empty_and_repeated_names():
    with pytest.raises(ValueError, match="empty"):
        sdk_parameter_ranges({"ContinuousParameterRanges": [], "IntegerParameterRanges": []})
    with pytest.raises(ValueError, match="more than one range"):
        sdk_parameter_ranges({"IntegerParameterRanges": [{"Name": "epochs", "MinValue": "1", "MaxValue": "3"}],
                              "CategoricalParameterRanges": [{"Name": "epochs", "Values": ["1", "2"]}]})


def test_grid_size_counts_every_combination():
    assert grid_size(GRID_RANGES) == 4
    assert grid_size(RANGES | {"ContinuousParameterRanges": []}) == 8 * 3


def test_trial_index_reads_sagemakers_trial_names():
    assert trial_index("dev-tune-1-007-0a1b2c3d", "dev-tune-1", 0) == 6
    assert trial_index("something-else", "dev-tune-1", 4) == 4


def test_trial_from_summary_completed_with_its_description():
    summary = _summary("t", 2, "Completed", 0.25, tuned={"batch-size": '"64"', "learning-rate": "0.01"})
    description = {"ModelArtifacts": {"S3ModelArtifacts": "s3://b/jobs/t-002/output/model.tar.gz"},
                   "TrainingTimeInSeconds": 312,
                   "FinalMetricDataList": [{"MetricName": "valid_loss", "Value": 0.25, "Timestamp": T0},
                                           {"MetricName": "test_accuracy", "Value": 0.9, "Timestamp": T0}]}
    trial = trial_from_summary(summary, 1, "valid_loss", description)
    assert (trial.index, trial.job_name, trial.status, trial.objective) == (1, "t-002-00000002", "Completed", 0.25)
    assert trial.tuned_hyperparameters == {"batch-size": "64", "learning-rate": "0.01"}  # JSON quotes dropped
    assert trial.final_metrics == {"valid_loss": 0.25, "test_accuracy": 0.9}
    assert trial.model_artifact == "s3://b/jobs/t-002/output/model.tar.gz"
    assert trial.duration_seconds == 312.0 and trial.failure_reason is None and trial.epochs == []


def test_trial_from_summary_failed_and_objectiveless():
    failed = trial_from_summary(_summary("t", 1, "Failed", reason="boom"), 0, "valid_loss")
    assert (failed.status, failed.failure_reason, failed.objective, failed.model_artifact) == ("Failed", "boom", None, None)
    assert failed.final_metrics == {} and failed.duration_seconds == 90.0
    silent = trial_from_summary(_summary("t", 2, "Completed"), 1, "test_accuracy")
    assert silent.status == "Failed"
    assert silent.failure_reason == "the objective metric test_accuracy was never reported"


def test_the_sdk_gets_a_session_in_the_jobs_region():
    session = boto3.Session(aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret", region_name="us-east-1")
    tuning = SageMakerTuning(session, sagemaker_client=None, s3_client=None)
    assert tuning._sdk_boto_session("us-east-1") is session
    other = tuning._sdk_boto_session("eu-west-1")
    assert other.region_name == "eu-west-1"
    assert other.get_credentials().get_frozen_credentials().access_key == "AKIDEXAMPLE"


# -- images -------------------------------------------------------------------------------

def test_images_are_ecr_uris_of_the_region():
    cpu = images.training_image_uri("eu-west-1", "ml.m5.xlarge")
    gpu = images.training_image_uri("eu-west-1", "ml.g5.xlarge")
    serve = images.inference_image_uri("ap-southeast-2", "ml.m5.large")
    arm = images.inference_image_uri("us-west-2", "ml.c7g.xlarge")
    assert cpu.endswith(f".dkr.ecr.eu-west-1.amazonaws.com/pytorch-training:"
                        f"{images.TRAINING_FRAMEWORK_VERSION}-cpu-{images.TRAINING_PY_VERSION}")
    assert gpu.endswith(f"/pytorch-training:{images.TRAINING_FRAMEWORK_VERSION}-gpu-{images.TRAINING_PY_VERSION}")
    assert serve.endswith(f".dkr.ecr.ap-southeast-2.amazonaws.com/pytorch-inference:"
                          f"{images.INFERENCE_FRAMEWORK_VERSION}-cpu-{images.INFERENCE_PY_VERSION}")
    assert ".dkr.ecr.us-west-2.amazonaws.com/pytorch-inference-arm64:" in arm  # Graviton
    for uri in (cpu, gpu, serve, arm):
        assert uri.split(".", 1)[0].isdigit() and len(uri.split(".", 1)[0]) == 12
