import pytest

from backends.errors import NotFoundError
from backends.local.store import LocalStore, sha256_file
from tests.helpers import make_folder  # noqa: E402


def test_upload_copies_only_what_changed(tmp_path):
    store = LocalStore(tmp_path / "store")
    folder = make_folder(tmp_path / "data", {"train/cat/1.png": b"a", "train/dog/2.png": b"b", "test/cat/3.png": b"c"})
    first = store.sync_folder(folder, "s3://bucket/datasets/pets")
    assert (first.uploaded, first.unchanged, first.deleted) == (3, 0, 0)

    again = store.sync_folder(folder, "s3://bucket/datasets/pets")
    assert (again.uploaded, again.unchanged) == (0, 3)
    assert again.manifest_sha256 == first.manifest_sha256

    (folder / "train/dog/2.png").write_bytes(b"changed")
    (folder / "test/cat/3.png").unlink()
    (folder / "valid/cat/4.png").parent.mkdir(parents=True)
    (folder / "valid/cat/4.png").write_bytes(b"d")
    third = store.sync_folder(folder, "s3://bucket/datasets/pets")
    assert (third.uploaded, third.unchanged, third.deleted) == (2, 1, 1)
    assert store.list("s3://bucket/datasets/pets") == ["train/cat/1.png", "train/dog/2.png", "valid/cat/4.png"]
    assert store.path("s3://bucket/datasets/pets/train/dog/2.png").read_bytes() == b"changed"
    assert third.manifest_sha256 != first.manifest_sha256


def test_checksum_not_mtime_decides(tmp_path):
    store = LocalStore(tmp_path / "store")
    folder = make_folder(tmp_path / "data", {"a.bin": b"same"})
    store.sync_folder(folder, "s3://bucket/x")
    # Same size, different bytes: must be uploaded again.
    (folder / "a.bin").write_bytes(b"diff")
    assert store.sync_folder(folder, "s3://bucket/x").uploaded == 1
    assert store.head("s3://bucket/x/a.bin")["sha256"] == sha256_file(folder / "a.bin")


def test_objects_round_trip_and_bad_uris(tmp_path):
    store = LocalStore(tmp_path / "store")
    source = tmp_path / "m.tar.gz"
    source.write_bytes(b"model")
    store.put_file(source, "s3://bucket/models/m.tar.gz")
    assert store.exists("s3://bucket/models/m.tar.gz")
    assert store.read("s3://bucket/models/m.tar.gz") == b"model"
    with pytest.raises(NotFoundError, match="no object at"):
        store.read("s3://bucket/models/none")
    with pytest.raises(ValueError, match="not allowed"):
        store.path("s3://bucket/../etc/passwd")
    with pytest.raises(ValueError, match="not an s3:// URI"):
        store.path("/etc/passwd")
