"""Training on one EC2 instance (the seed's ec2train1.py, automated).

One job = one instance from the PyTorch Deep Learning AMI, launched with the user data of
core/ec2_user_data.py: it trains under the SageMaker script-mode contract, uploads
`<output_uri>/<job>/output/model.tar.gz`, `training.log` and, last, `status.json`, then shuts
itself down (InstanceInitiatedShutdownBehavior=terminate). This side launches it, watches S3
for the status marker (streaming the partial log meanwhile), and makes sure the instance is
gone whatever happens here: failure, timeout, Ctrl-C.

Safe to repeat. A job whose status.json says Completed (and whose model is there) is returned
as it is. Otherwise the job's current attempt (`<job>/attempt.json`, written before each launch)
is launched with a ClientToken made of the job name and that number (core.ec2_user_data.launch_token):
every retry of the launch (botocore's, the task's, the flow run's) sends the same token, and EC2
answers with the instance it already launched instead of starting another. Only when that
attempt's instance has ended without a model does a run start the next attempt, under the next
token. A job never launched first attaches to a live instance of a job with the same configuration
(the pipeline's tags plus PipelineNames.DIGEST_TAG), as a re-run after a crash would find it.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone

from botocore.exceptions import ClientError

from backends.aws.ec2_job_files import JobFiles, LogFollower
from backends.aws.errors import error_code, is_not_found, while_role_propagates
from backends.errors import WaitTimedOutError
from backends.types import EpochCallback, LogCallback, TrainingOutcome, TrainingRequest
from backends.waiting import SYSTEM_CLOCK, Clock, wait_for
from core.ec2_user_data import DLAMI_SSM_PARAMETER, launch_token, render_user_data
from core.metrics import epoch_rows, final_metrics, parse_metric_log
from core.names import PipelineNames, configuration_digest
from core.retry import is_transient

log = logging.getLogger(__name__)

JOB_TAG = "sagemaker-flows:job"
MANAGED_TAG = "sagemaker-flows:managed"
DIGEST_TAG = PipelineNames.DIGEST_TAG
BOOT_AND_UPLOAD_ALLOWANCE_S = 900  # on top of max runtime: boot, downloads, packing, uploads
WATCHDOG_MARGIN_S = 300  # the instance's own shutdown comes this long after our deadline
_LIVE = ("pending", "running")
_FOLLOWED = (*_LIVE, "shutting-down")  # shutting down: its marker may still be on its way
_ENDED = ("terminated", "stopped")


@dataclass(frozen=True)
class _Launch:
    """Where and how a job's instance is launched: everything RunInstances gets but the job itself."""

    instance_type: str
    instance_profile_arn: str
    code_uri: str
    region: str
    watchdog_s: int
    ami_id: str | None = None
    subnet_id: str | None = None
    security_group_ids: tuple[str, ...] = ()
    tags: tuple[tuple[str, str], ...] = ()


class Ec2Training:
    def __init__(self, ec2, ssm, s3, poll_seconds: float = 15.0, *, ami_parameter: str | None = None,
                 clock: Clock = SYSTEM_CLOCK):
        self.ec2, self.ssm, self.s3 = ec2, ssm, s3
        self.poll_seconds = poll_seconds
        self.ami_parameter = ami_parameter or os.environ.get("SAGEMAKER_FLOWS_DLAMI_PARAMETER") or DLAMI_SSM_PARAMETER
        self.clock = clock

    # -- the job ----------------------------------------------------------------------------------
    def run(self, request: TrainingRequest, *, instance_type: str, instance_profile_arn: str, code_uri: str,
            region: str, timeout_s: float | None = None, ami_id: str | None = None, subnet_id: str | None = None,
            security_group_ids: list[str] | tuple[str, ...] | None = None, tags: dict[str, str] | None = None,
            on_log: LogCallback | None = None, on_epoch: EpochCallback | None = None) -> TrainingOutcome:
        """Train `request` on one instance and wait for it. Failed (with the reason) when training
        fails, the instance dies without a word, or nothing is heard within `timeout_s` (default:
        max runtime + 900 s); the instance is terminated in every case but success, where it has
        shut itself down. An exception here (KeyboardInterrupt included) terminates it and propagates;
        one while launching propagates alone (a retry gets the same instance), unless it is a
        cancellation. The outcome names the job followed: another job's, when one with the same
        configuration was already running."""
        started = time.time()
        objects = JobFiles.of(self.s3, request)
        hyperparameters = self._hyperparameters(request)
        done = self._completed(request, objects, hyperparameters)
        if done is not None:
            return done
        if timeout_s is None:
            timeout_s = request.max_runtime_seconds + BOOT_AND_UPLOAD_ALLOWANCE_S
        timeout = float(timeout_s)
        launch = _Launch(instance_type, instance_profile_arn, code_uri, region, int(timeout + WATCHDOG_MARGIN_S),
                         ami_id, subnet_id, tuple(security_group_ids or ()), tuple((tags or {}).items()))

        request, instance = self._attach_or_launch(request, hyperparameters, launch)
        objects = JobFiles.of(self.s3, request)  # another job's, when attached to one of the same configuration
        instance_id, elapsed = instance["InstanceId"], _age_seconds(instance)

        follower = LogFollower(on_log, on_epoch)
        marker: dict | None = None
        try:
            marker = self._wait(instance_id, objects, timeout, elapsed, follower, request.max_runtime_seconds)
        finally:
            if marker is not None and marker.get("status") == "Completed":
                self._terminate(instance_id, only_if_running=True)  # it shuts itself down; make sure
            else:
                self._terminate(instance_id)  # failure, timeout, or an exception on its way up
        try:
            final_log = objects.read(objects.log)
        except ClientError as exc:  # the result stands; only the log lines after the last sync are missing
            log.warning("could not read %s: %s", objects.log.uri, exc)
            final_log = None
        if final_log is not None:
            follower.feed(final_log[follower.offset:], final=True)
        return self._outcome(request, hyperparameters, marker, objects, follower.lines, time.time() - started)

    # -- before launching -------------------------------------------------------------------------
    @staticmethod
    def _hyperparameters(request: TrainingRequest) -> dict[str, str]:
        """The flags train.py gets: the request's, plus the weights file's name when the pretrained
        channel is one file (as the local backend does)."""
        hyperparameters = {str(k): str(v) for k, v in request.hyperparameters.items()}
        if request.pretrained_uri and not request.pretrained_uri.endswith("/"):
            hyperparameters.setdefault("pretrained-file", request.pretrained_uri.rsplit("/", 1)[1])
        return hyperparameters

    def _completed(self, request: TrainingRequest, objects: JobFiles,
                   hyperparameters: dict[str, str]) -> TrainingOutcome | None:
        """The outcome of an earlier run of this job that completed (its model still stored), else None."""
        marker = objects.read_marker()
        if not marker or marker.get("status") != "Completed" or not objects.exists(objects.model):
            return None
        log.info("training job %s: already completed, reusing %s", request.job_name, objects.model.uri)
        data = objects.read(objects.log) or objects.read(objects.partial_log) or b""
        lines = data.decode("utf-8", errors="replace").splitlines()
        duration = float(marker.get("ended_at", 0) or 0) - float(marker.get("started_at", 0) or 0)
        return self._outcome(request, hyperparameters, marker, objects, lines, max(0.0, duration))

    def _digest(self, request: TrainingRequest, hyperparameters: dict[str, str], launch: _Launch) -> str:
        """What the job was asked to do, without its name (PipelineNames.DIGEST_TAG)."""
        return configuration_digest({
            "hyperparameters": hyperparameters, "dataset_uri": request.dataset_uri, "output_uri": request.output_uri,
            "pretrained_uri": request.pretrained_uri, "max_runtime_seconds": request.max_runtime_seconds,
            "instance_type": launch.instance_type, "code_uri": launch.code_uri, "region": launch.region,
            "ami": launch.ami_id or self.ami_parameter, "subnet_id": launch.subnet_id,
            "security_group_ids": sorted(launch.security_group_ids), "watchdog_s": launch.watchdog_s,
        })

    def _attach_or_launch(self, request: TrainingRequest, hyperparameters: dict[str, str],
                          launch: _Launch) -> tuple[TrainingRequest, dict]:
        """The instance to follow, and the request of the job it runs: this job's current attempt while
        its instance lives; else a live instance of this job or of one with the same configuration;
        else a new attempt."""
        objects = JobFiles.of(self.s3, request)
        digest = self._digest(request, hyperparameters, launch)
        attempt = self._recorded_attempt(objects)
        if attempt is not None:
            instance = self._run_instance(request, hyperparameters, launch, digest, attempt)
            state = instance["State"]["Name"] if instance else "gone"
            if instance and state in _FOLLOWED:
                log.info("training job %s: attaching to %s (attempt %d, %s)", request.job_name,
                         instance["InstanceId"], attempt, state)
                return request, instance
            log.info("training job %s: attempt %d ended without a model (%s)", request.job_name, attempt, state)
            if instance and state != "terminated":  # stopping/stopped: not left behind with its volume
                self._terminate(instance["InstanceId"])

        pipeline_tags = dict(launch.tags)
        live = (self._live_instance({JOB_TAG: request.job_name})
                or self._live_instance({**pipeline_tags, DIGEST_TAG: digest}))
        if live is not None:
            owner = _tags(live).get(JOB_TAG) or request.job_name
            log.info("training job %s: attaching to %s, running job %s of the same configuration",
                     request.job_name, live["InstanceId"], owner)
            return replace(request, job_name=owner), live

        attempt = (attempt or 0) + 1
        self._clear_previous_attempt(objects)
        # Recorded before the launch: whatever happens after it, a retry sends this attempt's token.
        self._record_attempt(objects, attempt, launch_token(request.job_name, attempt))
        instance = self._run_instance(request, hyperparameters, launch, digest, attempt)
        if instance is None:  # a token never sent before cannot be in use
            raise RuntimeError(f"training job {request.job_name}: EC2 refused the launch token of attempt {attempt}")
        log.info("training job %s: attempt %d is %s (%s)", request.job_name, attempt, instance["InstanceId"],
                 launch.instance_type)
        return request, instance

    def _recorded_attempt(self, objects: JobFiles) -> int | None:
        data = objects.read(objects.attempt)
        if data is None:
            return None
        try:
            return max(1, int(json.loads(data)["attempt"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise RuntimeError(f"unreadable attempt record {objects.attempt.uri}: {exc}") from None

    def _record_attempt(self, objects: JobFiles, attempt: int, token: str) -> None:
        body = json.dumps({"attempt": attempt, "client_token": token}).encode()
        self.s3.put_object(Bucket=objects.attempt.bucket, Key=objects.attempt.key, Body=body,
                           ContentType="application/json")

    def _live_instance(self, tags: dict[str, str]) -> dict | None:
        """The newest pending or running instance carrying all of `tags`."""
        filters = [{"Name": f"tag:{k}", "Values": [v]} for k, v in tags.items()]
        filters.append({"Name": "instance-state-name", "Values": list(_LIVE)})
        pages = self.ec2.get_paginator("describe_instances").paginate(Filters=filters)
        instances = [i for page in pages for r in page["Reservations"] for i in r["Instances"]]
        return max(instances, key=lambda i: i["LaunchTime"]) if instances else None

    def _clear_previous_attempt(self, objects: JobFiles) -> None:
        """A failed earlier attempt's marker and logs must not be read as this attempt's."""
        for obj in (objects.status, objects.log, objects.partial_log):
            self.s3.delete_object(Bucket=obj.bucket, Key=obj.key)

    def _ami(self, ami_id: str | None) -> str:
        if ami_id:
            return ami_id
        return self.ssm.get_parameter(Name=self.ami_parameter)["Parameter"]["Value"]

    def _run_instance(self, request: TrainingRequest, hyperparameters: dict[str, str], launch: _Launch,
                      digest: str, attempt: int) -> dict | None:
        """RunInstances for one attempt of the job: the instance it launched, now or on an earlier call
        with the same token (EC2's idempotency), or None when that attempt's instance is long gone."""
        job_name = request.job_name
        token = launch_token(job_name, attempt)
        all_tags = {**dict(launch.tags), "Name": job_name, JOB_TAG: job_name, MANAGED_TAG: "true", DIGEST_TAG: digest}
        tag_list = [{"Key": k, "Value": v} for k, v in all_tags.items()]
        params = {
            "ImageId": self._ami(launch.ami_id),
            "InstanceType": launch.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "IamInstanceProfile": {"Arn": launch.instance_profile_arn},
            "UserData": render_user_data(job_name, launch.code_uri, request.dataset_uri, request.output_uri,
                                         hyperparameters, launch.region, request.max_runtime_seconds,
                                         request.pretrained_uri, watchdog_s=launch.watchdog_s),  # boto3 base64s it
            "InstanceInitiatedShutdownBehavior": "terminate",
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tag_list},
                                  {"ResourceType": "volume", "Tags": tag_list}],
            "ClientToken": token,
        }
        if launch.subnet_id:
            params["SubnetId"] = launch.subnet_id
        if launch.security_group_ids:
            params["SecurityGroupIds"] = list(launch.security_group_ids)
        try:
            # Retried here only while a new instance profile is not usable yet; throttling and dropped
            # connections are botocore's to retry (with this same token), then the task's.
            return while_role_propagates(self.ec2.run_instances, clock=self.clock, **params)["Instances"][0]
        except ClientError as exc:
            if error_code(exc) != "IdempotentParameterMismatch":
                raise
            # The token launched an instance with other parameters (the AMI parameter moved on since): that one.
            return self._instance_by_token(job_name, token)
        except Exception:
            raise  # a lost answer: the retry sends the same token and gets the same instance
        except BaseException:
            # Cancelled mid-request (Ctrl-C): it may have started one that nobody will follow.
            self._terminate_job_instances(job_name)
            raise

    def _instance_by_token(self, job_name: str, token: str) -> dict | None:
        pages = self.ec2.get_paginator("describe_instances").paginate(
            Filters=[{"Name": f"tag:{JOB_TAG}", "Values": [job_name]}])
        found = [i for page in pages for r in page["Reservations"] for i in r["Instances"]
                 if i.get("ClientToken") == token]
        return max(found, key=lambda i: i["LaunchTime"]) if found else None

    # -- while it runs ----------------------------------------------------------------------------
    def _wait(self, instance_id: str, objects: JobFiles, timeout: float, elapsed: float,
              follower: LogFollower, max_runtime: int) -> dict:
        """The instance's status marker, or one made up here when it ended silently or took too long."""
        def probe() -> dict | None:
            try:
                return self._poll(instance_id, objects, follower)
            except Exception as exc:  # noqa: BLE001 - a throttled poll must not end hours of training
                if not is_transient(exc):
                    raise
                log.warning("training job poll: %s; trying again", exc)
                return None

        try:
            return wait_for(probe, what=f"training job on {instance_id}", timeout_s=timeout - elapsed,
                            interval_s=self.poll_seconds, clock=self.clock)
        except WaitTimedOutError:
            return {"status": "Failed", "failure_reason":
                    f"MaxRuntimeExceeded: no status from {instance_id} within {timeout:.0f} s "
                    f"(max runtime {max_runtime} s plus boot and upload); the instance was terminated"}

    def _poll(self, instance_id: str, objects: JobFiles, follower: LogFollower) -> dict | None:
        """One look: the marker if there is one, new log lines, and whether the instance is gone."""
        marker = objects.read_marker(instance_id)
        if marker is not None:
            return marker
        partial = objects.read(objects.partial_log, start=follower.offset)
        if partial:
            follower.feed(partial)
        state, reason = self._state(instance_id)
        if state in _ENDED:
            marker = objects.read_marker(instance_id)  # written just before it shut down?
            if marker is not None:
                return marker
            return {"status": "Failed", "failure_reason":
                    f"instance ended without reporting a status: {instance_id} is {state}"
                    + (f" ({reason})" if reason else "")}
        return None

    def _state(self, instance_id: str) -> tuple[str, str]:
        try:
            reservations = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        except ClientError as exc:
            if is_not_found(exc):  # long gone
                return "terminated", "no longer listed"
            if is_transient(exc):
                return "unknown", ""
            raise
        instances = [i for r in reservations for i in r["Instances"]]
        if not instances:
            return "terminated", "no longer listed"
        instance = instances[0]
        return instance["State"]["Name"], (instance.get("StateReason") or {}).get("Message", "")

    def _terminate(self, instance_id: str, only_if_running: bool = False) -> None:
        """Never raises (it runs while another exception may be on its way up): a failure is logged."""
        try:
            if only_if_running and self._state(instance_id)[0] in ("shutting-down", "terminated"):
                return
            self.ec2.terminate_instances(InstanceIds=[instance_id])
            log.info("terminated %s", instance_id)
        except Exception as exc:  # noqa: BLE001 - reported, and the instance's own watchdog still stops it
            log.error("could not terminate %s: %s; it shuts itself down at its deadline", instance_id, exc)

    def _terminate_job_instances(self, job_name: str) -> None:
        try:
            while (instance := self._live_instance({JOB_TAG: job_name})) is not None:
                self._terminate(instance["InstanceId"])
                if self._state(instance["InstanceId"])[0] in _LIVE:  # terminate did not take: do not loop forever
                    break
        except Exception as exc:  # noqa: BLE001 - never hide the exception on its way up
            log.error("could not look for instances of %s to terminate: %s", job_name, exc)

    # -- the result -------------------------------------------------------------------------------
    @staticmethod
    def _outcome(request: TrainingRequest, hyperparameters: dict[str, str], marker: dict, objects: JobFiles,
                 lines: list[str], duration: float) -> TrainingOutcome:
        status = marker.get("status", "Failed")
        reason = marker.get("failure_reason") or None
        if status != "Completed" and not reason:
            reason = "training failed without a reason"
        return TrainingOutcome(
            job_name=request.job_name,
            status=status,
            hyperparameters=hyperparameters,
            failure_reason=None if status == "Completed" else reason,
            final_metrics=final_metrics(parse_metric_log(lines)),
            epochs=epoch_rows(lines),
            model_artifact=objects.model.uri if status == "Completed" else None,
            log_location=objects.log.uri,
            duration_seconds=duration,
        )



def _tags(instance: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in instance.get("Tags") or []}


def _age_seconds(instance: dict) -> float:
    """How long ago the instance was launched (0 for one launched just now)."""
    launched = instance.get("LaunchTime")
    if not isinstance(launched, datetime):
        return 0.0
    return max(0.0, (datetime.now(timezone.utc) - launched).total_seconds())
