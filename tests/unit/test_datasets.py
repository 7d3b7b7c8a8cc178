import hashlib
import http.server
import threading
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
