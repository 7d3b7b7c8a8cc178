"""One AWS account and region as a pipeline uses it: the session every client comes from (made once
per service by backends/session.py), who the caller is, and where the pipeline's things go."""
from __future__ import annotations

from functools import cached_property

import boto3

from backends.session import make_client


class AwsAccount:
    def __init__(self, session: boto3.Session, endpoint_url: str | None = None):
        self.session = session
        self.endpoint_url = endpoint_url  # every call goes there instead of AWS (a moto server)
        self._clients: dict[str, object] = {}

    def client(self, service: str):
        if service not in self._clients:
            self._clients[service] = make_client(self.session, service, self.endpoint_url)
        return self._clients[service]

    @property
    def region(self) -> str:
        return self.client("sts").meta.region_name

    @cached_property
    def account_id(self) -> str:
        return self.client("sts").get_caller_identity()["Account"]

    def default_bucket_name(self) -> str:
        """The bucket a pipeline uses when aws.bucket is not set, one per account and region."""
        return f"sagemaker-flows-{self.account_id}-{self.region}"

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()
