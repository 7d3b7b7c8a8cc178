"""Which function an Invoke names, read as Lambda reads FunctionName and the Qualifier parameter.

FunctionName is a name (`my-function`), a name with a qualifier (`my-function:live`), a partial ARN
(`123456789012:function:my-function[:qualifier]`) or a full ARN
(`arn:aws:lambda:us-east-1:123456789012:function:my-function[:qualifier]`); `?Qualifier=` names the
version or alias too, and must then agree with the one in FunctionName. A function of another
account is AccessDeniedException, one of another region ResourceNotFoundException, as Lambda answers
(the messages are Lambda's); an ARN of another partition (`arn:aws-cn:...` where the region is
us-east-1) names another account's function, since accounts belong to one partition: AccessDeniedException.
Pure functions: no gateway state.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# botocore's NamespacedFunctionName pattern (data/lambda/2015-03-31/service-2.json), quoted in Lambda's message
NAME_CONSTRAINT = (r"(arn:(aws[a-zA-Z-]*)?:lambda:)?((eusc-)?[a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-\d{1}:)?"
                   r"(\d{12}:)?(function:)?([a-zA-Z0-9-_\.]+)(:(\$LATEST(\.PUBLISHED)?|[a-zA-Z0-9-_]+))?")
QUALIFIER_CONSTRAINT = "(|[a-zA-Z0-9$_-]+)"
_NAME = re.compile(r"[a-zA-Z0-9_.-]{1,64}")
_QUALIFIER = re.compile(r"[a-zA-Z0-9$_-]{1,128}")
_ACCOUNT = re.compile(r"\d{12}")
_REGION = re.compile(r"(eusc-)?[a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-\d")
_PARTITION = re.compile(r"aws[a-zA-Z-]*")
_PARTITIONS = (("cn-", "aws-cn"), ("us-gov-", "aws-us-gov"), ("us-isob-", "aws-iso-b"), ("us-iso-", "aws-iso"),
               ("eusc-", "aws-eusc"))


def partition(region: str) -> str:
    """The partition of `region`: what its ARNs start with (arn:aws, arn:aws-cn, ...)."""
    return next((name for prefix, name in _PARTITIONS if region.startswith(prefix)), "aws")


class LambdaRequestError(Exception):
    """What Lambda answers a request it refuses: HTTP status, x-amzn-ErrorType and message."""

    def __init__(self, status: int, error_type: str, message: str):
        super().__init__(message)
        self.status, self.error_type, self.message = status, error_type, message


@dataclass(frozen=True)
class FunctionRef:
    name: str
    qualifier: str | None  # None: unqualified ($LATEST)

    def arn(self, region: str, account: str, partition_name: str | None = None) -> str:
        base = f"arn:{partition_name or partition(region)}:lambda:{region}:{account}:function:{self.name}"
        return f"{base}:{self.qualifier}" if self.qualifier else base


def _invalid_name(value: str) -> LambdaRequestError:
    return LambdaRequestError(400, "ValidationException",
                              f"1 validation error detected: Value '{value}' at 'functionName' failed to satisfy "
                              f"constraint: Member must satisfy regular expression pattern: {NAME_CONSTRAINT}")


def resolve_function_name(function_name: str, qualifier: str | None, region: str, account: str) -> FunctionRef:
    """The function and qualifier an Invoke addresses in `region` of `account`; LambdaRequestError if none."""
    parts = function_name.split(":")
    named_account = named_region = named_partition = None
    if parts[0] == "arn":
        if (len(parts) not in (7, 8) or not _PARTITION.fullmatch(parts[1]) or parts[2] != "lambda"
                or not _REGION.fullmatch(parts[3]) or not _ACCOUNT.fullmatch(parts[4]) or parts[5] != "function"):
            raise _invalid_name(function_name)
        named_partition, named_region, named_account, rest = parts[1], parts[3], parts[4], parts[6:]
    elif len(parts) in (3, 4) and parts[1] == "function":
        if not _ACCOUNT.fullmatch(parts[0]):
            raise _invalid_name(function_name)
        named_account, rest = parts[0], parts[2:]
    elif len(parts) <= 2:
        rest = parts
    else:
        raise _invalid_name(function_name)
    name, in_name = rest[0], (rest[1] if len(rest) == 2 else None)
    if not _NAME.fullmatch(name) or (in_name is not None and not _QUALIFIER.fullmatch(in_name)) \
            or len(function_name) > 256:
        raise _invalid_name(function_name)
    if qualifier is not None and qualifier != "" and not _QUALIFIER.fullmatch(qualifier):
        raise LambdaRequestError(400, "ValidationException",
                                 f"1 validation error detected: Value '{qualifier}' at 'qualifier' failed to satisfy "
                                 f"constraint: Member must satisfy regular expression pattern: {QUALIFIER_CONSTRAINT}")
    if in_name is not None and qualifier and in_name != qualifier:
        raise LambdaRequestError(400, "InvalidParameterValueException",
                                 "The derived qualifier from the function name does not match the specified qualifier.")
    ref = FunctionRef(name, in_name or qualifier or None)
    own_partition = partition(region)
    if (named_account is not None and named_account != account) or named_partition not in (None, own_partition):
        arn = ref.arn(named_region or region, named_account, named_partition or own_partition)
        raise LambdaRequestError(403, "AccessDeniedException",
                                 f"User: arn:{own_partition}:iam::{account}:root is not authorized to perform: "
                                 f"lambda:InvokeFunction on resource: {arn} because no resource-based policy allows "
                                 f"the lambda:InvokeFunction action")
    if named_region is not None and named_region != region:
        raise LambdaRequestError(404, "ResourceNotFoundException",
                                 f"Functions from '{named_region}' are not reachable in this region ('{region}')")
    return ref
