import hashlib
import http.server
import io
import stat
import threading
import random
import zipfile

import pytest

from backends.local.store import LocalStore
from core.datasets import DatasetError, check_layout, folder_checksum, pick_samples, safe_extract_zip
from core.names import PipelineNames, resource_name, timestamped_name, trial_job_name
from core.retry import PermanentError
from tasks.stage_dataset import download_zip


def test_zip_with_a_path_outside_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("train/cat/ok.png", b"x")
        zf.writestr("../../outside.txt", b"gotcha")
    with pytest.raises(DatasetError, match="would be written outside"):
        safe_extract_zip(archive, tmp_path / "out")
    assert not (tmp_path / "outside.txt").exists() and not (tmp_path / "out" / "train").exists()


def dataset_zip(path, extra=(), compression=zipfile.ZIP_DEFLATED):
    """A small valid dataset zip, plus `extra` (name or ZipInfo, bytes) members."""
    with zipfile.ZipFile(path, "w", compression) as zf:
        for split in ("train", "valid", "test"):
            zf.writestr(f"{split}/cat/a.png", b"\x89PNG" + bytes(range(256)))
        for name, data in extra:
            zf.writestr(name, data)
    return path


def test_zip_with_an_absolute_path_is_refused(tmp_path):
    archive = dataset_zip(tmp_path / "evil.zip", [("/tmp/evil.txt", b"gotcha")])
    with pytest.raises(DatasetError, match="would be written outside"):
        safe_extract_zip(archive, tmp_path / "out")


def test_zip_with_a_symbolic_link_is_refused(tmp_path):
    link = zipfile.ZipInfo("train/cat/b.png")
    link.create_system = 3  # unix: the mode is in the high bits of external_attr
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive = dataset_zip(tmp_path / "link.zip", [(link, b"../../../../etc/passwd")])
    with pytest.raises(DatasetError, match="'train/cat/b.png' is a symbolic link"):
        safe_extract_zip(archive, tmp_path / "out")
    assert not (tmp_path / "out" / "train").exists()


def test_zip_bomb_entry_is_refused_before_anything_is_written(tmp_path):
    archive = dataset_zip(tmp_path / "bomb.zip", [("train/cat/bomb.png", bytes(4 << 20))])  # ~1000:1
    with pytest.raises(DatasetError, match=r"'train/cat/bomb.png' expands \d+:1, more than the limit of 200:1"):
        safe_extract_zip(archive, tmp_path / "out")
    assert not (tmp_path / "out" / "train").exists()


def test_many_small_bombs_are_refused_by_the_overall_ratio(tmp_path):
    small = [(f"train/cat/{i}.png", bytes(512 << 10)) for i in range(8)]  # each under the per-entry floor
    archive = dataset_zip(tmp_path / "bombs.zip", small)
    with pytest.raises(DatasetError, match=r"expands \d+:1 overall, more than the limit of 200:1"):
        safe_extract_zip(archive, tmp_path / "out")


def test_a_small_compressible_file_is_fine(tmp_path):
    archive = dataset_zip(tmp_path / "ok.zip", [("labels.txt", bytes(64 << 10))])  # 64 KiB of zeros: ~600:1
    assert (safe_extract_zip(archive, tmp_path / "out") / "labels.txt").stat().st_size == 64 << 10


def test_too_many_entries_are_refused(tmp_path):
    archive = dataset_zip(tmp_path / "many.zip", [(f"train/cat/{i}.png", b"x") for i in range(8)])
    with pytest.raises(DatasetError, match=r"11 entries, more than the limit of 10 \(from member 'train/cat/7.png'"):
        safe_extract_zip(archive, tmp_path / "out", max_entries=10)
    assert safe_extract_zip(archive, tmp_path / "out", max_entries=11).name == "out"


def test_declared_total_over_the_limit_is_refused(tmp_path):
    archive = dataset_zip(tmp_path / "big.zip", [("train/cat/big.png", bytes(range(256)) * 64)])
    with pytest.raises(DatasetError, match=r"more than the limit of 10000 bytes \(at member 'train/cat/big.png'\)"):
        safe_extract_zip(archive, tmp_path / "out", max_total_bytes=10_000)


def test_a_member_lying_about_its_size_is_refused(tmp_path):
    archive = dataset_zip(tmp_path / "liar.zip", [("train/cat/liar.png", b"A" * 1000)], zipfile.ZIP_STORED)
    data = bytearray(archive.read_bytes())
    # Declare 10 bytes (local header offset 22, central directory offset 24) for the 1000 stored.
    local, central = data.rfind(b"PK\x03\x04"), data.rfind(b"PK\x01\x02")
    data[local + 22:local + 26] = data[central + 24:central + 28] = (10).to_bytes(4, "little")
    archive.write_bytes(data)
    with pytest.raises(DatasetError, match="'train/cat/liar.png' cannot be read"):
        safe_extract_zip(archive, tmp_path / "out")
    assert (tmp_path / "out" / "train" / "cat" / "liar.png").stat().st_size <= 10


def test_bytes_written_never_exceed_the_declared_size(tmp_path, monkeypatch):
    # Declared sizes can lie and a zip reader need not stop at them (CPython's does, as the test above
    # shows): one handing out more bytes than declared is refused before they are written.
    archive = dataset_zip(tmp_path / "d.zip")
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, info, *a, **k: io.BytesIO(b"x" * (5 << 20)))
    with pytest.raises(DatasetError, match=r"'train/cat/a.png' holds more than its declared 260 bytes"):
        safe_extract_zip(archive, tmp_path / "out")
    assert (tmp_path / "out" / "train" / "cat" / "a.png").stat().st_size == 0


def test_encrypted_members_and_non_zips_are_refused(tmp_path):
    archive = dataset_zip(tmp_path / "locked.zip", [("train/cat/b.png", b"x")])
    data = bytearray(archive.read_bytes())  # zipfile cannot encrypt: set the "encrypted" flag bit by hand
    data[data.rfind(b"PK\x03\x04") + 6] |= 0x1
    data[data.rfind(b"PK\x01\x02") + 8] |= 0x1
    archive.write_bytes(data)
    with pytest.raises(DatasetError, match="'train/cat/b.png' is encrypted"):
        safe_extract_zip(archive, tmp_path / "out")
    (tmp_path / "not.zip").write_bytes(b"<html>not found</html>")
    with pytest.raises(DatasetError, match="not a readable zip archive"):
        safe_extract_zip(tmp_path / "not.zip", tmp_path / "out")


def test_a_member_that_is_both_file_and_folder_is_refused(tmp_path):
    archive = dataset_zip(tmp_path / "clash.zip", [("train/cat", b"x")])  # train/cat/ holds a.png already
    with pytest.raises(DatasetError, match="'train/cat' is both a file and a folder"):
        safe_extract_zip(archive, tmp_path / "out")


def test_zip_with_one_top_folder_is_unwrapped(tmp_path):
    archive = tmp_path / "dogs.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for split in ("train", "valid", "test"):
            zf.writestr(f"dogImages/{split}/001.Affenpinscher/a.jpg", b"x")
    root = safe_extract_zip(archive, tmp_path / "out")
    assert root.name == "dogImages"
    check_layout(root)


def test_layout_errors_say_what_to_fix(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetError, match="has no valid/, test/"):
        check_layout(tmp_path)


def test_checksum_matches_the_store(tmp_path, tiny_dataset):
    store = LocalStore(tmp_path / "store")
    assert store.sync_folder(tiny_dataset, "s3://bucket/d").manifest_sha256 == folder_checksum(tiny_dataset)


def test_samples_spread_over_classes():
    keys = [f"{c}/{i}.png" for c in ("cat", "dog", "fox") for i in range(5)] + ["README"]
    picked = pick_samples(keys, 5)
    assert picked == ["cat/0.png", "dog/0.png", "fox/0.png", "cat/1.png", "dog/1.png"]
    assert len(pick_samples(keys, 100)) == 15


def test_download_checks_the_sha256(tmp_path):
    payload = b"PK zip bytes"
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "d.zip").write_bytes(payload)
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path / "served"), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/d.zip"
    try:
        good = download_zip(url, hashlib.sha256(payload).hexdigest(), tmp_path / "ok.zip")
        assert good.read_bytes() == payload
        with pytest.raises(PermanentError, match="not the configured data.sha256"):
            download_zip(url, "0" * 64, tmp_path / "bad.zip")
    finally:
        server.shutdown()


def test_names_fit_sagemaker_limits():
    names = PipelineNames("sagemaker-flows", "dev")
    assert names.endpoint == "sagemaker-flows-dev-endpoint" and names.function == "sagemaker-flows-dev-predict"
    tuning = timestamped_name(names.tuning_job_prefix, 32)
    assert len(tuning) <= 32 and tuning.startswith("dev-tune-")
    assert trial_job_name(tuning, 3, "abcdef0123") == f"{tuning}-003-abcdef01"
    assert resource_name("a" * 40, "b" * 12, "endpoint") == ("a" * 40 + "-" + "b" * 12 + "-endpoint")[:63]


def test_combined_test_set_keeps_the_frozen_split_and_adds_only_new_images():
    from core.datasets import combined_test_set

    frozen = {"cat/1.png": "a", "dog/2.png": "b"}
    current = {"cat/1.png": "a", "cat/3.png": "c", "dog/2.png": "d", "dog/4.png": "b"}
    chosen = combined_test_set(frozen, current)
    assert chosen == [("frozen", "cat/1.png", "cat/1.png"), ("frozen", "dog/2.png", "dog/2.png"),
                      ("current", "cat/3.png", "cat/3.png"), ("current", "dog/2.png", "dog/new-2.png")]
    # dog/4.png has the bytes of the frozen dog/2.png: the same image is not evaluated twice
    assert combined_test_set({}, current) == [("current", k, k) for k in sorted(current)]


def test_job_names_of_a_flow_run_are_the_same_on_every_retry_and_fit():
    names = PipelineNames("a" * 24, "b" * 12)
    token = "261202-065744-a1b2"
    assert names.tuning_job(token) == names.tuning_job(token) and len(names.tuning_job(token)) <= 32
    assert names.tuning_job(token).endswith(token) and names.training_job(token).endswith(token)
    assert len(names.training_job(token)) <= 63
    assert names.tuning_job(token) != names.tuning_job("261202-065745-c3d4")


def quoted_overlap_zip(path, entries: int, kernel: bytes):
    """A quoted-overlap zip bomb (Fifield 2019): entry i's deflate stream is a stored block quoting the
    local header of entry i+1, then entry i+1's own data, down to one shared compressed kernel. Every
    entry is a valid deflate stream, so only the overlap (or the real file size) gives it away."""
    import struct
    import zlib

    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    packed = compressor.compress(kernel) + compressor.flush()
    names = [f"train/cat/{i:04d}.png".encode() for i in range(entries)]

    def local_header(i, crc, csize, usize):
        return struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, csize, usize, len(names[i]), 0) + names[i]

    headers, crcs, csizes, usizes = [b""] * entries, [0] * entries, [0] * entries, [0] * entries
    output = kernel  # what entry i+1 decompresses to
    for i in reversed(range(entries)):
        if i < entries - 1:
            output = headers[i + 1] + output
        csizes[i] = len(packed) if i == entries - 1 else 5 + len(headers[i + 1]) + csizes[i + 1]
        crcs[i], usizes[i] = zlib.crc32(output), len(output)
        headers[i] = local_header(i, crcs[i], csizes[i], usizes[i])
    body, offsets = b"", []
    for i in range(entries):
        offsets.append(len(body))
        body += headers[i]
        if i < entries - 1:
            quoted = len(headers[i + 1])
            body += struct.pack("<BHH", 0, quoted, quoted ^ 0xFFFF)  # a non-final stored block: the next header
    body += packed
    directory = b"".join(
        struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0x21, crcs[i], csizes[i], usizes[i],
                    len(names[i]), 0, 0, 0, 0, 0o100644 << 16, offsets[i]) + names[i] for i in range(entries))
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, entries, entries, len(directory), len(body), 0)
    path.write_bytes(body + directory + end)
    return sum(usizes)


def test_quoted_overlap_zip_bomb_is_refused_before_anything_is_written(tmp_path):
    archive = tmp_path / "overlap.zip"
    expands_to = quoted_overlap_zip(archive, 40, bytes(1 << 20))
    with zipfile.ZipFile(archive) as zf:  # what makes it dangerous: every entry reads back as valid
        assert zf.testzip() is None and sum(i.file_size for i in zf.infolist()) == expands_to
    assert expands_to > 20 * archive.stat().st_size  # under the per-entry 200:1 check, over it in truth
    with pytest.raises(DatasetError, match="overlaps member 'train/cat/0001.png'"):
        safe_extract_zip(archive, tmp_path / "out", max_ratio=10**6)  # past the ratio checks: the overlap
    assert not (tmp_path / "out" / "train").exists()


def test_an_archive_expanding_past_the_ratio_of_its_real_size_is_refused(tmp_path):
    """Entries that each expand ~1:1 but share their data: 300 of them declare ~270 times the file's
    size. Their compressed sizes overlap too, so only the file's real size shows the ratio."""
    archive = tmp_path / "overlap.zip"
    expands_to = quoted_overlap_zip(archive, 300, random.Random(7).randbytes(256 << 10))
    with zipfile.ZipFile(archive) as zf:
        assert all(i.file_size < 2 * i.compress_size for i in zf.infolist())
        assert expands_to < 2 * sum(i.compress_size for i in zf.infolist())
    with pytest.raises(DatasetError, match=r"zip expands 2\d\d:1 overall, more than the limit of 200:1"):
        safe_extract_zip(archive, tmp_path / "out", max_total_bytes=expands_to, max_ratio=200)
