"""S3 for the aws backend: buckets, dataset folders mirrored to a prefix, single objects.

It behaves like the local store (backends/local/store.py) on real S3:

- A folder upload sends only files whose SHA-256 changed, and removes objects whose file is gone,
  so a dataset prefix never mixes versions.
- Every object is uploaded with an S3-verified SHA-256 checksum (``ChecksumAlgorithm=SHA256``; for
  files below the multipart threshold our own precomputed digest, so S3 rejects bytes that differ
  from what was hashed) and the hex digest in its ``sha256`` metadata.
- ``<prefix>/_manifest.json`` is what marks a prefix as staged. It is written last, with
  ``"complete": true``, after every upload and deletion succeeded and a listing confirmed them.
  Before a sync changes anything it replaces the manifest with an incomplete one that keeps only the
  entries it will not touch, so a failed run is never counted as staged (``describe_prefix``
  refuses it) and the next run re-sends exactly what may be half-written.

The dataset checksum is the one of ``core.datasets.folder_checksum``: SHA-256 over the lines
``"relpath\\0sha256hex\\n"`` of every non-hidden file, sorted by path. It is recorded with each model
version (the data it was trained on) and names a staged prefix, so a prefix uploaded by other means
(``aws s3 sync``) is checksummed the same way: from each object's SHA-256 where S3 or its metadata
holds one, else by reading the object once (``DigestedDataset`` says how many and how much).
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from backends.aws.errors import error_code, http_status, is_not_found, or_none
from backends.aws.waiters import wait_until
from backends.errors import InvalidRequestError, NotFoundError
from backends.types import Progress, StagedDataset
from core.datasets import manifest_checksum, sha256_file
from core.retry import PermanentError, TransientError, is_transient
from core.uris import S3Uri, parse_s3_uri

log = logging.getLogger(__name__)

MANIFEST_NAME = "_manifest.json"
MANIFEST_VERSION = 1
MULTIPART_THRESHOLD = 16 * 1024 * 1024
DELETE_BATCH = 1000  # the most keys one DeleteObjects call takes
DIGEST_CHUNK = 1024 * 1024  # what reading an object to checksum it holds in memory at once, per thread


@dataclass(frozen=True)
class DigestedDataset(StagedDataset):
    """A prefix without a manifest some of whose objects carry no SHA-256 (e.g. `aws s3 sync` without
    --checksum-algorithm SHA256): their checksums come from reading them, digested_bytes in all."""

    digested_files: int = 0
    digested_bytes: int = 0


def _is_hidden(rel: str) -> bool:
    return rel.rsplit("/", 1)[-1].startswith(".")


class S3Storage:
    """The Storage service on S3, on a boto3 S3 client that the caller makes (backends/session.py).

    bucket: the default bucket's name, or a function that works it out (it may need the account id).
    kms: a KMS client, to find the key an SSE-KMS bucket names by alias or key id (bucket_key_arn).
    """

    def __init__(self, client, bucket: str | Callable[[], str] | None = None, max_workers: int = 8,
                 transfer_config: TransferConfig | None = None, kms=None):
        self.client = client
        self.kms = kms
        self.bucket_wait_s = 60.0  # how long a new bucket may take to answer HEAD
        self._bucket = bucket
        self._bucket_ready: str | None = None
        # SHA-256 of objects read to checksum them, by (bucket, key, ETag, size): a run's plan and its
        # staging (one backend) read each once.
        self._read_digests: dict[tuple[str, str, str, int], str] = {}
        self.max_workers = max(1, max_workers)
        self.transfer_config = transfer_config or TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD, max_concurrency=4,
            use_threads=True)

    # -- buckets ----------------------------------------------------------------------
    def default_bucket(self) -> str:
        """The configured bucket, made on first use when it does not exist yet."""
        if self._bucket_ready is None:
            if self._bucket is None:
                raise InvalidRequestError("no default bucket is configured: set aws.bucket")
            name = self._bucket() if callable(self._bucket) else self._bucket
            self.ensure_bucket(name)
            self._bucket_ready = name
        return self._bucket_ready

    def ensure_bucket(self, bucket: str, region: str | None = None) -> bool:
        """Create `bucket` in `region` if it does not exist, with all public access blocked and
        SSE-S3 default encryption. True if it was created; an existing bucket is left as it is."""
        region = region or self.client.meta.region_name or "us-east-1"
        try:
            self.client.head_bucket(Bucket=bucket)
            return False
        except ClientError as exc:
            if http_status(exc) == 403 or error_code(exc) in ("403", "Forbidden", "AccessDenied"):
                raise PermanentError(
                    f"S3 bucket {bucket!r} exists but these credentials cannot use it (bucket names are global; "
                    "it may belong to another account): set aws.bucket to a bucket of yours") from None
            if not is_not_found(exc):
                raise
        kwargs: dict = {"Bucket": bucket}
        if region != "us-east-1":  # us-east-1 takes no LocationConstraint
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self.client.create_bucket(**kwargs)
        except ClientError as exc:
            if error_code(exc) == "BucketAlreadyOwnedByYou":  # made meanwhile by another run
                return False
            if error_code(exc) == "BucketAlreadyExists":
                raise PermanentError(f"S3 bucket name {bucket!r} is taken by another account: set aws.bucket to "
                                     "another name") from None
            raise
        wait_until(self.client, "bucket_exists", what=f"S3 bucket {bucket} to exist", timeout_s=self.bucket_wait_s,
                   poll_seconds=2.0, Bucket=bucket)
        self.client.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
            "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True})
        self.client.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={"Rules": [
            {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})
        log.info("created S3 bucket %s in %s (public access blocked, SSE-S3)", bucket, region)
        return True

    def bucket_key_arn(self, bucket: str) -> str | None:
        """The ARN of the customer KMS key `bucket` encrypts new objects with (SSE-KMS, GetBucketEncryption),
        None for SSE-S3 or the AWS managed aws/s3 key (that one needs no grant), or when it cannot be read."""
        try:
            rules = self.client.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
        except ClientError as exc:
            if error_code(exc) == "ServerSideEncryptionConfigurationNotFoundError" or is_not_found(exc):
                return None
            if http_status(exc) != 403:
                raise
            log.warning("cannot read the default encryption of S3 bucket %s (%s): if it uses SSE-KMS, grant the "
                        "pipeline's roles kms:Decrypt on its key yourself", bucket, error_code(exc))
            return None
        for rule in rules:
            default = rule.get("ApplyServerSideEncryptionByDefault") or {}
            key = default.get("KMSMasterKeyID")
            if not default.get("SSEAlgorithm", "").startswith("aws:kms") or not key:
                continue
            if key.startswith("arn:") and ":key/" in key:
                return key
            if self.kms is None:
                raise ValueError(f"S3 bucket {bucket} encrypts with KMS key {key!r}: a KMS client is needed to find "
                                 "its ARN")
            try:  # an alias or a key id: the key's ARN
                return self.kms.describe_key(KeyId=key)["KeyMetadata"]["Arn"]
            except ClientError as exc:
                if is_transient(exc):
                    raise
                log.warning("cannot describe KMS key %s of S3 bucket %s (%s): grant the pipeline's roles "
                            "kms:Decrypt on it yourself", key, bucket, error_code(exc))
                return None
        return None

    # -- single objects -----------------------------------------------------------------
    def upload_file(self, path: str | os.PathLike, uri: str) -> str:
        """Upload one file with an S3-verified SHA-256 (also kept in its `sha256` metadata); returns `uri`."""
        loc = parse_s3_uri(uri)
        if not loc.key:
            raise InvalidRequestError(f"{uri} names a bucket, not an object")
        path = Path(path)
        self._upload(path, loc, sha256_file(path), path.stat().st_size)
        return loc.uri

    def read_object(self, uri: str) -> bytes:
        loc = parse_s3_uri(uri)
        try:
            return self.client.get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()
        except ClientError as exc:
            if is_not_found(exc):
                raise NotFoundError(f"no object at {uri}") from None
            raise

    def download_file(self, uri: str, path: str) -> str:
        loc = parse_s3_uri(uri)
        try:
            self.client.download_file(loc.bucket, loc.key, str(path), Config=self.transfer_config)
        except ClientError as exc:
            if is_not_found(exc):
                raise NotFoundError(f"no object at {uri}") from None
            raise
        return path

    def exists(self, uri: str) -> bool:
        """Whether an object is stored at exactly `uri` (list_objects answers for prefixes, not objects)."""
        loc = parse_s3_uri(uri)
        return or_none(self.client.head_object, Bucket=loc.bucket, Key=loc.key) is not None

    def list_objects(self, prefix_uri: str) -> list[str]:
        """Keys under the prefix, relative to it and sorted; the manifest and folder markers left out."""
        return sorted(rel for rel in self._list(parse_s3_uri(prefix_uri)) if rel != MANIFEST_NAME and
                      rel and not rel.endswith("/"))

    # -- dataset folders -------------------------------------------------------------------
    def upload_folder(self, folder: str | os.PathLike, prefix_uri: str, progress: Progress | None = None) -> StagedDataset:
        """Make prefix_uri mirror `folder`: upload new and changed files (by SHA-256), skip the rest,
        delete objects whose file is gone, then write the manifest. `progress(done, total)` is called
        once per file, from this thread, with `done` counting up to `total`."""
        root = Path(folder)
        if not root.is_dir():
            raise NotFoundError(f"{root} is not a folder")
        prefix = parse_s3_uri(prefix_uri)
        # The same walk as core.datasets.folder_checksum, so the checksum is the same.
        paths = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
        rels = [p.relative_to(root).as_posix() for p in paths]
        if MANIFEST_NAME in rels:
            raise InvalidRequestError(f"{root / MANIFEST_NAME}: a dataset cannot hold a top-level file named {MANIFEST_NAME}, "
                             "the name of the staging manifest; rename it")
        total = len(paths)
        with ThreadPoolExecutor(self.max_workers, thread_name_prefix="sha256") as pool:
            digests = list(pool.map(sha256_file, paths))
        sizes = [p.stat().st_size for p in paths]

        previous = self._read_manifest(prefix)
        old_files: dict = (previous or {}).get("files") or {}
        listed = self._list(prefix)
        keep: dict[str, dict] = {}
        to_upload: list[int] = []
        for i, rel in enumerate(rels):
            old, obj = old_files.get(rel), listed.get(rel)
            if (isinstance(old, dict) and obj is not None and old.get("sha256") == digests[i]
                    and old.get("size") == sizes[i] == obj["size"] and old.get("etag", obj["etag"]) == obj["etag"]):
                keep[rel] = {"sha256": digests[i], "size": sizes[i], "etag": obj["etag"]}
            else:
                to_upload.append(i)
        wanted = set(rels)
        stale = [rel for rel in listed if rel not in wanted and rel != MANIFEST_NAME]

        done = 0
        for _ in keep:
            done += 1
            if progress:
                progress(done, total)
        changing = bool(to_upload or stale)
        if changing:
            # From here until the final manifest the prefix is not staged; what this run may
            # overwrite or delete leaves the manifest first, so a re-run after a failure re-sends it.
            self._write_manifest(prefix, {"version": MANIFEST_VERSION, "complete": False, "files": keep})
            for _ in self._upload_all(prefix, [(paths[i], rels[i], digests[i], sizes[i]) for i in to_upload]):
                done += 1
                if progress:
                    progress(done, total)
            self._delete(prefix, stale)
            listed = self._list(prefix)

        files: dict[str, dict] = {}
        for i, rel in enumerate(rels):
            obj = listed.get(rel)
            if obj is None or obj["size"] != sizes[i]:
                raise RuntimeError(f"{prefix.join(rel).uri} is missing or has the wrong size after its upload; "
                                   "run the staging again")
            files[rel] = {"sha256": digests[i], "size": sizes[i], "etag": obj["etag"]}
        checksum = manifest_checksum(dict(zip(rels, digests)))
        manifest = {"version": MANIFEST_VERSION, "complete": True, "checksum": checksum,
                    "total_bytes": sum(sizes), "files": files}
        if changing or manifest != previous:
            self._write_manifest(prefix, manifest)
        return StagedDataset(uri=prefix.uri, files=total, uploaded=len(to_upload), unchanged=len(keep),
                             total_bytes=sum(sizes), checksum=checksum, deleted=len(stale))

    def describe_prefix(self, prefix_uri: str) -> StagedDataset:
        """A prefix that is already staged. With a manifest (staged by upload_folder): its checksum, after
        a listing confirms the objects are still those it names. Without one (uploaded by other
        means): the checksum from each object's SHA-256 (its `sha256` metadata, or a full-object
        SHA-256 checksum S3 kept), and for objects with neither, from reading them once (a
        DigestedDataset then says how many and how many bytes)."""
        prefix = parse_s3_uri(prefix_uri)
        manifest = self._read_manifest(prefix)
        if manifest is not None:
            return self._describe_from_manifest(prefix, manifest)
        return self._describe_from_objects(prefix)

    def _describe_from_manifest(self, prefix: S3Uri, manifest: dict) -> StagedDataset:
        files = manifest.get("files")
        if manifest.get("complete") is not True or not isinstance(files, dict):
            raise InvalidRequestError(f"{prefix.uri} is not completely staged: an upload to it failed or is still running. "
                             "Run the pipeline again with the local folder as data.source to finish it")
        checksum = manifest_checksum({rel: entry["sha256"] for rel, entry in files.items()})
        if checksum != manifest.get("checksum"):
            raise InvalidRequestError(f"{prefix.uri}/{MANIFEST_NAME} is inconsistent (its checksum does not match its file "
                             "list); stage the folder again with the pipeline")
        listed = {rel: obj for rel, obj in self._list(prefix).items() if rel != MANIFEST_NAME}
        missing = sorted(rel for rel, entry in files.items() if rel not in listed or listed[rel]["size"] != entry["size"]
                         or entry.get("etag", listed[rel]["etag"]) != listed[rel]["etag"])
        extra = sorted(rel for rel, obj in listed.items() if rel not in files and not (
            (rel == "" or rel.endswith("/")) and obj["size"] == 0))  # the console's empty "folder" objects
        if missing or extra:
            detail = "; ".join(part for part in (
                f"{len(missing)} changed or missing (e.g. {', '.join(missing[:3])})" if missing else "",
                f"{len(extra)} not in the manifest (e.g. {', '.join(extra[:3])})" if extra else "") if part)
            raise InvalidRequestError(f"{prefix.uri} changed since it was staged: {detail}. Stage the folder again with the "
                             "pipeline (data.source = the local folder)")
        total_bytes = sum(int(entry["size"]) for entry in files.values())
        return StagedDataset(uri=prefix.uri, files=len(files), uploaded=0, unchanged=len(files),
                             total_bytes=total_bytes, checksum=checksum)

    def _describe_from_objects(self, prefix: S3Uri) -> StagedDataset:
        listed = {rel: obj for rel, obj in self._list(prefix).items()
                  if rel and not rel.endswith("/") and not _is_hidden(rel)}
        if not listed:
            raise NotFoundError(f"nothing is stored under {prefix.uri}: give a local folder as data.source, or the "
                             "s3:// prefix the pipeline staged it to")
        located = {rel: S3Uri(prefix.bucket, self._key(prefix, rel)) for rel in listed}
        read_before = {rel: self._read_digests.get((loc.bucket, loc.key, listed[rel]["etag"], listed[rel]["size"]))
                       for rel, loc in located.items()}
        with ThreadPoolExecutor(self.max_workers, thread_name_prefix="s3-head") as pool:
            digests = dict(zip(listed, pool.map(lambda rel: read_before[rel] or self._object_sha256(located[rel]),
                                                listed)))
        unknown = sorted(rel for rel, digest in digests.items() if digest is None)
        if unknown:
            log.warning("%s: %d of its %d objects carry no SHA-256; reading them (%.1f MB) to checksum them",
                        prefix.uri, len(unknown), len(listed), sum(listed[rel]["size"] for rel in unknown) / 1e6)
            with ThreadPoolExecutor(self.max_workers, thread_name_prefix="s3-digest") as pool:
                digests.update(zip(unknown, pool.map(lambda rel: self._read_sha256(located[rel], listed[rel]),
                                                     unknown)))
        staged = dict(uri=prefix.uri, files=len(listed), uploaded=0, unchanged=len(listed),
                      total_bytes=sum(obj["size"] for obj in listed.values()), checksum=manifest_checksum(digests))
        digested = [rel for rel in listed if read_before[rel]] + unknown  # read now or earlier in this run
        if not digested:
            return StagedDataset(**staged)
        return DigestedDataset(**staged, digested_files=len(digested),
                               digested_bytes=sum(listed[rel]["size"] for rel in digested))

    def _read_sha256(self, loc: S3Uri, listed: dict) -> str:
        """The SHA-256 of an object's bytes, read once in chunks; IfMatch holds the read to the object listed."""
        try:
            body = self.client.get_object(Bucket=loc.bucket, Key=loc.key, IfMatch=listed["etag"])["Body"]
        except ClientError as exc:
            if error_code(exc) == "PreconditionFailed" or http_status(exc) == 412:
                raise TransientError(f"{loc.uri} changed while its checksum was computed; run again") from None
            raise
        digest = hashlib.sha256()
        with body:
            for chunk in body.iter_chunks(DIGEST_CHUNK):
                digest.update(chunk)
        self._read_digests[(loc.bucket, loc.key, listed["etag"], listed["size"])] = digest.hexdigest()
        return digest.hexdigest()

    def _object_sha256(self, loc: S3Uri) -> str | None:
        head = self.client.head_object(Bucket=loc.bucket, Key=loc.key, ChecksumMode="ENABLED")
        digest = (head.get("Metadata") or {}).get("sha256", "").lower()
        if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest):
            return digest
        # A full-object SHA-256 that S3 verified (e.g. `aws s3 cp --checksum-algorithm SHA256` of a small
        # file); a multipart upload's composite checksum ("...-N") is not the file's SHA-256.
        value = head.get("ChecksumSHA256") or ""
        if value and "-" not in value and head.get("ChecksumType", "FULL_OBJECT") == "FULL_OBJECT":
            try:
                raw = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                return None
            return raw.hex() if len(raw) == 32 else None
        return None

    # -- helpers --------------------------------------------------------------------------
    def _upload(self, path: Path, loc: S3Uri, sha256: str, size: int) -> None:
        extra = {"ChecksumAlgorithm": "SHA256", "Metadata": {"sha256": sha256}}
        if size < self.transfer_config.multipart_threshold:
            # One PutObject: S3 checks the bytes against the digest we computed, not one computed while
            # sending, so a file that changed after it was hashed is refused. (A multipart upload's
            # SHA-256 can only be per part, which boto3 computes and S3 checks.)
            extra["ChecksumSHA256"] = base64.b64encode(bytes.fromhex(sha256)).decode()
        try:
            self.client.upload_file(str(path), loc.bucket, loc.key, ExtraArgs=extra, Config=self.transfer_config)
        except S3UploadFailedError as exc:
            # boto3 hides the ClientError (and its code, which tells a throttle from a denial) in a
            # generic error; raise the ClientError so core.retry can classify it.
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, ClientError):
                cause.add_note(f"while uploading {path} to {loc.uri}")
                raise cause from None
            raise

    def _upload_all(self, prefix: S3Uri, items: list[tuple[Path, str, str, int]]) -> Iterator[str]:
        """Upload in parallel, yielding each relpath as its upload finishes. The first failure
        cancels what has not started, waits for what has, and is raised."""
        if not items:
            return
        pool = ThreadPoolExecutor(min(self.max_workers, len(items)), thread_name_prefix="s3-upload")
        futures = {pool.submit(self._upload, path, S3Uri(prefix.bucket, self._key(prefix, rel)), digest, size): rel
                   for path, rel, digest, size in items}
        try:
            for future in as_completed(futures):
                future.result()
                yield futures[future]
        finally:  # on a failure (or an interrupt): nothing new starts, what runs finishes
            pool.shutdown(wait=True, cancel_futures=True)

    def _list(self, prefix: S3Uri) -> dict[str, dict]:
        """Every object under the prefix (one paginated listing): {relpath: {"size", "etag"}}."""
        key_prefix = f"{prefix.key}/" if prefix.key else ""
        objects: dict[str, dict] = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=prefix.bucket, Prefix=key_prefix):
            for obj in page.get("Contents", []):
                objects[obj["Key"][len(key_prefix):]] = {"size": int(obj["Size"]), "etag": obj.get("ETag", "")}
        return objects

    def _delete(self, prefix: S3Uri, rels: list[str]) -> None:
        for start in range(0, len(rels), DELETE_BATCH):
            batch = [{"Key": self._key(prefix, rel)} for rel in rels[start:start + DELETE_BATCH]]
            response = self.client.delete_objects(Bucket=prefix.bucket, Delete={"Objects": batch, "Quiet": True})
            errors = response.get("Errors") or []
            if errors:
                first = errors[0]
                raise RuntimeError(f"could not delete {len(errors)} object(s) under {prefix.uri}, e.g. "
                                   f"{first.get('Key')}: {first.get('Code')} {first.get('Message')}")

    @staticmethod
    def _key(prefix: S3Uri, rel: str) -> str:
        # The listed key, byte for byte (S3Uri.join would strip the slashes of a folder marker).
        return f"{prefix.key}/{rel}" if prefix.key else rel

    def _read_manifest(self, prefix: S3Uri) -> dict | None:
        try:
            body = self.client.get_object(Bucket=prefix.bucket, Key=self._key(prefix, MANIFEST_NAME))["Body"].read()
        except ClientError as exc:
            if is_not_found(exc):
                return None
            raise
        try:
            manifest = json.loads(body)
        except ValueError:
            manifest = None
        if not isinstance(manifest, dict):
            log.warning("%s/%s is not a manifest; treating the prefix as not staged", prefix.uri, MANIFEST_NAME)
            return {"complete": False, "files": {}}
        return manifest

    def _write_manifest(self, prefix: S3Uri, manifest: dict) -> None:
        body = json.dumps(manifest, indent=1, sort_keys=True).encode()
        self.client.put_object(Bucket=prefix.bucket, Key=self._key(prefix, MANIFEST_NAME), Body=body,
                               ContentType="application/json", ChecksumAlgorithm="SHA256")
