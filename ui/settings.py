"""The app's settings, parsed by ``app.py`` before anything heavy is imported."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class AppSettings:
    host: str
    port: int
    share: bool
    data_dir: Path
    max_files: int
    max_upload_mb: int
    max_pixels: int
    session_ttl_s: int
    cleanup_every_s: float | None = None  # None: a quarter of the TTL, within 60..600 s
    runtime: str = "auto"  # what runs the CNNs by default (the Search tab can override it per query)
    queue_size: int = 64  # requests waiting beyond this are refused with "queue full" instead of waiting forever
    where: str = ""  # one line on where this runs (a Space and its hardware), shown in the status
    private_host: bool = True  # one user (loopback, no share link, not a Space): may stop the demo's indexing
    gallery: str | None = None  # the shared gallery every tab starts on (None: the built-in demo, indexed at start)
