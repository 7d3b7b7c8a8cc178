"""backends/aws/storage.py on moto's S3."""
import base64
import hashlib
import json
import os
import threading

# Fake credentials before boto3 looks for any: no test can reach a real account.
for _key, _value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_SESSION_TOKEN": "testing", "AWS_SECURITY_TOKEN": "testing",
                     "AWS_DEFAULT_REGION": "us-east-1"}.items():
    os.environ[_key] = _value

import boto3  # noqa: E402
import pytest  # noqa: E402
from botocore.exceptions import ClientError  # noqa: E402
from moto import mock_aws  # noqa: E402

from backends.aws.storage import MANIFEST_NAME, MULTIPART_THRESHOLD, S3Storage  # noqa: E402
from backends.errors import InvalidRequestError, NotFoundError  # noqa: E402
from backends.types import StagedDataset  # noqa: E402
from core.datasets import folder_checksum  # noqa: E402
from core.retry import TransientError, is_transient  # noqa: E402
from tests.helpers import make_folder  # noqa: E402

BUCKET = "sagemaker-flows-test"
PREFIX = f"s3://{BUCKET}/proj/dev/datasets/pets"

FILES = {
    "train/cat/1.png": b"cat one",
    "train/dog/2.png": b"dog two",
    "valid/cat/3.png": b"cat three",
    "test/dog/4.png": b"dog four",
    # pathlib sorts part by part: "a/b" before "a-b/c", unlike a plain string sort.
    "a/b.png": b"ab",
    "a-b/c.png": b"abc",
    ".DS_Store": b"hidden: never uploaded, not in the checksum",
    "train/.hidden": b"hidden too",
}
VISIBLE = sorted(rel for rel in FILES if not rel.rsplit("/", 1)[-1].startswith("."))


@pytest.fixture
def s3():
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


@pytest.fixture
def storage(s3):
    return S3Storage(s3)


def manifest(s3, prefix=PREFIX):
    key = prefix.removeprefix(f"s3://{BUCKET}/") + "/" + MANIFEST_NAME
    try:
        return json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    except s3.exceptions.NoSuchKey:
        return None


class CountPuts:
    """Counts PutObject calls for dataset files (not the manifest); can fail the n-th one."""

    def __init__(self, client, fail_at=None):
        self.client, self.fail_at, self.count, self.lock = client, fail_at, 0, threading.Lock()
        client.meta.events.register("before-call.s3.PutObject", self)

    def __call__(self, params, **kwargs):
        if params["url_path"].endswith(MANIFEST_NAME):  # before-call sees the serialized request
            return
        with self.lock:
            self.count += 1
            fail = self.count == self.fail_at
        if fail:
            raise ClientError({"Error": {"Code": "InternalError", "Message": "injected failure"},
                               "ResponseMetadata": {"HTTPStatusCode": 500}}, "PutObject")

    def remove(self):
        self.client.meta.events.unregister("before-call.s3.PutObject", self)


def test_first_sync_uploads_everything_and_writes_the_manifest(s3, storage, tmp_path):
    folder = make_folder(tmp_path / "pets", FILES)
    calls = []
    summary = storage.upload_folder(folder, PREFIX, progress=lambda done, total: calls.append((done, total)))

    checksum = folder_checksum(folder)
    assert summary == StagedDataset(PREFIX, files=len(VISIBLE), uploaded=len(VISIBLE), unchanged=0, deleted=0,
                                    total_bytes=sum(len(FILES[rel]) for rel in VISIBLE), checksum=checksum)
    assert calls == [(i, len(VISIBLE)) for i in range(1, len(VISIBLE) + 1)]
    assert storage.list_objects(PREFIX) == VISIBLE  # no manifest, no hidden files
    written = manifest(s3)
    assert written["complete"] is True and written["checksum"] == checksum
    assert {rel: (e["sha256"], e["size"]) for rel, e in written["files"].items()} == {
        rel: (hashlib.sha256(FILES[rel]).hexdigest(), len(FILES[rel])) for rel in VISIBLE}
    # S3 holds a verified SHA-256 of each object, and our hex digest in its metadata.
    head = s3.head_object(Bucket=BUCKET, Key="proj/dev/datasets/pets/train/cat/1.png", ChecksumMode="ENABLED")
    digest = hashlib.sha256(FILES["train/cat/1.png"])
    assert head["Metadata"]["sha256"] == digest.hexdigest()
    assert head["ChecksumSHA256"] == base64.b64encode(digest.digest()).decode()
    assert storage.describe_prefix(PREFIX) == StagedDataset(PREFIX, files=len(VISIBLE), uploaded=0,
                                                            unchanged=len(VISIBLE), deleted=0,
                                                            total_bytes=summary.total_bytes, checksum=checksum)


def test_second_sync_uploads_nothing(s3, storage, tmp_path):
    folder = make_folder(tmp_path / "pets", FILES)
    first = storage.upload_folder(folder, PREFIX)
    puts = CountPuts(s3)
    before = s3.head_object(Bucket=BUCKET, Key=f"proj/dev/datasets/pets/{MANIFEST_NAME}")["LastModified"]
    again = storage.upload_folder(folder, PREFIX)
    assert (again.uploaded, again.unchanged, again.deleted) == (0, len(VISIBLE), 0)
    assert again.checksum == first.checksum
    assert puts.count == 0
    assert s3.head_object(Bucket=BUCKET, Key=f"proj/dev/datasets/pets/{MANIFEST_NAME}")["LastModified"] == before


def test_changed_deleted_and_added_files(s3, storage, tmp_path):
    folder = make_folder(tmp_path / "pets", FILES)
    first = storage.upload_folder(folder, PREFIX)
    (folder / "train/dog/2.png").write_bytes(b"dog TWO")  # same size, other bytes
    (folder / "test/dog/4.png").unlink()
    make_folder(folder, {"valid/dog/5.png": b"dog five"})

    third = storage.upload_folder(folder, PREFIX)
    assert (third.files, third.uploaded, third.unchanged, third.deleted) == (len(VISIBLE), 2, len(VISIBLE) - 2, 1)
    assert third.checksum == folder_checksum(folder) != first.checksum
    keys = storage.list_objects(PREFIX)
    assert "test/dog/4.png" not in keys and "valid/dog/5.png" in keys
    assert storage.read_object(f"{PREFIX}/train/dog/2.png") == b"dog TWO"
    written = manifest(s3)
    assert written["checksum"] == third.checksum and set(written["files"]) == set(keys)
    assert written["files"]["train/dog/2.png"]["sha256"] == hashlib.sha256(b"dog TWO").hexdigest()
    assert storage.describe_prefix(PREFIX).checksum == third.checksum


def test_a_prefix_with_a_longer_name_is_another_prefix(s3, storage, tmp_path):
    storage.upload_folder(make_folder(tmp_path / "a", {"x.png": b"x"}), f"s3://{BUCKET}/d/v1")
    storage.upload_folder(make_folder(tmp_path / "b", {"y.png": b"y"}), f"s3://{BUCKET}/d/v10")
    again = storage.upload_folder(tmp_path / "a", f"s3://{BUCKET}/d/v1")
    assert again.deleted == 0
    assert storage.list_objects(f"s3://{BUCKET}/d/v10") == ["y.png"]


def test_failed_upload_is_never_counted_as_staged(s3, storage, tmp_path):
    folder = make_folder(tmp_path / "pets", FILES)
    puts = CountPuts(s3, fail_at=3)
    with pytest.raises(ClientError, match="injected failure") as failure:
        storage.upload_folder(folder, PREFIX)
    assert is_transient(failure.value)  # the real S3 error, so the task's retry policy can classify it
    puts.remove()
    assert manifest(s3) in (None, {"version": 1, "complete": False, "files": {}})
    with pytest.raises(InvalidRequestError, match="not completely staged"):
        storage.describe_prefix(PREFIX)

    done = storage.upload_folder(folder, PREFIX)
    assert done.checksum == folder_checksum(folder)
    assert storage.describe_prefix(PREFIX).checksum == done.checksum


def test_failed_resync_keeps_the_prefix_unstaged_until_a_rerun_finishes(s3, storage, tmp_path):
    folder = make_folder(tmp_path / "pets", FILES)
    storage.upload_folder(folder, PREFIX)
    changed = ["train/cat/1.png", "train/dog/2.png", "valid/cat/3.png", "test/dog/4.png"]
    for rel in changed:
        (folder / rel).write_bytes(b"v2 " + FILES[rel])
    puts = CountPuts(s3, fail_at=3)
    with pytest.raises(ClientError):
        storage.upload_folder(folder, PREFIX)
    puts.remove()
    # Some objects are v2 now, others v1: the old manifest must not vouch for them any more.
    left = manifest(s3)
    assert left["complete"] is False and not set(left["files"]) & set(changed)
    with pytest.raises(InvalidRequestError, match="not completely staged"):
        storage.describe_prefix(PREFIX)

    # Even a file put back to its old bytes is re-sent: its object may hold the failed run's bytes.
    (folder / changed[0]).write_bytes(FILES[changed[0]])
    rerun = storage.upload_folder(folder, PREFIX)
    assert (rerun.uploaded, rerun.unchanged) == (len(changed), len(VISIBLE) - len(changed))
    assert storage.read_object(f"{PREFIX}/{changed[0]}") == FILES[changed[0]]
    assert storage.describe_prefix(PREFIX).checksum == folder_checksum(folder)


def test_describe_prefix_without_a_manifest(s3, storage, tmp_path):
    folder = make_folder(tmp_path / "pets", FILES)
    for rel in VISIBLE:  # uploaded by other means, with the sha256 metadata (e.g. aws s3 cp --metadata)
        s3.put_object(Bucket=BUCKET, Key=f"other/with-meta/{rel}", Body=FILES[rel],
                      Metadata={"sha256": hashlib.sha256(FILES[rel]).hexdigest()})
    described = storage.describe_prefix(f"s3://{BUCKET}/other/with-meta")
    assert described.checksum == folder_checksum(folder) and type(described) is StagedDataset  # nothing read
    assert (described.files, described.total_bytes) == (len(VISIBLE), sum(len(FILES[rel]) for rel in VISIBLE))

    for rel in VISIBLE:  # no metadata, but a full-object SHA-256 that S3 checked (aws s3 cp --checksum-algorithm)
        s3.put_object(Bucket=BUCKET, Key=f"other/checksummed/{rel}", Body=FILES[rel], ChecksumAlgorithm="SHA256")
    assert storage.describe_prefix(f"s3://{BUCKET}/other/checksummed").checksum == folder_checksum(folder)

    with pytest.raises(NotFoundError, match="nothing is stored"):
        storage.describe_prefix(f"s3://{BUCKET}/nothing/here")


class CountGets:
    """Counts GetObject calls for objects under `prefix` (the manifest's left out)."""

    def __init__(self, client, prefix):
        self.prefix, self.keys = prefix, []
        client.meta.events.register("before-parameter-build.s3.GetObject", self)

    def __call__(self, params, **kwargs):
        if params["Key"].startswith(self.prefix) and not params["Key"].endswith(MANIFEST_NAME):
            self.keys.append(params["Key"])


def test_objects_without_a_sha256_are_read_once_to_checksum_them(s3, storage, tmp_path):
    # `aws s3 sync` without --checksum-algorithm: no SHA-256 in S3, no metadata, no manifest.
    folder = make_folder(tmp_path / "pets", FILES)
    big = os.urandom(3 * 1024 * 1024 + 5)  # more than one chunk of the read
    (folder / "train" / "cat" / "big.png").write_bytes(big)
    sizes = {rel: len(FILES[rel]) for rel in VISIBLE} | {"train/cat/big.png": len(big)}
    for rel in sizes:
        s3.put_object(Bucket=BUCKET, Key=f"synced/{rel}", Body=(folder / rel).read_bytes())
    s3.put_object(Bucket=BUCKET, Key="synced/a/b.png", Body=FILES["a/b.png"],  # this one has its SHA-256
                  Metadata={"sha256": hashlib.sha256(FILES["a/b.png"]).hexdigest()})
    gets = CountGets(s3, "synced/")

    described = storage.describe_prefix(f"s3://{BUCKET}/synced")

    # The checksum staging the folder gives (what names the dataset and is kept with each model version).
    assert described.checksum == folder_checksum(folder) == storage.upload_folder(folder, PREFIX).checksum
    read = sorted(rel for rel in sizes if rel != "a/b.png")
    assert (described.files, described.total_bytes) == (len(sizes), sum(sizes.values()))
    assert (described.digested_files, described.digested_bytes) == (len(read), sum(sizes[rel] for rel in read))
    assert sorted(gets.keys) == [f"synced/{rel}" for rel in read]  # each once; the checksummed one not at all

    again = storage.describe_prefix(f"s3://{BUCKET}/synced")  # the same run's staging: nothing read again
    assert again == described and len(gets.keys) == len(read)

    s3.put_object(Bucket=BUCKET, Key="synced/train/dog/2.png", Body=b"dog TWO")  # a new ETag: read again
    changed = storage.describe_prefix(f"s3://{BUCKET}/synced")
    assert changed.checksum != described.checksum and gets.keys[len(read):] == ["synced/train/dog/2.png"]


def test_an_object_replaced_while_it_is_read_is_a_transient_error(s3, storage):
    for rel in VISIBLE:
        s3.put_object(Bucket=BUCKET, Key=f"synced/{rel}", Body=FILES[rel])
    writer = boto3.client("s3", region_name="us-east-1")

    def replace_first(params, **kwargs):  # after the listing, before the read
        if params["Key"] == "synced/a/b.png":
            writer.put_object(Bucket=BUCKET, Key="synced/a/b.png", Body=b"replaced")
    s3.meta.events.register("before-parameter-build.s3.GetObject", replace_first)

    with pytest.raises(TransientError, match="synced/a/b.png changed while its checksum was computed"):
        storage.describe_prefix(f"s3://{BUCKET}/synced")


def test_describe_prefix_notices_objects_changed_after_staging(s3, storage, tmp_path):
    storage.upload_folder(make_folder(tmp_path / "pets", FILES), PREFIX)
    s3.delete_object(Bucket=BUCKET, Key="proj/dev/datasets/pets/valid/cat/3.png")
    s3.put_object(Bucket=BUCKET, Key="proj/dev/datasets/pets/stray.txt", Body=b"?")
    with pytest.raises(InvalidRequestError, match="changed since it was staged.*valid/cat/3.png.*stray.txt"):
        storage.describe_prefix(PREFIX)
    repaired = storage.upload_folder(tmp_path / "pets", PREFIX)  # re-sends the deleted file, drops the stray
    assert (repaired.uploaded, repaired.deleted) == (1, 1)
    assert storage.describe_prefix(PREFIX).checksum == folder_checksum(tmp_path / "pets")


def test_large_file_goes_multipart_and_reads_back_equal(s3, storage, tmp_path):
    big = os.urandom(MULTIPART_THRESHOLD + 1024 * 1024)  # 17 MiB
    folder = make_folder(tmp_path / "big", {"train/x/big.bin": big, "train/x/small.png": b"s"})
    multipart = []
    s3.meta.events.register("before-call.s3.CreateMultipartUpload", lambda params, **kw: multipart.append(params))
    summary = storage.upload_folder(folder, f"s3://{BUCKET}/big")
    assert summary.uploaded == 2 and summary.checksum == folder_checksum(folder)
    assert [p["url_path"].split("?")[0] for p in multipart] == ["/big/train/x/big.bin"]
    assert multipart[0]["headers"]["x-amz-checksum-algorithm"] == "SHA256"
    assert storage.read_object(f"s3://{BUCKET}/big/train/x/big.bin") == big
    head = s3.head_object(Bucket=BUCKET, Key="big/train/x/big.bin")
    assert head["ETag"].strip('"').endswith("-2")  # two parts
    assert head["Metadata"]["sha256"] == hashlib.sha256(big).hexdigest()
    assert storage.upload_folder(folder, f"s3://{BUCKET}/big").uploaded == 0


def test_upload_file_read_and_list(s3, storage, tmp_path):
    source = tmp_path / "model.tar.gz"
    source.write_bytes(b"model bytes")
    uri = f"s3://{BUCKET}/proj/dev/models/model.tar.gz"
    assert storage.upload_file(source, uri) == uri
    assert storage.read_object(uri) == b"model bytes"
    assert storage.exists(uri) and not storage.exists(uri + ".missing")
    head = s3.head_object(Bucket=BUCKET, Key="proj/dev/models/model.tar.gz", ChecksumMode="ENABLED")
    assert head["Metadata"]["sha256"] == hashlib.sha256(b"model bytes").hexdigest() and head["ChecksumSHA256"]
    with pytest.raises(NotFoundError, match="no object at"):
        storage.read_object(f"s3://{BUCKET}/proj/dev/models/none")

    # More than one page of listing.
    for i in range(1005):
        s3.put_object(Bucket=BUCKET, Key=f"many/k{i:04d}", Body=b"")
    s3.put_object(Bucket=BUCKET, Key=f"many/{MANIFEST_NAME}", Body=b"{}")
    s3.put_object(Bucket=BUCKET, Key="many-not-this/k", Body=b"")
    keys = storage.list_objects(f"s3://{BUCKET}/many")
    assert len(keys) == 1005 and keys[0] == "k0000" and MANIFEST_NAME not in keys
    assert storage.list_objects(f"s3://{BUCKET}/many-not-this") == ["k"]


def test_ensure_bucket_is_idempotent_and_locks_the_bucket_down(s3, storage):
    assert storage.ensure_bucket("new-bucket-east", "us-east-1") is True
    assert storage.ensure_bucket("new-bucket-east", "us-east-1") is False
    block = s3.get_public_access_block(Bucket="new-bucket-east")["PublicAccessBlockConfiguration"]
    assert block == {"BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
                     "RestrictPublicBuckets": True}
    rules = s3.get_bucket_encryption(Bucket="new-bucket-east")["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"

    assert storage.ensure_bucket("new-bucket-west", "eu-west-1") is True
    assert s3.get_bucket_location(Bucket="new-bucket-west")["LocationConstraint"] == "eu-west-1"
    assert storage.ensure_bucket("new-bucket-west", "eu-west-1") is False
    assert storage.ensure_bucket(BUCKET, "us-east-1") is False  # one that existed before


def test_a_folder_cannot_shadow_the_manifest(storage, tmp_path):
    folder = make_folder(tmp_path / "d", {MANIFEST_NAME: b"{}", "train/a/1.png": b"1"})
    with pytest.raises(InvalidRequestError, match="staging manifest"):
        storage.upload_folder(folder, PREFIX)


def _encrypt(s3, bucket: str, algorithm: str, key: str | None = None) -> None:
    rule = {"SSEAlgorithm": algorithm, **({"KMSMasterKeyID": key} if key else {})}
    s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={
        "Rules": [{"ApplyServerSideEncryptionByDefault": rule}]})


def test_bucket_key_arn_names_the_customer_key_of_an_sse_kms_bucket(s3):
    kms = boto3.client("kms", region_name="us-east-1")
    key = kms.create_key()["KeyMetadata"]
    kms.create_alias(AliasName="alias/data", TargetKeyId=key["KeyId"])
    storage = S3Storage(s3, kms=kms)

    assert storage.bucket_key_arn(BUCKET) is None  # no default encryption configured
    _encrypt(s3, BUCKET, "AES256")
    assert storage.bucket_key_arn(BUCKET) is None  # SSE-S3
    _encrypt(s3, BUCKET, "aws:kms")
    assert storage.bucket_key_arn(BUCKET) is None  # the AWS managed aws/s3 key: no grant needed
    _encrypt(s3, BUCKET, "aws:kms", key["Arn"])
    assert storage.bucket_key_arn(BUCKET) == key["Arn"]
    _encrypt(s3, BUCKET, "aws:kms", "alias/data")
    assert storage.bucket_key_arn(BUCKET) == key["Arn"]
    _encrypt(s3, BUCKET, "aws:kms", key["KeyId"])
    assert storage.bucket_key_arn(BUCKET) == key["Arn"]


def test_bucket_key_arn_of_a_bucket_whose_encryption_cannot_be_read_is_none(s3):
    """Another account's bucket: GetBucketEncryption is denied (moto grants everything, so a
    before-call handler answers as S3 does)."""
    from tests.aws.fakes import answer

    s3.meta.events.register("before-call.s3.GetBucketEncryption", lambda **_: answer(
        403, {"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}))
    assert S3Storage(s3).bucket_key_arn("someone-elses-bucket") is None


def test_a_new_bucket_that_never_answers_times_out_permanently(s3):
    """S3 is eventually consistent about new buckets: HEAD may say 404 for a moment after the create
    (moto answers at once, so a before-call handler keeps saying 404)."""
    from backends.errors import WaitTimedOutError
    from tests.aws.fakes import answer

    s3.meta.events.register("before-call.s3.HeadBucket", lambda **_: answer(404, {"Error": {"Code": "404",
                                                                                          "Message": "Not Found"}}))
    storage = S3Storage(s3)
    storage.bucket_wait_s = 0  # botocore's waiter: one attempt
    with pytest.raises(WaitTimedOutError, match="S3 bucket new-bucket-x to exist") as failure:
        storage.ensure_bucket("new-bucket-x")
    assert not is_transient(failure.value)
