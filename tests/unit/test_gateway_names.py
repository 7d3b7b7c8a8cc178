"""How the local gateway reads Invoke's FunctionName and Qualifier (backends/local/gateway/lambda_names.py)."""
import pytest

from backends.aws.functions import ALIAS
from backends.local.gateway.functions import QUALIFIERS
from backends.local.gateway.lambda_names import FunctionRef, LambdaRequestError, resolve_function_name

REGION, ACCOUNT = "us-east-1", "000000000000"


@pytest.mark.parametrize("function_name,qualifier,expected", [
    ("fn", None, FunctionRef("fn", None)),
    ("fn", "", FunctionRef("fn", None)),
    ("fn:live", None, FunctionRef("fn", "live")),
    ("fn:$LATEST", None, FunctionRef("fn", "$LATEST")),
    ("fn", "7", FunctionRef("fn", "7")),
    ("fn:live", "live", FunctionRef("fn", "live")),
    ("000000000000:function:fn", None, FunctionRef("fn", None)),
    ("000000000000:function:fn:3", None, FunctionRef("fn", "3")),
    ("arn:aws:lambda:us-east-1:000000000000:function:fn", None, FunctionRef("fn", None)),
    ("arn:aws:lambda:us-east-1:000000000000:function:fn:live", None, FunctionRef("fn", "live")),
    ("arn:aws:lambda:us-east-1:000000000000:function:fn", "$LATEST", FunctionRef("fn", "$LATEST")),
    ("arn:aws:lambda:us-east-1:000000000000:function:my_fn-2", None, FunctionRef("my_fn-2", None)),
])
def test_the_forms_lambda_accepts(function_name, qualifier, expected):
    assert resolve_function_name(function_name, qualifier, REGION, ACCOUNT) == expected


@pytest.mark.parametrize("region,arn_partition", [("cn-north-1", "aws-cn"), ("us-gov-west-1", "aws-us-gov"),
                                                  ("eu-west-1", "aws")])
def test_an_arn_of_the_regions_own_partition_is_accepted(region, arn_partition):
    ref = resolve_function_name(f"arn:{arn_partition}:lambda:{region}:000000000000:function:fn", None, region, ACCOUNT)
    assert ref == FunctionRef("fn", None)
    assert ref.arn(region, ACCOUNT) == f"arn:{arn_partition}:lambda:{region}:000000000000:function:fn"


@pytest.mark.parametrize("function_name,qualifier,status,error_type,words", [
    ("fn:live", "$LATEST", 400, "InvalidParameterValueException", "derived qualifier"),
    ("123456789012:function:fn", None, 403, "AccessDeniedException",
     "on resource: arn:aws:lambda:us-east-1:123456789012:function:fn because"),
    ("arn:aws:lambda:us-east-1:123456789012:function:fn:live", None, 403, "AccessDeniedException",
     "arn:aws:lambda:us-east-1:123456789012:function:fn:live"),
    ("arn:aws:lambda:eu-west-1:000000000000:function:fn", None, 404, "ResourceNotFoundException",
     "Functions from 'eu-west-1' are not reachable in this region ('us-east-1')"),
    # another partition's ARN names another account's function (accounts belong to one partition)
    ("arn:aws-cn:lambda:us-east-1:000000000000:function:fn", None, 403, "AccessDeniedException",
     "on resource: arn:aws-cn:lambda:us-east-1:000000000000:function:fn because"),
    ("arn:aws-us-gov:lambda:us-east-1:000000000000:function:fn:live", None, 403, "AccessDeniedException",
     "arn:aws-us-gov:lambda:us-east-1:000000000000:function:fn:live"),
    ("arn:aws:lambda:us-east-1:000000000000:layer:fn", None, 400, "ValidationException", "at 'functionName'"),
    ("arn:aws:lambda:us-east-1:0000:function:fn", None, 400, "ValidationException", "at 'functionName'"),
    ("12:function:fn", None, 400, "ValidationException", "at 'functionName'"),
    ("fn:", None, 400, "ValidationException", "at 'functionName'"),
    ("fn:a:b", None, 400, "ValidationException", "at 'functionName'"),
    ("", None, 400, "ValidationException", "at 'functionName'"),
    ("f" * 65, None, 400, "ValidationException", "at 'functionName'"),
    ("fn", "bad qualifier", 400, "ValidationException", "at 'qualifier'"),
])
def test_the_refusals_are_lambdas(function_name, qualifier, status, error_type, words):
    with pytest.raises(LambdaRequestError) as error:
        resolve_function_name(function_name, qualifier, REGION, ACCOUNT)
    assert (error.value.status, error.value.error_type) == (status, error_type)
    assert words in error.value.message


def test_the_local_qualifiers_include_the_aws_backends_alias():
    assert QUALIFIERS == ("$LATEST", ALIAS)
    assert FunctionRef("fn", "live").arn(REGION, ACCOUNT) == "arn:aws:lambda:us-east-1:000000000000:function:fn:live"
