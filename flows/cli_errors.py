"""What the CLI says about an AWS failure it cannot get past: one line saying what to change, instead
of a traceback."""
from __future__ import annotations


def aws_problem(exc: BaseException) -> str | None:
    """What to do about an AWS failure the commands cannot get past (no credentials, no network, an
    expired or refused identity, a fault or throttling that outlasted the retries); None for anything
    else, which keeps its traceback."""
    import botocore.exceptions as aws

    from core.retry import is_transient

    if isinstance(exc, (aws.NoCredentialsError, aws.PartialCredentialsError)):
        return (f"{exc}: set aws.profile (or AWS_PROFILE), AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or "
                "aws.credentials_block (a prefect-aws AwsCredentials block)")
    if isinstance(exc, aws.ProfileNotFound):
        return f"{exc}: aws.profile names a profile ~/.aws/config does not have"
    if isinstance(exc, (aws.EndpointConnectionError, aws.ConnectTimeoutError, aws.ReadTimeoutError,
                        aws.ConnectionClosedError)):
        return f"{exc}: AWS cannot be reached from here (check the network, a proxy, or aws.endpoint_url)"
    if isinstance(exc, aws.ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("ExpiredToken", "ExpiredTokenException", "InvalidClientTokenId", "UnrecognizedClientException",
                    "SignatureDoesNotMatch", "AccessDenied", "AccessDeniedException"):
            return f"AWS refused the request ({code}): {exc} (check the credentials, and the caller's policy: " \
                   "sagemaker-flows plan --caller-policy)"
        if is_transient(exc):  # the clients' retries are spent: a fault on AWS's side, or throttling
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            service = service_of(exc.operation_name)
            return (f"{service or 'AWS'} kept failing: {exc.operation_name} answered {code or status}"
                    f"{f' (HTTP {status})' if status and str(status) != code else ''} on every retry. This is on "
                    f"AWS's side (an outage or throttling), not in the configuration: try again in a few minutes, "
                    f"and if it persists look up {service or 'the service'} in the AWS Health Dashboard")
    return None


def service_of(operation: str) -> str | None:
    """The AWS service (as boto3 names its client) of one of the operations the commands call."""
    import botocore.session

    session = botocore.session.get_session()
    for service in ("service-quotas", "sagemaker", "lambda", "s3", "iam", "sts", "ec2", "cloudwatch",
                    "application-autoscaling", "ssm", "kms", "sagemaker-runtime"):
        if operation in session.get_service_model(service).operation_names:
            return service
    return None
