"""Find the image files of a folder, their labels, and their content hashes.

Why separate from decoding: walking a folder decides *which* files enter the
pipeline and with what label; it never opens an image. Labels come from the
first-level subfolder (``root/cats/x.jpg`` -> ``cats``) or from a CSV.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from .settings import Limits

V = TypeVar("V")


@dataclass(frozen=True)
class SourceFile:
    path: Path
    name: str  # path relative to the indexed folder, with forward slashes
    label: str | None


@dataclass(frozen=True)
class Skipped:
    name: str
    reason: str


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def label_for(relative: Path) -> str | None:
    """The first-level subfolder name, or None for files at the top."""
    return relative.parts[0] if len(relative.parts) > 1 else None


def scan_folder(root: str | Path, limits: Limits = Limits()) -> tuple[list[SourceFile], list[Skipped]]:
    """Every candidate file under ``root``, recursively, in a stable order.

    Hidden files and folders are ignored silently (``.DS_Store``, ``.git``).
    Symbolic links are followed only when they stay inside ``root``, so an
    uploaded folder cannot smuggle in files from elsewhere on the disk.
    Whether a file is an image is left to the decoder, which says why not.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"not a folder: {root}")
    real_root = root.resolve()
    found: list[SourceFile] = []
    skipped: list[Skipped] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for file in sorted(files):
            if file.startswith("."):
                continue
            path = Path(folder) / file
            relative = path.relative_to(root)
            name = relative.as_posix()
            if path.is_symlink():
                target = path.resolve()
                if not target.is_relative_to(real_root):
                    skipped.append(Skipped(name, "symbolic link points outside the folder"))
                    continue
            if not path.is_file():
                skipped.append(Skipped(name, "not a regular file"))
                continue
            size = path.stat().st_size
            if size > limits.max_file_bytes:
                skipped.append(Skipped(name, f"file too large: {size:,} bytes exceeds {limits.max_file_bytes:,}"))
                continue
            if len(found) >= limits.max_files:
                skipped.append(Skipped(name, f"over the limit of {limits.max_files:,} files per batch"))
                continue
            found.append(SourceFile(path, name, label_for(relative)))
    return found, skipped


def match_key(table: dict[str, V], name: str) -> str | None:
    """The key of ``table`` that names the file ``name``: its relative path, else its bare file name.

    The one matching rule for every per-file CSV (labels, captions and tags),
    so a file named one way in one CSV is found the same way in the other.
    """
    if name in table:
        return name
    bare = Path(name).name
    return bare if bare in table else None


def read_labels_csv(path: str | Path) -> dict[str, str]:
    """``filename,label`` rows -> {filename: label}; a header row is optional.

    Keys may be bare file names or paths relative to the indexed folder; the
    caller matches either.
    """
    labels: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        for row in csv.reader(fh):
            if len(row) < 2 or not row[0].strip():
                continue
            key, label = row[0].strip(), row[1].strip()
            if (key.lower(), label.lower()) in {("filename", "label"), ("file", "label"), ("path", "label"), ("name", "label")}:
                continue
            labels[key.replace("\\", "/")] = label
    return labels
