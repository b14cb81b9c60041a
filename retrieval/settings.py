"""Where the studio keeps its files, and the limits it enforces.

Why one module: the CLI, the service layer and the app must agree on the data
folder and the caps, and environment variables are read in one place only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DATA_DIR_ENV = "RETRIEVAL_DATA_DIR"
CACHE_DIR_ENV = "RETRIEVAL_CACHE_DIR"
DB_NAME = "retrieval.sqlite"


def data_dir() -> Path:
    """The app's data folder: ``$RETRIEVAL_DATA_DIR`` or the XDG data home."""
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "retrieval-studio"


def default_db() -> Path:
    return data_dir() / DB_NAME


def cache_dir() -> Path:
    """Converted models live here, so a second load skips the conversion."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "retrieval-studio"


@dataclass(frozen=True)
class Limits:
    """Caps on what one decode or one upload may cost.

    The pixel cap is checked from the header, before any pixel is decoded, so
    a decompression bomb costs nothing.
    """

    max_pixels: int = 64_000_000
    max_file_bytes: int = 100 * 1024 * 1024
    max_files: int = 50_000
    max_total_bytes: int = 4 * 1024 * 1024 * 1024
