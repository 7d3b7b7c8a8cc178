"""The one place AWS clients are made: a boto3 session (region, profile, or a prefect-aws
AwsCredentials block) and clients from it, optionally aimed at another endpoint URL (moto, the
local gateway). Clients are passed to the code that uses them, never built deep inside."""
from __future__ import annotations

import boto3
from botocore.config import Config

DEFAULT_REGION = "us-east-1"


def aws_session(region: str | None = None, profile: str | None = None, credentials_block: str | None = None) -> boto3.Session:
    if credentials_block:
        from prefect_aws import AwsCredentials  # optional dependency: pip install sagemaker-flows[aws]

        return AwsCredentials.load(credentials_block).get_boto3_session()
    return boto3.Session(region_name=region, profile_name=profile)


def make_client(session: boto3.Session, service: str, endpoint_url: str | None = None, read_timeout: int = 120):
    # Pool sized for parallel S3 uploads (8 files x 4 multipart threads).
    config = Config(retries={"mode": "standard", "max_attempts": 3}, read_timeout=read_timeout,
                    max_pool_connections=32, user_agent_extra="sagemaker-flows")
    return session.client(service, endpoint_url=endpoint_url, region_name=session.region_name or DEFAULT_REGION,
                          config=config)


def local_session() -> boto3.Session:
    """Credentials the local gateway accepts: it checks none, but boto3 signs every request."""
    return boto3.Session(aws_access_key_id="local", aws_secret_access_key="local", region_name=DEFAULT_REGION)
