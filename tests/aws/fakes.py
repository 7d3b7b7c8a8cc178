"""What moto lacks, answered in-process through botocore's event system.

Each fake registers `before-call` handlers that return an (http response, parsed response)
pair, which botocore takes instead of sending the request. They take an `events` emitter:
a client's `client.meta.events`, or a session's `session.events` to reach every client made
from it (the sagemaker SDK makes its own clients)."""
import json
from urllib.parse import unquote

import boto3
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ConnectionClosedError

REGION = "us-east-1"


def answer(status: int, parsed: dict, url: str = "https://aws.local/"):
    parsed = {**parsed, "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": {}, "RetryAttempts": 0}}
    return AWSResponse(url, status, {}, None), parsed


class FakeProvisioned:
    """Provisioned concurrency, which moto lacks, answered in-process from before-call handlers.

    Each config goes through `statuses` on successive Get calls after a Put (IN_PROGRESS, then READY
    by default); the last status sticks. `puts` holds the arguments of every Put.
    """

    def __init__(self, events, statuses=("IN_PROGRESS", "READY"), reason=""):
        self.statuses, self.reason = list(statuses), reason
        self.configs: dict[tuple[str, str], dict] = {}
        self.puts: list[dict] = []
        self.gets = 0
        for operation, handler in (("PutProvisionedConcurrencyConfig", self._put),
                                   ("GetProvisionedConcurrencyConfig", self._get),
                                   ("DeleteProvisionedConcurrencyConfig", self._delete)):
            events.register(f"before-call.lambda.{operation}", handler)

    @staticmethod
    def _key(params) -> tuple[str, str]:
        # url_path: /2019-09-30/functions/{FunctionName}/provisioned-concurrency
        return unquote(params["url_path"].split("/")[3]), params["query_string"]["Qualifier"]

    @staticmethod
    def _answer(status: int, parsed: dict):
        parsed = {**parsed, "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": {}, "RetryAttempts": 0}}
        return AWSResponse("https://lambda.us-east-1.amazonaws.com/", status, {}, None), parsed

    def _missing(self, key):
        message = f"No Provisioned Concurrency Config found for {key[0]}:{key[1]}"
        error = {"Code": "ProvisionedConcurrencyConfigNotFoundException", "Message": message}
        return self._answer(404, {"Error": error})

    def _view(self, key) -> dict:
        config = self.configs[key]
        status = config["statuses"][min(config["step"], len(config["statuses"]) - 1)]
        ready = config["requested"] if status == "READY" else 0
        view = {"RequestedProvisionedConcurrentExecutions": config["requested"],
                "AvailableProvisionedConcurrentExecutions": ready, "AllocatedProvisionedConcurrentExecutions": ready,
                "Status": status, "LastModified": "2024-01-01T00:00:00.000+0000"}
        if status == "FAILED":
            view["StatusReason"] = self.reason
        return view

    def _put(self, params, **kwargs):
        key = self._key(params)
        requested = json.loads(params["body"])["ProvisionedConcurrentExecutions"]
        self.puts.append({"FunctionName": key[0], "Qualifier": key[1], "ProvisionedConcurrentExecutions": requested})
        self.configs[key] = {"requested": requested, "statuses": list(self.statuses), "step": 0}
        return self._answer(202, self._view(key))

    def _get(self, params, **kwargs):
        key = self._key(params)
        self.gets += 1
        if key not in self.configs:
            return self._missing(key)
        view = self._view(key)
        self.configs[key]["step"] += 1
        return self._answer(200, view)

    def _delete(self, params, **kwargs):
        key = self._key(params)
        if self.configs.pop(key, None) is None:
            return self._missing(key)
        return self._answer(204, {})


class FakeSageMakerService:
    """The SageMaker behaviour moto lacks, for a whole pipeline run:
    - UpdateEndpoint (blue/green): the endpoint ends on the new config (delete + create in moto), or,
      after `roll_back_next_update()`, stays on the old one with a FailureReason, as SageMaker's
      auto-rollback leaves it;
    - ListTrainingJobsForHyperParameterTuningJob: every tuning job ran `trials` trials, which
      completed with objectives 0.5, 0.4, ... and exist in moto as training jobs (for artifacts)."""

    def __init__(self, events, trials: int = 2):
        self.trials = trials
        self.updates: list[dict] = []
        self.tuning_jobs: list[dict] = []
        self._roll_back = False
        self._client = boto3.client("sagemaker", region_name=REGION)  # plays SageMaker's own side
        events.register("before-parameter-build.sagemaker.CreateHyperParameterTuningJob", self._record_tuning)
        events.register("before-parameter-build.sagemaker.UpdateEndpoint", self._record_update)
        events.register("before-call.sagemaker.UpdateEndpoint", self._update)
        events.register("before-call.sagemaker.ListTrainingJobsForHyperParameterTuningJob", self._list)

    def _record_tuning(self, params, **_):
        self.tuning_jobs.append(json.loads(json.dumps(params, default=str)))

    def _record_update(self, params, **_):
        self.updates.append(dict(params))

    def roll_back_next_update(self) -> None:
        self._roll_back = True

    def _update(self, params, **_):
        request = self.updates[-1]
        if self._roll_back:
            from moto.core import DEFAULT_ACCOUNT_ID
            from moto.sagemaker.models import sagemaker_backends

            self._roll_back = False
            endpoint = sagemaker_backends[DEFAULT_ACCOUNT_ID][REGION].endpoints[request["EndpointName"]]
            endpoint.failure_reason = "the new variant did not pass its health check"
            return answer(200, {"EndpointArn": endpoint.arn})
        self._client.delete_endpoint(EndpointName=request["EndpointName"])
        self._client.create_endpoint(EndpointName=request["EndpointName"], EndpointConfigName=request["EndpointConfigName"])
        return answer(200, {"EndpointArn": f"arn:aws:sagemaker:{REGION}:123456789012:endpoint/{request['EndpointName']}"})

    def _list(self, params, **_):
        tuning = json.loads(params["body"])["HyperParameterTuningJobName"]
        created = next(j for j in self.tuning_jobs if j["HyperParameterTuningJobName"] == tuning)
        definition = created["TrainingJobDefinition"]
        summaries = []
        for number in range(1, self.trials + 1):
            name = f"{tuning}-{number:03d}-{number:08x}"
            try:
                self._client.describe_training_job(TrainingJobName=name)
            except self._client.exceptions.ClientError:
                self._client.create_training_job(
                    TrainingJobName=name, RoleArn=definition["RoleArn"],
                    AlgorithmSpecification={"TrainingImage": "image", "TrainingInputMode": "File"},
                    OutputDataConfig={"S3OutputPath": definition["OutputDataConfig"]["S3OutputPath"]},
                    ResourceConfig={"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30},
                    StoppingCondition={"MaxRuntimeInSeconds": 3600})
            summaries.append({
                "TrainingJobName": name, "TrainingJobArn": f"arn:aws:sagemaker:{REGION}:123456789012:training-job/{name}",
                "TuningJobName": tuning, "CreationTime": "2026-01-01T00:00:00Z", "TrainingJobStatus": "Completed",
                "TrainingStartTime": "2026-01-01T00:00:00Z", "TrainingEndTime": "2026-01-01T00:01:30Z",
                "TunedHyperParameters": {"learning-rate": f"0.00{number}", "batch-size": "32"},
                "FinalHyperParameterTuningJobObjectiveMetric": {"Type": "Minimize", "MetricName": "valid_loss",
                                                                 "Value": 0.6 - 0.1 * number},
                "ObjectiveStatus": "Succeeded"})
        return answer(200, {"TrainingJobSummaries": summaries})


class FakeEc2ClientTokens:
    """RunInstances' idempotency, which moto lacks (it launches again on a repeated ClientToken).
    As EC2 does: the same token with the same parameters answers with the instance that token
    launched (whatever its state now); with other parameters, IdempotentParameterMismatch.
    A `before-call` handler, so it sees every call the caller makes (botocore's own resends of
    one call go below it, straight to moto). `ec2` is a client to look instances up with."""

    def __init__(self, events, ec2):
        self.ec2 = ec2
        self.first_requests: dict[str, dict] = {}  # token -> the parameters it was first sent with
        self.repeats: list[str] = []  # tokens answered from an earlier launch
        events.register("before-call.ec2.RunInstances", self._run_instances)

    def _run_instances(self, params, **_):
        body = dict(params["body"])
        token = body.get("ClientToken")
        if not token:
            return None
        first = self.first_requests.setdefault(token, body)
        if first is body:
            return None  # a new token: moto launches
        if first != body:
            return answer(400, {"Error": {"Code": "IdempotentParameterMismatch", "Message":
                                          "Arguments on this idempotent request are inconsistent with arguments "
                                          "used in previous request(s)."}})
        for reservation in self.ec2.describe_instances()["Reservations"]:
            for instance in reservation["Instances"]:
                if instance.get("ClientToken") == token:
                    self.repeats.append(token)
                    return answer(200, {"ReservationId": reservation["ReservationId"],
                                        "OwnerId": reservation["OwnerId"], "Groups": reservation.get("Groups", []),
                                        "Instances": [instance]})
        return None  # the first request launched nothing: this one does


class FakeLambdaInvoke:
    """Lambda Invoke: moto runs function code in Docker, which this machine lacks. Answers as the
    real handler does for a good image, so the pipeline's smoke test can read it."""

    def __init__(self, events, label: str = "zero"):
        self.invocations: list[str] = []
        self.qualifiers: list[str | None] = []
        self.label = label
        events.register("before-call.lambda.Invoke", self._invoke)

    def _invoke(self, params, **_):
        self.invocations.append(unquote(params["url_path"].split("/")[3]))
        self.qualifiers.append(params["query_string"].get("Qualifier"))
        body = {"predictions": [{"label": self.label, "score": 0.9}], "model_version": "registry"}
        payload = json.dumps({"statusCode": 200, "headers": {"Content-Type": "application/json"},
                              "body": json.dumps(body)}).encode()
        http = AWSResponse("https://lambda.us-east-1.amazonaws.com/", 200, {"X-Amz-Executed-Version": "1"}, None)
        return http, {"StatusCode": 200, "Payload": _Stream(payload), "ExecutedVersion": "1",
                      "ResponseMetadata": {"HTTPStatusCode": 200, "HTTPHeaders": {}, "RetryAttempts": 0}}


class _Stream:
    def __init__(self, data: bytes):
        self.data = data

    def read(self) -> bytes:
        return self.data


class FakeAccountSettings:
    """Lambda GetAccountSettings, which moto lacks (it answers 404 "Not yet implemented"): an
    account with `limit` concurrent executions, none reserved by other functions."""

    def __init__(self, events, limit: int = 1000):
        self.limit = limit
        events.register("before-call.lambda.GetAccountSettings", self._settings)

    def _settings(self, **_):
        return answer(200, {"AccountLimit": {"ConcurrentExecutions": self.limit,
                                             "UnreservedConcurrentExecutions": self.limit},
                            "AccountUsage": {"FunctionCount": 0}})


def pipeline_fakes(events) -> dict:
    """Everything the whole pipeline needs that moto lacks, on one event emitter (a session's)."""
    return {"sagemaker": FakeSageMakerService(events), "provisioned": FakeProvisioned(events),
            "invoke": FakeLambdaInvoke(events), "account": FakeAccountSettings(events)}


def demo_on_aws(dataset, **changes):
    """The demo pipeline on the aws backend in us-east-1 with two trials; `changes`: settings of the
    training section to change (seed=1 ...)."""
    from core.config import PipelineConfig
    from core.demo import demo_config

    values = demo_config(str(dataset)).model_dump(mode="json")
    values.update(backend="aws", aws={"region": REGION})
    values["training"]["tuning"].update(max_jobs=2, max_parallel_jobs=2)
    values["training"].update(changes)
    return PipelineConfig.model_validate(values)


class LostAnswerResent:
    """botocore's retry after a dropped connection, on moto. The first send of `operation` reaches moto,
    which acts; then the connection closes before the answer arrives (ConnectionClosedError), and
    botocore's retry handler sends the request again, as it does after every ConnectionClosedError.
    The resend is answered with `refusal(body)` -> (status, code, message) as the real service answers
    it (moto still sees the resend and, for SageMaker, overwrites what it keeps with the same arguments,
    which changes nothing); without `refusal`, moto answers the resend itself. JSON protocols only
    (SageMaker's). `sends`: how many times the request went out.

    botocore calls the handlers of the operation's own event (`before-send.<service>.<operation>`)
    before those of plain `before-send`, where moto's is: `_answer` runs before moto, `_drop`, registered
    on `before-send` after moto's, runs after it."""

    def __init__(self, client, operation: str, refusal=None):
        self.refusal, self.sends = refusal, 0
        self.event = f"before-send.{client.meta.service_model.service_id.hyphenize()}.{operation}"
        client.meta.events.register(self.event, self._answer)
        client.meta.events.register("before-send", self._drop)

    def _answer(self, request, **_):
        self.sends += 1
        if self.sends > 1 and self.refusal is not None:
            status, code, message = self.refusal(json.loads(request.body))
            return AWSResponse(request.url, status, {"Content-Type": "application/x-amz-json-1.1"},
                               _Raw(json.dumps({"__type": code, "message": message}).encode()))
        return None

    def _drop(self, event_name, request, **_):
        if event_name == self.event and self.sends == 1:
            raise ConnectionClosedError(endpoint_url=request.url)


class _Raw:
    """The raw body of an AWSResponse made here."""

    def __init__(self, data: bytes):
        self.data = data

    def stream(self, **_):
        yield self.data
