"""What an EC2 training job (ec2_training.py) leaves in S3 and how its progress is read: the model,
the log (partial while it runs, whole at the end), the status marker it writes last, the attempt
record; and the follower that hands each log line on once."""
from __future__ import annotations

import json
from dataclasses import dataclass

from botocore.exceptions import ClientError

from backends.aws.errors import is_not_found, or_none
from backends.types import EpochCallback, LogCallback, TrainingRequest
from core.ec2_user_data import job_prefix
from core.metrics import parse_metric_line
from core.uris import S3Uri, parse_s3_uri


@dataclass(frozen=True)
class JobFiles:
    """What one EC2 job leaves under its S3 prefix, and how this side reads it."""

    s3: object  # a boto3 S3 client
    prefix: S3Uri

    @classmethod
    def of(cls, s3, request: TrainingRequest) -> "JobFiles":
        return cls(s3, parse_s3_uri(job_prefix(request.output_uri, request.job_name)))

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

    @property
    def attempt(self) -> S3Uri:
        return self.prefix.join("attempt.json")

    def read(self, obj: S3Uri, start: int = 0) -> bytes | None:
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

    def exists(self, obj: S3Uri) -> bool:
        return or_none(self.s3.head_object, Bucket=obj.bucket, Key=obj.key) is not None

    def read_marker(self, instance_id: str | None = None) -> dict | None:
        """status.json, if there is one from this instance (a marker naming another instance is an
        earlier attempt's, arriving late)."""
        data = self.read(self.status)
        if data is None:
            return None
        try:
            marker = json.loads(data)
            if not isinstance(marker, dict) or marker.get("status") not in ("Completed", "Failed", "Stopped"):
                raise ValueError(f"unexpected content {data[:200]!r}")
        except ValueError as exc:
            return {"status": "Failed", "failure_reason": f"unreadable status marker {self.status.uri}: {exc}"}
        if instance_id and marker.get("instance_id") and marker["instance_id"] != instance_id:
            return None
        return marker


class LogFollower:
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
