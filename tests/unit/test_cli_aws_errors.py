"""What the command says when AWS cannot be used at all: what to change, not a traceback."""
from types import SimpleNamespace

import botocore.exceptions as aws
import pytest

from flows import cli


@pytest.mark.parametrize("error, says", [
    (aws.NoCredentialsError(), "set aws.profile"),
    (aws.ProfileNotFound(profile="nope"), "aws.profile names a profile"),
    (aws.EndpointConnectionError(endpoint_url="https://sts.us-east-1.amazonaws.com/"), "cannot be reached"),
    (aws.ClientError({"Error": {"Code": "ExpiredToken", "Message": "expired"}}, "GetCallerIdentity"),
     "AWS refused the request (ExpiredToken)"),
])
def test_an_aws_problem_is_one_line_saying_what_to_change(monkeypatch, capsys, error, says):
    def failing(_args):
        raise error

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    monkeypatch.setattr(parser, "parse_args", lambda argv: SimpleNamespace(handler=failing, command="x"))
    assert cli.main(["x"]) == 1
    assert says in capsys.readouterr().err


def test_other_errors_keep_their_traceback(monkeypatch):
    def failing(_args):
        raise RuntimeError("a bug")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    monkeypatch.setattr(parser, "parse_args", lambda argv: SimpleNamespace(handler=failing, command="x"))
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["x"])
