"""Dataset folders: layout checks, content checksums and safe zip extraction."""
from __future__ import annotations

import hashlib
import os
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path

SPLITS = ("train", "valid", "test")


class DatasetError(ValueError):
    """The dataset cannot be used; the message says what to fix."""


def check_layout(folder: str | os.PathLike) -> None:
    root = Path(folder)
    if not root.is_dir():
        raise DatasetError(f"data.source {root} is not a folder")
    missing = [s for s in SPLITS if not (root / s).is_dir()]
    if missing:
        raise DatasetError(f"{root} has no {', '.join(m + '/' for m in missing)}: a dataset holds train/, valid/ and test/, "
                           "each with one folder per class")


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_checksum(entries: dict[str, str]) -> str:
    """One SHA-256 for a dataset from {relative path: file SHA-256}: the definition every store shares."""
    manifest = hashlib.sha256()
    # Part by part, as pathlib orders paths ("a/b" before "a-b/c"), not as plain strings.
    for rel in sorted(entries, key=lambda r: tuple(r.split("/"))):
        manifest.update(f"{rel}\0{entries[rel]}\n".encode())
    return manifest.hexdigest()


def folder_checksum(folder: str | os.PathLike) -> str:
    """The dataset checksum of a folder (hidden files skipped)."""
    root = Path(folder)
    return manifest_checksum({p.relative_to(root).as_posix(): sha256_file(p)
                              for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")})


MAX_ZIP_BYTES = 50 * 1024**3
MAX_ZIP_ENTRIES = 500_000  # at the 50 GiB cap, about 100 KB an entry: a dataset of typical JPEGs
MAX_COMPRESSION_RATIO = 200  # images hardly compress (about 1:1); 200:1 is a zip bomb, not a dataset
RATIO_FLOOR_BYTES = 1 << 20  # smaller than this, an entry (or archive) is harmless whatever its ratio
_CHUNK = 1 << 20


def safe_extract_zip(archive: str | os.PathLike, destination: str | os.PathLike,
                     max_total_bytes: int = MAX_ZIP_BYTES, max_entries: int = MAX_ZIP_ENTRIES,
                     max_ratio: float = MAX_COMPRESSION_RATIO) -> Path:
    """Extract a dataset zip. Refuses, before writing anything: paths outside `destination`, links,
    encrypted entries, more than `max_entries` entries, an entry or the whole archive expanding more
    than `max_ratio`:1 (the whole against the file's real size), declared sizes adding up to more than
    `max_total_bytes`, entries whose data overlap (a quoted-overlap bomb); and while writing, an
    entry yielding more bytes than it declares (declared sizes can lie), so the total holds on disk."""
    target = Path(destination).resolve()
    target.mkdir(parents=True, exist_ok=True)
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        raise DatasetError(f"{archive} is not a readable zip archive ({exc})") from None
    with zf:
        members = _checked_members(zf.infolist(), target, max_total_bytes, max_entries, max_ratio,
                                   os.path.getsize(archive))
        _check_no_overlap(zf.infolist(), zf.start_dir)
        for info, path in members:
            _extract_member(zf, info, path)
    return dataset_root(target)


LOCAL_HEADER_BYTES = 30  # a zip local file header before its name and extra field


def _check_no_overlap(infos: list[zipfile.ZipInfo], central_directory_at: int) -> None:
    """Refuse entries whose data overlap (a quoted-overlap zip bomb: each entry's compressed data
    quotes the next entries, so a small file declares many times its size; Python before 3.11.8 does
    not notice). Each entry's header and data must end where the next entry, or the central
    directory, begins."""
    def span_end(info: zipfile.ZipInfo) -> int:  # at least: the extra field and a data descriptor may follow
        name = info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437")
        return info.header_offset + LOCAL_HEADER_BYTES + len(name) + info.compress_size

    spans = sorted((info.header_offset, span_end(info), info.filename) for info in infos)
    for (_, end, name), (next_start, _, next_name) in zip(spans, spans[1:] + [(central_directory_at, 0, None)]):
        if end > next_start:
            where = f"member {next_name!r}" if next_name is not None else "the central directory"
            raise DatasetError(f"zip member {name!r} overlaps {where}; refusing the archive (a zip bomb?)")


def _checked_members(infos: list[zipfile.ZipInfo], target: Path, max_total_bytes: int, max_entries: int,
                     max_ratio: float, archive_bytes: int) -> list[tuple[zipfile.ZipInfo, Path]]:
    """The archive's entries with where each goes, after the checks that need no decompression."""
    if len(infos) > max_entries:
        raise DatasetError(f"zip has {len(infos)} entries, more than the limit of {max_entries} (from member "
                           f"{infos[max_entries].filename!r} on); refusing the archive")
    members, declared = [], 0
    for info in infos:
        name = info.filename
        path = (target / name).resolve()
        if not str(path).startswith(str(target) + os.sep) and path != target:
            raise DatasetError(f"zip member {name!r} would be written outside {target}; refusing the archive")
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            raise DatasetError(f"zip member {name!r} is a symbolic link; refusing the archive")
        if info.flag_bits & 0x1:
            raise DatasetError(f"zip member {name!r} is encrypted; refusing the archive")
        if info.file_size >= RATIO_FLOOR_BYTES and info.file_size > max_ratio * max(info.compress_size, 1):
            raise DatasetError(f"zip member {name!r} expands {info.file_size / max(info.compress_size, 1):.0f}:1, "
                               f"more than the limit of {max_ratio:g}:1; refusing the archive (a zip bomb?)")
        declared += info.file_size
        if declared > max_total_bytes:
            raise DatasetError(f"zip expands to more than the limit of {max_total_bytes} bytes (at member {name!r}); "
                               "refusing the archive")
        members.append((info, path))
    # Against the file's real size: entries' compressed sizes can overlap and add up to more than the file.
    if declared >= RATIO_FLOOR_BYTES and declared > max_ratio * max(archive_bytes, 1):
        raise DatasetError(f"zip expands {declared / max(archive_bytes, 1):.0f}:1 overall, more than the limit of "
                           f"{max_ratio:g}:1; refusing the archive (a zip bomb?)")
    return members


def _extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> None:
    """Write one entry, never more bytes than it declares."""
    name, written = info.filename, 0
    try:
        if info.is_dir():
            path.mkdir(parents=True, exist_ok=True)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as source, open(path, "wb") as out:
            while chunk := source.read(_CHUNK):
                written += len(chunk)
                if written > info.file_size:
                    raise DatasetError(f"zip member {name!r} holds more than its declared {info.file_size} bytes; "
                                       "refusing the archive")
                out.write(chunk)
    except (FileExistsError, NotADirectoryError, IsADirectoryError):
        raise DatasetError(f"zip member {name!r} is both a file and a folder in the archive; refusing it") from None
    # zipfile raises NotImplementedError for a compression method it lacks (e.g. deflate64).
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise DatasetError(f"zip member {name!r} cannot be read ({exc or type(exc).__name__}); refusing the archive"
                           ) from None


def dataset_root(folder: Path) -> Path:
    """The folder holding train/valid/test: the folder itself or its single top-level subfolder."""
    if all((folder / s).is_dir() for s in SPLITS):
        return folder
    children = [c for c in folder.iterdir() if c.is_dir() and not c.name.startswith(("__MACOSX", "."))]
    if len(children) == 1 and all((children[0] / s).is_dir() for s in SPLITS):
        return children[0]
    return folder


def pick_samples(keys: list[str], count: int) -> list[str]:
    """Up to `count` test images spread over the classes (round robin, in sorted order): `class/file` keys."""
    by_class: dict[str, list[str]] = {}
    for key in sorted(keys):
        if "/" in key:
            by_class.setdefault(key.split("/", 1)[0], []).append(key)
    picked, round_ = [], 0
    while len(picked) < count and any(round_ < len(v) for v in by_class.values()):
        for files in by_class.values():
            if round_ < len(files) and len(picked) < count:
                picked.append(files[round_])
        round_ += 1
    return picked


def combined_test_set(frozen: Mapping[str, str], current: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """The images a champion and a challenger are both evaluated on: the champion's frozen test split,
    plus the current split's images it does not hold (by content, SHA-256). Each item is
    (origin, key in its split, key to evaluate under); keys are `<label>/<file>`, and a new image
    whose key is taken by a different frozen image is evaluated as `<label>/new-<file>`.
    `frozen` and `current` map key -> SHA-256; origin is "frozen" or "current"."""
    chosen = [("frozen", key, key) for key in sorted(frozen)]
    seen_digests, taken = set(frozen.values()), set(frozen)
    for key in sorted(current):
        if current[key] in seen_digests:
            continue
        label, _, name = key.partition("/")
        target = key if key not in taken else f"{label}/new-{name}"
        while target in taken:
            target = f"{label}/new-{target.split('/', 1)[1]}"
        chosen.append(("current", key, target))
        seen_digests.add(current[key])
        taken.add(target)
    return chosen
