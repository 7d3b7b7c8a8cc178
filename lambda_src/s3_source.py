"""{"s3_uri": ...}: an object of the locations the function may read (ALLOWED_S3_PREFIXES), checked
before S3 is asked, read with at most MAX_BYTES + 1 bytes."""
import os
import re

from botocore.exceptions import ClientError

from payload import MAX_BYTES, RequestError, check_size, image_type

MAX_S3_URI_CHARS = 2048  # "s3://" + a 63-character bucket + "/" + a 1024-byte key fits easily
MAX_S3_KEY_BYTES = 1024  # S3's own limit, in UTF-8
BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
IP_LIKE = re.compile(r"\d+\.\d+\.\d+\.\d+")


def bucket_problem(bucket):
    """Why ``bucket`` breaks S3's bucket naming rules, or None."""
    if not 3 <= len(bucket) <= 63 or not BUCKET_NAME.fullmatch(bucket):
        return ("must be 3-63 lowercase letters, digits, dots or hyphens, starting and ending with a letter "
                "or digit")
    if ".." in bucket:
        return "must not contain two adjacent dots"
    if IP_LIKE.fullmatch(bucket):
        return "must not be formatted as an IP address"
    return None


def parse_s3_uri(uri):
    """(bucket, key) of ``s3://bucket/key``; RequestError 400 saying what is wrong. Keys are taken as
    they are (S3 does not normalize them), so "?", "#" and "%" are part of the key, not URL syntax."""
    def invalid(reason):
        return RequestError(400, "InvalidS3Uri", f"s3_uri {reason}")
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise invalid("must be a string like s3://bucket/key")
    if len(uri) > MAX_S3_URI_CHARS:
        raise invalid(f"is longer than {MAX_S3_URI_CHARS} characters")
    bucket, _, key = uri[len("s3://"):].partition("/")
    problem = bucket_problem(bucket)
    if problem:
        raise invalid(f"bucket name {bucket[:63]!r} {problem}")
    if not key:
        raise invalid("has no object key after the bucket (s3://bucket/key)")
    if key.startswith("/"):
        raise invalid("key must not start with '/'")
    if any(part in (".", "..") for part in key.split("/")):
        # S3 keeps them literally, but HTTP layers may resolve them: the object read would not be the one checked
        raise invalid("key must not contain '.' or '..' path segments")
    try:
        key_bytes = len(key.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates, which JSON can carry
        raise invalid("key is not valid UTF-8 text") from None
    if key_bytes > MAX_S3_KEY_BYTES:
        raise invalid(f"key is longer than {MAX_S3_KEY_BYTES} bytes (UTF-8)")
    return bucket, key


def allowed_s3_prefixes():
    """ALLOWED_S3_PREFIXES as (entry, bucket, key prefix ending in "/" or empty for the whole bucket).
    A malformed entry allows nothing (core.config validates them before they get here)."""
    allowed = []
    for entry in os.environ.get("ALLOWED_S3_PREFIXES", "").split(","):
        entry = entry.strip()
        bucket, _, prefix = entry[len("s3://"):].partition("/")
        if not entry.startswith("s3://") or bucket_problem(bucket):
            continue
        allowed.append((entry, bucket, prefix if not prefix or prefix.endswith("/") else prefix + "/"))
    return allowed


def check_s3_allowed(uri, bucket, key):
    allowed = allowed_s3_prefixes()
    if any(bucket == b and key.startswith(prefix) for _, b, prefix in allowed):
        return
    where = ", ".join(entry for entry, _, _ in allowed)
    raise RequestError(403, "S3LocationNotAllowed",
                       f"{uri[:200]} is outside the locations this function reads: {where}" if where
                       else "this function reads no s3:// locations (ALLOWED_S3_PREFIXES is empty)")


def read_s3(uri, client):
    """(object bytes, its image content type); RequestError for what the caller can change."""
    bucket, key = parse_s3_uri(uri)
    check_s3_allowed(uri, bucket, key)
    try:
        obj = client.get_object(Bucket=bucket, Key=key)
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404", "NotFound"):
            raise RequestError(404, "NoSuchKey", f"{uri} does not exist") from None
        if code == "NoSuchBucket":
            raise RequestError(404, "NoSuchBucket", f"the bucket of {uri} does not exist") from None
        if code in ("AccessDenied", "403"):  # without s3:ListBucket, S3 answers a missing key with AccessDenied
            raise RequestError(403, "AccessDenied",
                               f"this function may not read {uri} (or it does not exist)") from None
        raise
    return check_size(obj["Body"].read(MAX_BYTES + 1), "object"), image_type(obj.get("ContentType"))
