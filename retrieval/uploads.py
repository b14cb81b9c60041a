"""Uploaded files and zip archives -> image blobs stored by content hash.

Why its own stage: uploads come from strangers. A file's name never decides
where it lands on disk (blobs are named by sha256), zip entries that try to
escape (``../``, absolute paths), nested archives and symbolic links are
refused with a reason, and every cap (files, bytes, compression ratio) is
checked while reading, so a zip bomb costs at most the cap.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .files import Skipped, SourceFile, sha256
from .metadata import MAX_CSV_BYTES, SIDECAR
from .settings import Limits

_SAFE_EXT = re.compile(r"^\.[a-z0-9]{1,5}$")
_ARCHIVES = (".zip",)
_MAX_RATIO = 200  # uncompressed / compressed; photos barely compress, bombs do
_RATIO_FLOOR = 8 * 1024 * 1024  # below this a flat BMP or screenshot may compress 400:1 legitimately;
# the byte caps (read with a limit, never trusting the header) bound the cost anyway


class LimitExceeded(ValueError):
    """A cap on the whole upload was hit; the message names it."""


@dataclass
class Intake:
    """What an upload produced: blobs ready to index, and what was refused."""

    sources: list[SourceFile] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    total_bytes: int = 0
    limit_hit: str | None = None
    sidecars: dict[str, bytes] = field(default_factory=dict)  # zip name -> its root metadata.csv (captions, tags)
    hashes: dict[str, str] = field(default_factory=dict)  # source name -> sha256, to attach a sidecar's rows


def blob_path(root: Path, digest: str, name: str) -> Path:
    ext = Path(name).suffix.lower()
    return root / digest[:2] / f"{digest}{ext if _SAFE_EXT.match(ext) else '.bin'}"


def store_blob(root: Path, data: bytes, name: str) -> Path:
    """Write content once under its hash; safe when two writers race.

    Each writer fills its own uniquely named temporary file and renames it
    into place: a rename is atomic and both carry the same bytes, so
    whichever lands last changes nothing. An existing blob gets its time
    refreshed, which marks it as recently wanted for sweeps that go by age.
    """
    path = blob_path(root, sha256(data), name)
    if path.exists():
        os.utime(path)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _label_from_parts(parts: tuple[str, ...]) -> str | None:
    return parts[0] if len(parts) > 1 else None


def _read_capped(fh, cap: int, chunk: int = 1 << 20) -> bytes:
    """Read at most ``cap`` bytes in small pieces.

    One ``read(cap)`` would let zipfile inflate up to ``cap`` bytes in one
    go even when the header lies about the size; small reads keep a lying
    bomb's cost at one chunk before its CRC check fails.
    """
    parts, total = [], 0
    while total < cap:
        piece = fh.read(min(chunk, cap - total))
        if not piece:
            break
        parts.append(piece)
        total += len(piece)
    return b"".join(parts)


def _zip_entries(archive: Path, display: str, limits: Limits, intake: Intake) -> Iterator[tuple[str, str | None, bytes]]:
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        intake.skipped.append(Skipped(display, f"not a readable zip archive: {exc}"))
        return
    with zf:
        for info in zf.infolist():
            name = info.filename
            shown = f"{display}/{name}"
            if info.is_dir():
                continue
            path = PurePosixPath(name.replace("\\", "/"))
            if path.is_absolute() or ".." in path.parts or re.match(r"^[A-Za-z]:", name):
                intake.skipped.append(Skipped(shown, "unsafe path in archive (absolute or '..'); not extracted"))
                continue
            if stat.S_ISLNK(info.external_attr >> 16):
                intake.skipped.append(Skipped(shown, "symbolic link in archive; not followed"))
                continue
            if any(part.startswith(".") or part == "__MACOSX" for part in path.parts):
                continue  # resource forks and hidden files
            if len(path.parts) == 1 and path.name.lower() == SIDECAR:  # captions and tags, not an image
                try:
                    with zf.open(info) as fh:
                        intake.sidecars[display] = _read_capped(fh, MAX_CSV_BYTES + 1)  # the parser refuses more
                except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError) as exc:
                    intake.skipped.append(Skipped(shown, f"cannot extract: {exc}"))
                continue
            if path.suffix.lower() in _ARCHIVES:
                intake.skipped.append(Skipped(shown, "nested archive; not opened"))
                continue
            if info.file_size > limits.max_file_bytes:
                intake.skipped.append(Skipped(shown, f"file too large: {info.file_size:,} bytes exceeds {limits.max_file_bytes:,}"))
                continue
            if (info.file_size > _RATIO_FLOOR and info.compress_size
                    and info.file_size / info.compress_size > _MAX_RATIO):
                intake.skipped.append(Skipped(shown, f"suspicious compression ratio ({info.file_size // info.compress_size}:1); not extracted"))
                continue
            try:
                with zf.open(info) as fh:
                    data = _read_capped(fh, limits.max_file_bytes + 1)  # never trust the declared size
            except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError) as exc:
                intake.skipped.append(Skipped(shown, f"cannot extract: {exc}"))
                continue
            if len(data) > limits.max_file_bytes:
                intake.skipped.append(Skipped(shown, f"file too large: exceeds {limits.max_file_bytes:,} bytes"))
                continue
            yield shown, _label_from_parts(path.parts), data


def intake(uploads: list[tuple[Path, str, str | None]], store: Callable[[bytes, str], Path],
           limits: Limits = Limits()) -> Intake:
    """Store uploaded files (and the images inside zips) as content-named blobs.

    ``uploads`` holds (temporary path, name as the user called it, label);
    ``store(data, name)`` keeps one blob and returns its path (the service
    passes one that also marks the blob as held by this upload).
    Stops taking files once a whole-upload cap is reached and says which.
    """
    result = Intake()
    for path, display, label in uploads:
        path = Path(path)
        entries: Iterator[tuple[str, str | None, bytes]]
        if path.suffix.lower() in _ARCHIVES or display.lower().endswith(_ARCHIVES):
            entries = _zip_entries(path, display, limits, result)
        else:
            try:
                size = path.stat().st_size
                if size > limits.max_file_bytes:
                    result.skipped.append(Skipped(display, f"file too large: {size:,} bytes exceeds {limits.max_file_bytes:,}"))
                    continue
                entries = iter([(display, label, path.read_bytes())])
            except OSError as exc:
                result.skipped.append(Skipped(display, f"cannot read upload: {exc.strerror or exc}"))
                continue
        for name, entry_label, data in entries:
            if len(result.sources) >= limits.max_files:
                result.limit_hit = f"file limit reached: at most {limits.max_files:,} files per upload"
                result.skipped.append(Skipped(name, result.limit_hit))
                continue
            if result.total_bytes + len(data) > limits.max_total_bytes:
                result.limit_hit = f"size limit reached: at most {limits.max_total_bytes // (1024 * 1024):,} MB per upload"
                result.skipped.append(Skipped(name, result.limit_hit))
                continue
            result.total_bytes += len(data)
            blob = store(data, name)
            result.hashes[name] = sha256(data)
            result.sources.append(SourceFile(blob, name, entry_label if entry_label is not None else label))
    return result
