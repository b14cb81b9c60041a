"""Where the studio keeps its files, and the limits it enforces.

Why one module: the CLI, the service layer and the app must agree on the data
folder and the caps, and environment variables are read in one place only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DATA_DIR_ENV = "RETRIEVAL_DATA_DIR"
CACHE_DIR_ENV = "RETRIEVAL_CACHE_DIR"
DB_NAME = "retrieval.sqlite"


def data_dir() -> Path:
    """The app's data folder: ``$RETRIEVAL_DATA_DIR``, else the host's default (see ``hosting``)."""
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    return hosting().data_dir


def _user_data_dir(environ: Mapping[str, str]) -> Path:
    """The XDG data home's folder for the studio (``~/.local/share/retrieval-studio``)."""
    base = environ.get("XDG_DATA_HOME") or Path(environ.get("HOME") or Path.home()) / ".local" / "share"
    return Path(base).expanduser() / "retrieval-studio"


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


# Hugging Face Spaces. The runtime sets SYSTEM=spaces and SPACE_ID=owner/name
# (Gradio itself tests exactly this pair), SPACE_HOST (owner-name.hf.space) and
# SPACE_AUTHOR_NAME / SPACE_REPO_NAME / SPACE_TITLE. Hardware is reported, when
# at all, by ACCELERATOR, SPACES_ZERO_GPU (ZeroGPU), CPU_CORES and MEMORY:
# each is optional here, and a missing one reads as "not reported".
SPACE_DATA_ROOT = Path("/data")  # where a Space's persistent storage is mounted
SPACE_DATA_DIR = SPACE_DATA_ROOT / "retrieval-studio"
# File systems on which SQLite's WAL (shared memory beside the database) is not
# safe: network and FUSE mounts. A persistent volume of one of these kinds is
# not chosen by default; RETRIEVAL_DATA_DIR can still point at it.
NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "lustre", "gcsfuse",
                       "s3fs", "sshfs", "virtiofs")


@dataclass(frozen=True)
class Hosting:
    """Where this process runs, as far as the environment tells, and the defaults that follow.

    ``data_dir`` is the default data folder here (``$RETRIEVAL_DATA_DIR``, when
    set, wins over it: see ``data_dir()``); ``data_note`` says why it was
    chosen. ``host`` is the default address to serve on: every interface on a
    Space (its proxy must reach the app), loopback elsewhere.
    """

    data_dir: Path
    data_note: str  # why data_dir, e.g. "persistent storage" or "no persistent storage: lost on restart"
    persistent: bool = True  # data_dir survives a restart (False on a Space without usable persistent storage)
    space_id: str | None = None  # "owner/name" on a Space
    space_host: str | None = None  # "owner-name.hf.space"
    hardware: str | None = None  # as reported by the Space, None when it says nothing

    @property
    def is_space(self) -> bool:
        return self.space_id is not None

    @property
    def host(self) -> str:
        return "0.0.0.0" if self.is_space else "127.0.0.1"

    @property
    def url(self) -> str | None:
        return f"https://{self.space_host}" if self.space_host else None

    def describe(self) -> str:
        """One line for the page's status: where this runs, on what, and where the data goes."""
        if not self.is_space:
            return f"Running locally; data in {self.data_dir}."
        return (f"Running on the Hugging Face Space {self.space_id}, hardware {self.hardware or 'not reported'}; "
                f"data in {self.data_dir} ({self.data_note}).")


def _hardware(environ: Mapping[str, str]) -> str | None:
    if environ.get("SPACES_ZERO_GPU", "").strip().lower() in ("1", "true", "yes"):
        return "zero-gpu"
    accelerator = environ.get("ACCELERATOR", "").strip()
    if accelerator:
        return accelerator
    cores, memory = environ.get("CPU_CORES", "").strip(), environ.get("MEMORY", "").strip()
    if cores or memory:
        return ", ".join(part for part in (f"{cores} vCPU" if cores else "", memory) if part)
    return None


def _filesystem(path: Path, mounts: str) -> tuple[str | None, str | None]:
    """The mount point and type of the file system holding ``path``, from ``/proc/mounts`` text."""
    best, found = "", (None, None)
    target = str(path)
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):  # the longest mount point wins; a later mount over it too
            best, found = point, (point, fields[2])
    return found


def _read_mounts() -> str:
    try:
        return Path("/proc/mounts").read_text()
    except OSError:
        return ""


def hosting(environ: Mapping[str, str] | None = None, data_root: Path = SPACE_DATA_ROOT,
            mounts: str | None = None) -> Hosting:
    """Read the hosting facts from ``environ`` (default ``os.environ``) and decide the defaults.

    On a Space (``SYSTEM=spaces`` and ``SPACE_ID`` set) the data folder is
    ``/data/retrieval-studio`` when ``/data`` (the persistent storage mount)
    is a mounted volume, writable, and a local file system (SQLite's WAL
    needs one), so the SQLite file, uploads,
    sessions, trained models and converted weights survive restarts. Without it
    the folder is the XDG data home in ``$HOME``, which a restart wipes. Off
    Spaces it is always the XDG data home. ``data_root`` and ``mounts`` (the
    text of ``/proc/mounts``) are parameters for tests.
    """
    env = os.environ if environ is None else environ
    local = _user_data_dir(env)
    space_id = env.get("SPACE_ID", "").strip() or None
    if env.get("SYSTEM", "").strip().lower() != "spaces" or space_id is None:
        return Hosting(local, "this machine's disk")
    fields = dict(space_id=space_id, space_host=env.get("SPACE_HOST", "").strip() or None, hardware=_hardware(env))
    if not data_root.is_dir():
        return Hosting(local, "no persistent storage: lost on restart", False, **fields)
    if not os.access(data_root, os.W_OK | os.X_OK):
        return Hosting(local, f"{data_root} is not writable: lost on restart", False, **fields)
    root = data_root.resolve()
    point, kind = _filesystem(root, _read_mounts() if mounts is None else mounts)
    if point is not None and point != str(root):  # a folder on the container's own disk, not a mounted volume
        return Hosting(local, f"{data_root} is not a mounted volume: lost on restart", False, **fields)
    if kind and (kind in NETWORK_FILESYSTEMS or kind.startswith("fuse")):
        return Hosting(local, f"{data_root} is a {kind} mount, unsafe for SQLite: lost on restart", False, **fields)
    return Hosting(data_root / SPACE_DATA_DIR.name, "persistent storage", True, **fields)
