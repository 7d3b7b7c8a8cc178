"""Storage promises, the same on both backends."""
import pytest

from backends.errors import NotFoundError
from core.datasets import folder_checksum


def test_upload_twice_copies_nothing_the_second_time(world, dataset):
    storage = world.backend.storage
    prefix = f"s3://{storage.default_bucket()}/{world.unique('data')}"
    first = storage.upload_folder(str(dataset), prefix)
    again = storage.upload_folder(str(dataset), prefix)
    assert (first.files, first.uploaded, first.unchanged) == (4, 4, 0)
    assert (again.files, again.uploaded, again.unchanged) == (4, 0, 4)
    assert first.checksum == again.checksum == folder_checksum(dataset)  # one checksum, whatever the backend
    assert storage.describe_prefix(prefix).checksum == first.checksum
    assert storage.list_objects(prefix) == ["test/dog/4.png", "train/cat/1.png", "train/dog/2.png", "valid/cat/3.png"]
    assert storage.read_object(f"{prefix}/train/dog/2.png") == b"dog two"


def test_a_changed_folder_replaces_what_changed_and_removes_what_is_gone(world, dataset):
    storage = world.backend.storage
    prefix = f"s3://{storage.default_bucket()}/{world.unique('data')}"
    storage.upload_folder(str(dataset), prefix)
    (dataset / "train" / "dog" / "2.png").write_bytes(b"dog TWO")
    (dataset / "valid" / "cat" / "3.png").unlink()
    changed = storage.upload_folder(str(dataset), prefix)
    assert (changed.uploaded, changed.unchanged, changed.deleted) == (1, 2, 1)
    assert "valid/cat/3.png" not in storage.list_objects(prefix)
    assert storage.describe_prefix(prefix).checksum == folder_checksum(dataset)


def test_what_is_not_there_is_not_found(world, tmp_path):
    storage = world.backend.storage
    bucket = storage.default_bucket()
    with pytest.raises(NotFoundError, match="no object at"):
        storage.read_object(f"s3://{bucket}/nothing/here.png")
    with pytest.raises(NotFoundError, match="nothing is stored under"):
        storage.describe_prefix(f"s3://{bucket}/nothing")
    with pytest.raises(NotFoundError, match="is not a folder"):
        storage.upload_folder(str(tmp_path / "missing"), f"s3://{bucket}/nothing")
    assert storage.list_objects(f"s3://{bucket}/nothing") == []


def test_one_file_round_trips(world, tmp_path):
    storage = world.backend.storage
    source = tmp_path / "weights.pth"
    source.write_bytes(b"\x00weights\xff")
    uri = f"s3://{storage.default_bucket()}/{world.unique('file')}/weights.pth"
    assert storage.upload_file(str(source), uri) == uri
    assert storage.read_object(uri) == b"\x00weights\xff"
