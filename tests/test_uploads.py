"""Uploads: every hostile archive trick is refused with a reason, nothing escapes."""

import functools
import io
import stat
import zipfile
from pathlib import Path

from retrieval.settings import Limits
from retrieval.uploads import blob_path, intake, store_blob


def _blobs(tmp_path: Path):
    """Where intake keeps files: content-named blobs under one folder."""
    return functools.partial(store_blob, tmp_path / "blobs")

def _jpeg(photo_folder, name="cats/chelsea.jpg") -> bytes:
    return (photo_folder / name).read_bytes()


def _zip(path: Path, entries: dict[str, bytes], symlinks: dict[str, str] = {}) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name, target in symlinks.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


def test_zip_labels_and_content_named_blobs(tmp_path, photo_folder):
    archive = _zip(tmp_path / "up.zip", {"cats/a.jpg": _jpeg(photo_folder), "coffee/b.jpg": _jpeg(photo_folder, "coffee/coffee.jpg"),
                                          "loose.jpg": _jpeg(photo_folder, "space/rocket.jpg")})
    out = intake([(archive, "up.zip", None)], _blobs(tmp_path))
    assert [(s.name, s.label) for s in out.sources] == [("up.zip/cats/a.jpg", "cats"), ("up.zip/coffee/b.jpg", "coffee"),
                                                         ("up.zip/loose.jpg", None)]
    for s in out.sources:
        assert s.path.parent.parent == tmp_path / "blobs" and len(s.path.stem) == 64


def test_hostile_zip_entries_are_refused(tmp_path, photo_folder):
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("x.jpg", _jpeg(photo_folder))
    archive = _zip(tmp_path / "evil.zip", {
        "../escape.jpg": _jpeg(photo_folder), "/etc/abs.jpg": _jpeg(photo_folder), "nested.zip": inner.getvalue(),
        "bomb.jpg": b"\0" * (50 * 1024 * 1024), "ok/fine.jpg": _jpeg(photo_folder)}, symlinks={"link.jpg": "/etc/passwd"})
    out = intake([(archive, "evil.zip", None)], _blobs(tmp_path))
    reasons = {s.name.split("/", 1)[1]: s.reason for s in out.skipped}
    assert "unsafe path" in reasons["../escape.jpg"] and "unsafe path" in reasons["/etc/abs.jpg"]
    assert "nested archive" in reasons["nested.zip"]
    assert "compression ratio" in reasons["bomb.jpg"]
    assert "symbolic link" in reasons["link.jpg"]
    assert [s.name for s in out.sources] == ["evil.zip/ok/fine.jpg"]
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert all(p == archive or (tmp_path / "blobs") in p.parents for p in written)
    assert not (tmp_path.parent / "escape.jpg").exists()


def test_caps_name_the_limit(tmp_path, photo_folder):
    files = []
    for i in range(3):
        f = tmp_path / f"{i}.jpg"
        f.write_bytes(_jpeg(photo_folder) + bytes([i]))
        files.append((f, f.name, None))
    out = intake(files, _blobs(tmp_path), Limits(max_files=2))
    assert len(out.sources) == 2 and out.limit_hit.startswith("file limit reached: at most 2 files")
    size = len(_jpeg(photo_folder))
    out = intake(files, _blobs(tmp_path), Limits(max_total_bytes=size + 10))
    assert len(out.sources) == 1 and "size limit reached" in out.limit_hit
    out = intake(files, _blobs(tmp_path), Limits(max_file_bytes=100))
    assert not out.sources and all("file too large" in s.reason for s in out.skipped)


def test_not_a_zip(tmp_path):
    fake = tmp_path / "fake.zip"
    fake.write_text("nope")
    out = intake([(fake, "fake.zip", None)], _blobs(tmp_path))
    assert "not a readable zip archive" in out.skipped[0].reason


def test_blob_names_ignore_hostile_file_names(tmp_path):
    path = blob_path(tmp_path, "ab" * 32, "../../etc/passwd; rm -rf $HOME")
    assert path.parent == tmp_path / "ab" and path.name == "ab" * 32 + ".bin"
    assert blob_path(tmp_path, "cd" * 32, "photo.JPG").name.endswith(".jpg")


def test_service_upload_skips_corrupt_and_cleans_its_blob(studio, photo_folder, tmp_path):
    archive = _zip(tmp_path / "mixed.zip", {"cats/good.jpg": _jpeg(photo_folder, "cats/cat_crop.png"),
                                             "cats/broken.jpg": _jpeg(photo_folder)[:500],
                                             "coffee/fine.jpg": _jpeg(photo_folder, "coffee/coffee_crop.jpg")})
    report = studio.upload([(archive, "mixed.zip", None)], "uploads-test")
    assert sorted(report.added) == ["mixed.zip/cats/good.jpg", "mixed.zip/coffee/fine.jpg"]
    assert [s.name for s in report.skipped] == ["mixed.zip/cats/broken.jpg"]
    blobs = sorted(p.stem for p in studio.blob_root.rglob("*") if p.is_file())
    assert len(blobs) == 2 and all(studio.store.image(b) is not None for b in blobs)  # the broken one is gone
    labels = sorted(m.label for m in studio.members("uploads-test"))
    assert labels == ["cats", "coffee"]
    studio.drop_collection("uploads-test")
    assert not [p for p in studio.blob_root.rglob("*") if p.is_file()]


def test_fork_and_cleanup_of_idle_collections(studio, indexed):
    studio.fork("photos", "session-abc")
    assert len(studio.members("session-abc")) == len(studio.members("photos"))
    studio.remove("cats/chelsea.jpg", "session-abc")
    assert len(studio.members("session-abc")) == len(studio.members("photos")) - 1
    assert studio.cleanup("session-", max_idle_s=3600) == []
    assert studio.cleanup("session-", max_idle_s=-1) == ["session-abc"]
    assert "photos" in [c.name for c in studio.collections()]
