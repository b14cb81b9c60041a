"""Hosting facts read from the environment, and the defaults they decide (``retrieval.settings``)."""

from pathlib import Path

import pytest

from retrieval import settings
from retrieval.settings import Hosting, hosting

SPACE = {"SYSTEM": "spaces", "SPACE_ID": "owner/retrieval-studio", "SPACE_HOST": "owner-retrieval-studio.hf.space",
         "HOME": "/home/user"}
LOCAL_DISK = "/dev/sda1 {root} ext4 rw,relatime 0 0\n"


def test_off_spaces_the_xdg_data_home(tmp_path):
    h = hosting({"HOME": "/home/me"}, data_root=tmp_path)
    assert not h.is_space and h.host == "127.0.0.1" and h.url is None and h.persistent
    assert h.data_dir == Path("/home/me/.local/share/retrieval-studio")
    assert h.describe() == "Running locally; data in /home/me/.local/share/retrieval-studio."
    assert hosting({"HOME": "/home/me", "XDG_DATA_HOME": "/xdg"}, data_root=tmp_path).data_dir == Path(
        "/xdg/retrieval-studio")


@pytest.mark.parametrize("env", [
    {"SPACE_ID": "owner/name"},  # a Space id without SYSTEM=spaces (Gradio asks for both too)
    {"SYSTEM": "spaces"},  # SYSTEM without an id
    {"SYSTEM": "laptop", "SPACE_ID": "owner/name"},
])
def test_a_space_needs_both_system_and_id(env, tmp_path):
    assert not hosting({"HOME": "/h", **env}, data_root=tmp_path).is_space


def test_space_with_persistent_storage_keeps_data_there(tmp_path):
    h = hosting(SPACE, data_root=tmp_path, mounts=LOCAL_DISK.format(root=tmp_path))
    assert h.is_space and h.host == "0.0.0.0" and h.persistent
    assert h.space_id == "owner/retrieval-studio" and h.url == "https://owner-retrieval-studio.hf.space"
    assert h.data_dir == tmp_path / "retrieval-studio"
    assert h.describe() == (f"Running on the Hugging Face Space owner/retrieval-studio, hardware not reported; "
                            f"data in {tmp_path / 'retrieval-studio'} (persistent storage).")


def test_space_without_persistent_storage_uses_home_and_says_it_is_lost(tmp_path):
    h = hosting(SPACE, data_root=tmp_path / "missing")
    assert h.is_space and not h.persistent
    assert h.data_dir == Path("/home/user/.local/share/retrieval-studio")
    assert "lost on restart" in h.describe() and "owner/retrieval-studio" in h.describe()


def test_space_with_read_only_data_root_falls_back(tmp_path, monkeypatch):
    monkeypatch.setattr(settings.os, "access", lambda path, mode: False)
    h = hosting(SPACE, data_root=tmp_path, mounts=LOCAL_DISK.format(root=tmp_path))
    assert not h.persistent and "not writable" in h.data_note


@pytest.mark.parametrize("kind", ["nfs4", "fuse", "fuse.hf-mount", "cifs", "9p"])
def test_network_mount_is_not_chosen_for_sqlite(kind, tmp_path):
    mounts = f"overlay / overlay rw 0 0\nserver:/vol {tmp_path} {kind} rw 0 0\n"
    h = hosting(SPACE, data_root=tmp_path, mounts=mounts)
    assert not h.persistent and h.data_dir == Path("/home/user/.local/share/retrieval-studio")
    assert kind in h.data_note and "SQLite" in h.data_note


def test_a_plain_folder_is_not_persistent_storage(tmp_path):
    """``/data`` that is only a folder on the container's disk is wiped with it."""
    h = hosting(SPACE, data_root=tmp_path, mounts="overlay / overlay rw 0 0\n")
    assert not h.persistent and "not a mounted volume" in h.data_note


def test_longest_mount_point_decides(tmp_path):
    """``/`` on a network file system does not make a local ``/data`` disk unsafe, and the reverse."""
    data = tmp_path / "data"
    data.mkdir()
    assert hosting(SPACE, data_root=data, mounts=f"host:/ / nfs rw 0 0\n/dev/x {data} ext4 rw 0 0\n").persistent
    assert not hosting(SPACE, data_root=data, mounts=f"/dev/x / ext4 rw 0 0\nh:/v {data} nfs rw 0 0\n").persistent
    spaced = tmp_path / "with space"
    spaced.mkdir()
    escaped = str(spaced).replace(" ", "\\040")
    assert not hosting(SPACE, data_root=spaced, mounts=f"/dev/x / ext4 rw 0 0\nh:/v {escaped} nfs rw 0 0\n").persistent


@pytest.mark.parametrize("env, hardware", [
    ({}, None),
    ({"ACCELERATOR": "t4-small"}, "t4-small"),
    ({"SPACES_ZERO_GPU": "true"}, "zero-gpu"),
    ({"CPU_CORES": "2", "MEMORY": "16Gi"}, "2 vCPU, 16Gi"),
])
def test_hardware_as_reported(env, hardware, tmp_path):
    h = hosting({**SPACE, **env}, data_root=tmp_path / "missing")
    assert h.hardware == hardware
    assert f"hardware {hardware or 'not reported'};" in h.describe()


def test_explicit_data_dir_always_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("RETRIEVAL_DATA_DIR", str(tmp_path / "mine"))
    for key, value in SPACE.items():
        monkeypatch.setenv(key, value)
    assert settings.data_dir() == tmp_path / "mine"
    assert settings.default_db() == tmp_path / "mine" / "retrieval.sqlite"


def test_data_dir_follows_hosting_when_not_set(tmp_path, monkeypatch):
    monkeypatch.delenv("RETRIEVAL_DATA_DIR", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.delenv("SYSTEM", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert settings.data_dir() == tmp_path / ".local" / "share" / "retrieval-studio"


def test_hosting_is_a_frozen_value():
    h = Hosting(Path("/d"), "note")
    with pytest.raises(AttributeError):
        h.space_id = "x"  # type: ignore[misc]
    assert h == Hosting(Path("/d"), "note")
