"""The part of S3 a local function's handler uses, answered from the local store: GetObject and
HeadObject, path-style (`GET|HEAD /s3/{bucket}/{key}`), with S3's XML error bodies.

Where: under the /s3 path prefix of the gateway's own port. botocore keeps the path of a configured
endpoint (AWS_ENDPOINT_URL_S3=http://127.0.0.1:PORT/s3) and, for an IP host, addresses buckets
path-style, so one server and one port serve both APIs and no S3 path can collide with
/endpoints/..., /2015-03-31/... or /_local/... (verified with a real boto3 client in
tests/integration/test_gateway_security.py).

Who: not an open file server for other local users. Each function gets its own random access key
(functions.py puts it in the function's environment as AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY);
a request is answered only when its SigV4 signature is valid for a key the gateway issued, and only
for objects under that function's ALLOWED_S3_PREFIXES (AccessDenied otherwise, as S3 answers a role
without s3:GetObject on the object).
"""
from __future__ import annotations

import hmac
import mimetypes
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from xml.sax.saxutils import escape

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from backends.local.store import LocalStore
from core.uris import parse_s3_uri

S3_PATH = "/s3"
MAX_CLOCK_SKEW = timedelta(minutes=15)  # S3's RequestTimeTooSkewed window
_AUTHORIZATION = re.compile(r"AWS4-HMAC-SHA256 Credential=([^/,\s]+)/(\d{8})/([a-z0-9-]+)/s3/aws4_request,\s*"
                            r"SignedHeaders=([a-z0-9;-]+),\s*Signature=([0-9a-f]{64})")


@dataclass(frozen=True)
class S3Grant:
    """What a key the gateway issued may read: its secret, and the s3:// prefixes of its function."""

    secret_access_key: str
    prefixes: tuple[str, ...]

    def allows(self, uri: str) -> bool:
        return any(uri.startswith(prefix) for prefix in self.prefixes if prefix)


def _error(status: int, code: str, message: str, request: Request, **fields: str) -> Response:
    request_id = uuid.uuid4().hex[:16].upper()
    headers = {"x-amz-request-id": request_id}
    if request.method == "HEAD":  # S3 answers HEAD errors with the status alone
        return Response(status_code=status, headers=headers)
    extra = "".join(f"<{name}>{escape(value)}</{name}>" for name, value in fields.items())
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{escape(message)}</Message>'
            f"{extra}<RequestId>{request_id}</RequestId></Error>")
    return Response(body, status_code=status, media_type="application/xml", headers=headers)


class LocalS3:
    def __init__(self, store: LocalStore, grant_for: Callable[[str], S3Grant | None],
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)):
        self.store = store
        self.grant_for = grant_for  # access key id -> its grant, None for a key the gateway never issued
        self.clock = clock

    async def get_object(self, request: Request) -> Response:
        """GetObject / HeadObject."""
        bucket, key = request.path_params["bucket"], request.path_params["key"]
        grant = self._authenticate(request)
        if isinstance(grant, Response):
            return grant
        uri = f"s3://{bucket}/{key}"
        if not grant.allows(uri):
            return _error(403, "AccessDenied", "Access Denied", request)
        if not (self.store.root / bucket).is_dir() or bucket.startswith("."):
            return _error(404, "NoSuchBucket", "The specified bucket does not exist", request, BucketName=bucket)
        try:
            path = self.store.path(parse_s3_uri(uri))
        except ValueError:  # '.' or '..' in the key, or a link out of the bucket: no such object here
            path = None
        if path is None or not path.is_file() or path.name.startswith("."):
            return _error(404, "NoSuchKey", "The specified key does not exist.", request, Key=key)
        media_type = mimetypes.guess_type(path.name)[0] or "binary/octet-stream"
        return FileResponse(path, media_type=media_type, headers={"x-amz-request-id": uuid.uuid4().hex[:16].upper()})

    def _authenticate(self, request: Request) -> S3Grant | Response:
        """The grant of the key the request is signed with (SigV4, header form), or S3's refusal."""
        match = _AUTHORIZATION.fullmatch(request.headers.get("authorization", ""))
        if match is None:
            return _error(403, "AccessDenied", "Access Denied", request)
        access_key, day, region, signed, signature = match.groups()
        grant = self.grant_for(access_key)
        if grant is None:
            return _error(403, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.",
                          request, AWSAccessKeyId=access_key)
        names = signed.split(";")
        timestamp = request.headers.get("x-amz-date", "")
        if "host" not in names or "x-amz-date" not in names or "x-amz-content-sha256" not in names:
            return _error(403, "AccessDenied", "Access Denied", request)
        try:
            when = datetime.strptime(timestamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
        except ValueError:
            return _error(403, "AccessDenied", "AWS authentication requires a valid Date or x-amz-date header", request)
        if abs(self.clock() - when) > MAX_CLOCK_SKEW or not timestamp.startswith(day):
            return _error(403, "RequestTimeTooSkewed",
                          "The difference between the request time and the current time is too large.", request)
        # The path and query exactly as sent (S3 signs them unnormalized); a decoded one would not match.
        raw_path = (request.scope.get("raw_path") or request.url.path.encode()).decode("latin-1")
        query = request.scope.get("query_string", b"").decode("latin-1")
        url = f"http://{request.headers['host']}{raw_path}" + (f"?{query}" if query else "")
        signed_request = AWSRequest(method=request.method, url=url,
                                    headers={name: ",".join(request.headers.getlist(name)) for name in names})
        signed_request.context["timestamp"] = timestamp
        auth = S3SigV4Auth(Credentials(access_key, grant.secret_access_key), "s3", region)
        expected = auth.signature(auth.string_to_sign(signed_request, auth.canonical_request(signed_request)),
                                  signed_request)
        if not hmac.compare_digest(expected, signature):
            return _error(403, "SignatureDoesNotMatch", "The request signature we calculated does not match the "
                          "signature you provided. Check your key and signing method.", request)
        return grant
