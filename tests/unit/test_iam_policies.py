"""The generated IAM documents grant only what the pipeline needs, on the resources it uses."""
import json

import pytest

from core import iam

BUCKET, PREFIX, ACCOUNT, REGION = "my-bucket", "proj/dev", "123456789012", "eu-west-1"
FUNCTION = "proj-dev-predict"
ENDPOINT = iam.endpoint_arn(REGION, ACCOUNT, "proj-dev-endpoint")


def _documents() -> dict[str, dict]:
    return {
        "sagemaker": iam.sagemaker_execution_policy(BUCKET, PREFIX, ACCOUNT, REGION),
        "lambda": iam.lambda_policy(ENDPOINT, [f"s3://{BUCKET}/{PREFIX}/"], ACCOUNT, REGION, FUNCTION),
        "ec2": iam.ec2_training_policy(BUCKET, PREFIX, ACCOUNT, REGION),
    }


def _listify(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _grants(document: dict) -> list[tuple[str, str, dict]]:
    """(action, resource, statement) for every Allow pair."""
    return [(action, resource, s) for s in document["Statement"] if s["Effect"] == "Allow"
            for action in _listify(s["Action"]) for resource in _listify(s["Resource"])]


@pytest.mark.parametrize("kind", ["sagemaker", "lambda", "ec2"])
def test_documents_are_valid_json_with_unique_sids(kind):
    document = json.loads(json.dumps(_documents()[kind]))
    assert document["Version"] == "2012-10-17"
    assert document["Statement"]
    sids = [s["Sid"] for s in document["Statement"]]
    assert len(sids) == len(set(sids)) and all(sid.isalnum() for sid in sids)
    assert all("Action" in s and "Resource" in s and s["Effect"] == "Allow" for s in document["Statement"])


@pytest.mark.parametrize("kind", ["sagemaker", "lambda", "ec2"])
def test_only_documented_statements_use_wildcard_resource(kind):
    document = _documents()[kind]
    wildcards = iam.wildcard_resources(document)
    assert set(wildcards) <= iam.UNAVOIDABLE_WILDCARD_SIDS
    for action, resource, _ in _grants(document):
        if resource == "*":
            assert action in ("ecr:GetAuthorizationToken", "cloudwatch:PutMetricData")


def test_put_metric_data_is_limited_to_sagemaker_namespaces():
    [statement] = [s for s in _documents()["sagemaker"]["Statement"] if s["Sid"] == iam.PUT_METRIC_DATA_SID]
    assert statement["Condition"] == {"StringLike": {"cloudwatch:namespace": "/aws/sagemaker/*"}}


def test_no_action_wildcards_anywhere():
    for document in _documents().values():
        for action, _, _ in _grants(document):
            assert "*" not in action


def test_lambda_invokes_exactly_one_endpoint():
    document = _documents()["lambda"]
    sagemaker = [(a, r) for a, r, _ in _grants(document) if a.startswith("sagemaker:")]
    arn = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/proj-dev-endpoint"
    assert sagemaker == [("sagemaker:InvokeEndpoint", arn)]
    logs = {r for a, r, _ in _grants(document) if a.startswith("logs:")}
    assert logs == {f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/lambda/{FUNCTION}",
                    f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/lambda/{FUNCTION}:log-stream:*"}
    assert iam.wildcard_resources(document) == []


def test_lambda_refuses_a_wildcard_endpoint():
    with pytest.raises(ValueError):
        iam.lambda_policy(f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/*", [f"s3://{BUCKET}/{PREFIX}/"], ACCOUNT, REGION, FUNCTION)


@pytest.mark.parametrize("kind", ["sagemaker", "lambda", "ec2"])
def test_s3_is_limited_to_the_prefix(kind):
    for action, resource, statement in _grants(_documents()[kind]):
        if not action.startswith("s3:"):
            continue
        if action in ("s3:ListBucket", "s3:GetBucketLocation"):
            assert resource == f"arn:aws:s3:::{BUCKET}"
            if action == "s3:ListBucket":
                assert statement["Condition"] == {"StringLike": {"s3:prefix": [PREFIX, f"{PREFIX}/*"]}}
        else:
            assert action in ("s3:GetObject", "s3:PutObject")
            assert resource == f"arn:aws:s3:::{BUCKET}/{PREFIX}/*"


def test_lambda_only_reads_s3():
    assert {a for a, _, _ in _grants(_documents()["lambda"]) if a.startswith("s3:")} == {"s3:GetObject"}


@pytest.mark.parametrize("prefix", ["", "/", "data/*", "a?"])
def test_bad_prefixes_are_refused(prefix):
    with pytest.raises(ValueError):
        iam.sagemaker_execution_policy(BUCKET, prefix, ACCOUNT, REGION)


def test_prefix_slashes_are_normalized():
    assert iam.ec2_training_policy(BUCKET, "/proj/dev/", ACCOUNT, REGION) == _documents()["ec2"]


def test_ec2_has_no_sagemaker_ecr_or_metric_actions():
    services = {a.split(":")[0] for a, _, _ in _grants(_documents()["ec2"])}
    assert services == {"s3", "logs"}
    logs = {r for a, r, _ in _grants(_documents()["ec2"]) if a.startswith("logs:")}
    assert all(r.startswith(f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/sagemaker-flows/ec2/") for r in logs)


def test_sagemaker_logs_and_images():
    grants = _grants(_documents()["sagemaker"])
    logs = {r for a, r, _ in grants if a.startswith("logs:")}
    assert logs == {f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/sagemaker/*",
                    f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/sagemaker/*:log-stream:*"}
    pulls = {r for a, r, _ in grants if a in ("ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer")}
    assert pulls == {f"arn:aws:ecr:{REGION}:*:repository/*"}
    narrowed = iam.sagemaker_execution_policy(BUCKET, PREFIX, ACCOUNT, REGION, image_account_ids=["763104351884"])
    assert {r for a, r, _ in _grants(narrowed) if a == "ecr:BatchGetImage"} == {
        f"arn:aws:ecr:{REGION}:763104351884:repository/*"}


@pytest.mark.parametrize("service", iam.TRUSTED_SERVICES)
def test_assume_role_policy(service):
    assert iam.assume_role_policy(service) == {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}]}


def test_assume_role_policy_refuses_other_principals():
    with pytest.raises(ValueError):
        iam.assume_role_policy("*")


def test_arn_helpers():
    assert iam.role_arn(ACCOUNT, "r") == f"arn:aws:iam::{ACCOUNT}:role/r"
    china = iam.endpoint_arn("cn-north-1", ACCOUNT, "My-Endpoint")
    assert china == f"arn:aws-cn:sagemaker:cn-north-1:{ACCOUNT}:endpoint/my-endpoint"


def test_wildcard_resources_reads_lists_strings_and_not_resource():
    document = {"Statement": [
        {"Sid": "A", "Resource": "*"}, {"Sid": "B", "Resource": ["x", "*"]},
        {"Sid": "C", "Resource": "arn:aws:s3:::b/p/*"}, {"Sid": "D", "NotResource": "x"}]}
    assert iam.wildcard_resources(document) == ["A", "B", "D"]


KEY = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
OTHER_KEY = f"arn:aws:kms:{REGION}:999999999999:key/0000abcd-12ab-34cd-56ef-1234567890ab"


def test_training_inputs_are_an_s3_source_as_a_prefix_and_s3_weights_as_an_object():
    assert iam.training_inputs("s3://data/dogs", "s3://w/resnet.pth") == ["s3://data/dogs/", "s3://w/resnet.pth"]
    assert iam.training_inputs("s3://data/dogs/", None) == ["s3://data/dogs/"]
    assert iam.training_inputs("./dogImages", "weights/local.pth") == []  # staged under the prefix instead
    assert iam.training_inputs("https://example.com/d.zip", None) == []


def test_locations_outside_the_prefix():
    own = f"s3://{BUCKET}/{PREFIX}/"
    uris = [f"s3://{BUCKET}/{PREFIX}/datasets/x/", f"s3://{BUCKET}/{PREFIX}-other/a/", "s3://data/dogs/",
            "s3://data/dogs/", f"s3://{BUCKET}/{PREFIX}/pretrained/w.pth"]
    assert iam.locations_outside(own, uris) == [f"s3://{BUCKET}/{PREFIX}-other/a/", "s3://data/dogs/"]


def test_readable_locations_grant_exactly_the_prefixes_and_objects_named():
    statements = iam.readable_location_statements(
        ["s3://data/dogs/", "s3://data/cats/", "s3://weights/models/resnet.pth", "s3://more/x/y/"], REGION)
    assert statements == [
        {"Sid": "ReadGivenLocations", "Effect": "Allow", "Action": "s3:GetObject",
         "Resource": ["arn:aws:s3:::data/cats/*", "arn:aws:s3:::data/dogs/*", "arn:aws:s3:::more/x/y/*",
                      "arn:aws:s3:::weights/models/resnet.pth"]},
        {"Sid": "ListGivenPrefixes1", "Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::data",
         "Condition": {"StringLike": {"s3:prefix": ["cats", "cats/*", "dogs", "dogs/*"]}}},
        {"Sid": "ListGivenPrefixes2", "Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::more",
         "Condition": {"StringLike": {"s3:prefix": ["x/y", "x/y/*"]}}},
    ]
    assert iam.readable_location_statements([], REGION) == []


def test_a_whole_bucket_source_is_granted_as_named():
    read, listing = iam.readable_location_statements(["s3://data/"], REGION)
    assert read["Resource"] == ["arn:aws:s3:::data/*"]
    assert listing == {"Sid": "ListGivenPrefixes1", "Effect": "Allow", "Action": "s3:ListBucket",
                       "Resource": "arn:aws:s3:::data"}


@pytest.mark.parametrize("uri", ["data/dogs/", "s3://", "s3://bucket", "s3://data/dogs*/", "s3://data/a?/x"])
def test_bad_readable_locations_are_refused(uri):
    with pytest.raises(ValueError):
        iam.readable_location_statements([uri], REGION)


def test_training_documents_add_the_readable_locations_and_bucket_keys():
    extra = {"readable_uris": ["s3://data/dogs/"], "write_key_arns": [KEY], "read_key_arns": [OTHER_KEY, KEY]}
    for document in (iam.sagemaker_execution_policy(BUCKET, PREFIX, ACCOUNT, REGION, **extra),
                     iam.ec2_training_policy(BUCKET, PREFIX, ACCOUNT, REGION, **extra)):
        statements = {s["Sid"]: s for s in document["Statement"]}
        assert statements["ReadGivenLocations"]["Resource"] == ["arn:aws:s3:::data/dogs/*"]
        assert statements["DecryptBucketObjects"] == {
            "Sid": "DecryptBucketObjects", "Effect": "Allow", "Action": "kms:Decrypt",
            "Resource": sorted([KEY, OTHER_KEY]), "Condition": {"StringLike": {"kms:ViaService": "s3.*"}}}
        assert statements["EncryptBucketObjects"]["Action"] == "kms:GenerateDataKey"
        assert statements["EncryptBucketObjects"]["Resource"] == [KEY]  # only the bucket it writes to
        assert set(iam.wildcard_resources(document)) <= iam.UNAVOIDABLE_WILDCARD_SIDS


def test_the_lambda_only_decrypts():
    document = iam.lambda_policy(ENDPOINT, [f"s3://{BUCKET}/{PREFIX}/"], ACCOUNT, REGION, FUNCTION,
                                 read_key_arns=[KEY])
    kms = [(a, r) for a, r, _ in _grants(document) if a.startswith("kms:")]
    assert kms == [("kms:Decrypt", KEY)]


def test_no_keys_no_kms_statements_and_bad_key_arns_refused():
    assert iam.kms_statements() == []
    with pytest.raises(ValueError):
        iam.kms_statements(read_key_arns=["alias/data"])
