"""Training on one EC2 instance (the seed's ec2train1.py, automated).

One job = one instance from the PyTorch Deep Learning AMI, launched with the user data of
core/ec2_user_data.py: it trains under the SageMaker script-mode contract, uploads
`<output_uri>/<job>/output/model.tar.gz`, `training.log` and, last, `status.json`, then shuts
itself down (InstanceInitiatedShutdownBehavior=terminate). This side launches it, watches S3
for the status marker (streaming the partial log meanwhile), and makes sure the instance is
gone whatever happens here: failure, timeout, Ctrl-C.

Idempotent: a job whose status.json says Completed (and whose model is there) is returned as it
is; a live instance tagged with the job's name is attached to rather than launched again.
"""
from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from botocore.exceptions import ClientError

from backends.aws.errors import error_code, error_message, is_not_found, or_none
from backends.errors import WaitTimedOutError
from backends.types import EpochCallback, LogCallback, TrainingOutcome, TrainingRequest
from backends.waiting import SYSTEM_CLOCK, Clock, wait_for
from core.ec2_user_data import DLAMI_SSM_PARAMETER, job_prefix, render_user_data
from core.metrics import epoch_rows, final_metrics, parse_metric_line, parse_metric_log
from core.retry import is_transient
from core.uris import S3Uri, parse_s3_uri

log = logging.getLogger(__name__)

JOB_TAG = "sagemaker-flows:job"
MANAGED_TAG = "sagemaker-flows:managed"
BOOT_AND_UPLOAD_ALLOWANCE_S = 900  # on top of max runtime: boot, downloads, packing, uploads
WATCHDOG_MARGIN_S = 300  # the instance's own shutdown comes this long after our deadline
_LIVE = ("pending", "running")
_ENDED = ("terminated", "stopped")  # shutting-down / stopping: the marker may still be on its way
_PROFILE_PROPAGATION_TRIES = 8  # a just-created instance profile takes a few seconds to be usable


@dataclass(frozen=True)
class _JobObjects:
    prefix: S3Uri

    @classmethod
    def of(cls, request: TrainingRequest) -> "_JobObjects":
        return cls(parse_s3_uri(job_prefix(request.output_uri, request.job_name)))

    @property
    def model(self) -> S3Uri:
        return self.prefix.join("output", "model.tar.gz")

    @property
    def log(self) -> S3Uri:
        return self.prefix.join("training.log")

    @property
    def partial_log(self) -> S3Uri:
        return self.prefix.join("training.log.partial")

    @property
    def status(self) -> S3Uri:
        return self.prefix.join("status.json")


class _LogFollower:
    """Hands each log line to on_log (and each epoch line to on_epoch) once, in order, from the
    partial log while the job runs and from the final log at the end; keeps every line."""

    def __init__(self, on_log: LogCallback | None, on_epoch: EpochCallback | None):
        self.on_log, self.on_epoch = on_log, on_epoch
        self.offset = 0  # bytes consumed, always just after a newline
        self.lines: list[str] = []

    def feed(self, data: bytes, final: bool = False) -> None:
        """`data` is the log from byte `offset` on; only whole lines are taken unless final."""
        end = len(data) if final else data.rfind(b"\n") + 1
        if end <= 0:
            return
        self.offset += end
        for line in data[:end].decode("utf-8", errors="replace").splitlines():
            self.lines.append(line)
            if self.on_log:
                self.on_log(line)
            if self.on_epoch:
                values = parse_metric_line(line)
                if "epoch" in values:
                    self.on_epoch(values)


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
            security_group_ids: list[str] | None = None, tags: dict[str, str] | None = None,
            on_log: LogCallback | None = None, on_epoch: EpochCallback | None = None) -> TrainingOutcome:
        """Train `request` on one instance and wait for it. Failed (with the reason) when training
        fails, the instance dies without a word, or nothing is heard within `timeout_s` (default:
        max runtime + 900 s); the instance is terminated in every case but success, where it has
        shut itself down. An exception here (KeyboardInterrupt included) terminates it and propagates."""
        started = time.time()
        objects = _JobObjects.of(request)
        hyperparameters = self._hyperparameters(request)
        done = self._completed(request, objects, hyperparameters)
        if done is not None:
            return done
        if timeout_s is None:
            timeout_s = request.max_runtime_seconds + BOOT_AND_UPLOAD_ALLOWANCE_S
        timeout = float(timeout_s)

        instance_id, elapsed = self._live_instance(request.job_name)
        if instance_id is not None:
            log.info("training job %s: attaching to its running instance %s", request.job_name, instance_id)
        else:
            self._clear_previous_attempt(objects)
            user_data = render_user_data(request.job_name, code_uri, request.dataset_uri, request.output_uri,
                                         hyperparameters, region, request.max_runtime_seconds, request.pretrained_uri,
                                         watchdog_s=int(timeout + WATCHDOG_MARGIN_S))
            try:
                instance_id = self._launch(request.job_name, user_data, instance_type=instance_type,
                                           instance_profile_arn=instance_profile_arn, ami_id=ami_id,
                                           subnet_id=subnet_id, security_group_ids=security_group_ids, tags=tags)
            except BaseException:
                # a launch cut short (Ctrl-C mid-request, a lost response) may still have started one
                self._terminate_job_instances(request.job_name)
                raise
            elapsed = 0.0
            log.info("training job %s: launched %s (%s)", request.job_name, instance_id, instance_type)

        follower = _LogFollower(on_log, on_epoch)
        marker: dict | None = None
        try:
            marker = self._wait(instance_id, objects, timeout, elapsed, follower, request.max_runtime_seconds)
        finally:
            if marker is not None and marker.get("status") == "Completed":
                self._terminate(instance_id, only_if_running=True)  # it shuts itself down; make sure
            else:
                self._terminate(instance_id)  # failure, timeout, or an exception on its way up
        try:
            final_log = self._read(objects.log)
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

    def _completed(self, request: TrainingRequest, objects: _JobObjects,
                   hyperparameters: dict[str, str]) -> TrainingOutcome | None:
        """The outcome of an earlier run of this job that completed (its model still stored), else None."""
        marker = self._read_marker(objects)
        if not marker or marker.get("status") != "Completed" or not self._exists(objects.model):
            return None
        log.info("training job %s: already completed, reusing %s", request.job_name, objects.model.uri)
        data = self._read(objects.log) or self._read(objects.partial_log) or b""
        lines = data.decode("utf-8", errors="replace").splitlines()
        duration = float(marker.get("ended_at", 0) or 0) - float(marker.get("started_at", 0) or 0)
        return self._outcome(request, hyperparameters, marker, objects, lines, max(0.0, duration))

    def _live_instance(self, job_name: str) -> tuple[str | None, float]:
        """A pending or running instance of this job, and how long ago it was launched."""
        pages = self.ec2.get_paginator("describe_instances").paginate(Filters=[
            {"Name": f"tag:{JOB_TAG}", "Values": [job_name]},
            {"Name": "instance-state-name", "Values": list(_LIVE)},
        ])
        instances = [i for page in pages for r in page["Reservations"] for i in r["Instances"]]
        if not instances:
            return None, 0.0
        newest = max(instances, key=lambda i: i["LaunchTime"])
        elapsed = (datetime.now(timezone.utc) - newest["LaunchTime"]).total_seconds()
        return newest["InstanceId"], max(0.0, elapsed)

    def _clear_previous_attempt(self, objects: _JobObjects) -> None:
        """A failed earlier attempt's marker and logs must not be read as this attempt's."""
        for obj in (objects.status, objects.log, objects.partial_log):
            self.s3.delete_object(Bucket=obj.bucket, Key=obj.key)

    def _ami(self, ami_id: str | None) -> str:
        if ami_id:
            return ami_id
        return self.ssm.get_parameter(Name=self.ami_parameter)["Parameter"]["Value"]

    def _launch(self, job_name: str, user_data: str, *, instance_type: str, instance_profile_arn: str,
                ami_id: str | None, subnet_id: str | None, security_group_ids: list[str] | None,
                tags: dict[str, str] | None) -> str:
        all_tags = {**(tags or {}), "Name": job_name, JOB_TAG: job_name, MANAGED_TAG: "true"}
        tag_list = [{"Key": k, "Value": v} for k, v in all_tags.items()]
        params = {
            "ImageId": self._ami(ami_id),
            "InstanceType": instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "IamInstanceProfile": {"Arn": instance_profile_arn},
            "UserData": user_data,  # boto3 base64-encodes it
            "InstanceInitiatedShutdownBehavior": "terminate",
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tag_list},
                                  {"ResourceType": "volume", "Tags": tag_list}],
            # botocore's own retries of this call reuse the token: one instance, however often it is sent
            "ClientToken": f"{job_name[:30]}-{uuid.uuid4().hex}",
        }
        if subnet_id:
            params["SubnetId"] = subnet_id
        if security_group_ids:
            params["SecurityGroupIds"] = list(security_group_ids)
        for attempt in range(1, _PROFILE_PROPAGATION_TRIES + 1):
            try:
                return self.ec2.run_instances(**params)["Instances"][0]["InstanceId"]
            except ClientError as exc:
                retry = _profile_not_ready(exc) or is_transient(exc)
                if not retry or attempt == _PROFILE_PROPAGATION_TRIES:
                    raise
                log.info("run_instances: %s; retrying", exc)
                params["ClientToken"] = f"{job_name[:30]}-{uuid.uuid4().hex}"
                self.clock.sleep(min(2.0 * attempt, 10.0))
        raise AssertionError("unreachable")

    # -- while it runs ----------------------------------------------------------------------------
    def _wait(self, instance_id: str, objects: _JobObjects, timeout: float, elapsed: float,
              follower: _LogFollower, max_runtime: int) -> dict:
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

    def _poll(self, instance_id: str, objects: _JobObjects, follower: _LogFollower) -> dict | None:
        """One look: the marker if there is one, new log lines, and whether the instance is gone."""
        marker = self._read_marker(objects, instance_id)
        if marker is not None:
            return marker
        partial = self._read(objects.partial_log, start=follower.offset)
        if partial:
            follower.feed(partial)
        state, reason = self._state(instance_id)
        if state in _ENDED:
            marker = self._read_marker(objects, instance_id)  # written just before it shut down?
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
            while (instance_id := self._live_instance(job_name)[0]) is not None:
                self._terminate(instance_id)
                if self._state(instance_id)[0] in _LIVE:  # terminate did not take: do not loop forever
                    break
        except Exception as exc:  # noqa: BLE001 - never hide the exception on its way up
            log.error("could not look for instances of %s to terminate: %s", job_name, exc)

    # -- S3 ---------------------------------------------------------------------------------------
    def _read(self, obj: S3Uri, start: int = 0) -> bytes | None:
        """The object's bytes from `start` on; None when it does not exist, b"" when nothing is new."""
        try:
            if start:
                size = self.s3.head_object(Bucket=obj.bucket, Key=obj.key)["ContentLength"]
                if size <= start:
                    return b""
                return self.s3.get_object(Bucket=obj.bucket, Key=obj.key, Range=f"bytes={start}-")["Body"].read()
            return self.s3.get_object(Bucket=obj.bucket, Key=obj.key)["Body"].read()
        except ClientError as exc:
            if is_not_found(exc):
                return None
            raise

    def _exists(self, obj: S3Uri) -> bool:
        return or_none(self.s3.head_object, Bucket=obj.bucket, Key=obj.key) is not None

    def _read_marker(self, objects: _JobObjects, instance_id: str | None = None) -> dict | None:
        """status.json, if there is one from this instance (a marker naming another instance is an
        earlier attempt's, arriving late)."""
        data = self._read(objects.status)
        if data is None:
            return None
        try:
            marker = json.loads(data)
            if not isinstance(marker, dict) or marker.get("status") not in ("Completed", "Failed", "Stopped"):
                raise ValueError(f"unexpected content {data[:200]!r}")
        except ValueError as exc:
            return {"status": "Failed", "failure_reason": f"unreadable status marker {objects.status.uri}: {exc}"}
        if instance_id and marker.get("instance_id") and marker["instance_id"] != instance_id:
            return None
        return marker

    # -- the result -------------------------------------------------------------------------------
    @staticmethod
    def _outcome(request: TrainingRequest, hyperparameters: dict[str, str], marker: dict, objects: _JobObjects,
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


def _profile_not_ready(exc: ClientError) -> bool:
    """EC2 does not know a just-created instance profile yet (IAM is eventually consistent)."""
    message = error_message(exc).lower()
    return error_code(exc) == "InvalidParameterValue" and ("instance profile" in message or "iaminstanceprofile" in message)
