"""The one session factory: region/profile, or a prefect-aws AwsCredentials block."""
import pytest
from moto import mock_aws

from backends.session import aws_session, make_client


def test_region_and_endpoint_url():
    session = aws_session(region="eu-west-1")
    client = make_client(session, "s3", endpoint_url="http://127.0.0.1:5999")
    assert client.meta.region_name == "eu-west-1" and client.meta.endpoint_url == "http://127.0.0.1:5999"


def test_credentials_block(prefect_api):
    from prefect_aws import AwsCredentials

    AwsCredentials(aws_access_key_id="AKIAFROMBLOCK", aws_secret_access_key="secret",
                   region_name="us-west-2").save("sagemaker-flows-test", overwrite=True)
    session = aws_session(credentials_block="sagemaker-flows-test")
    assert session.region_name == "us-west-2"
    assert session.get_credentials().access_key == "AKIAFROMBLOCK"
    with mock_aws():
        assert make_client(session, "sts").get_caller_identity()["Account"]


def test_unknown_profile_is_a_clear_error():
    from botocore.exceptions import ProfileNotFound

    with pytest.raises(ProfileNotFound):
        aws_session(profile="no-such-profile")
