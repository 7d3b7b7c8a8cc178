"""s3:// URIs, shared by the aws backend and the local store that stands in for S3."""
from __future__ import annotations

import re
from dataclasses import dataclass

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def join(self, *parts: str) -> "S3Uri":
        key = "/".join([self.key.rstrip("/")] + [p.strip("/") for p in parts if p]).strip("/")
        return S3Uri(self.bucket, key)


def parse_s3_uri(uri: str) -> S3Uri:
    if not uri.startswith("s3://"):
        raise ValueError(f"{uri!r} is not an s3:// URI")
    bucket, _, key = uri[5:].partition("/")
    if not _BUCKET.match(bucket):
        raise ValueError(f"{uri!r}: {bucket!r} is not a valid bucket name")
    if any(part in ("..", ".") for part in key.split("/")):
        raise ValueError(f"{uri!r}: '.' and '..' are not allowed in keys")
    return S3Uri(bucket, key.strip("/"))
