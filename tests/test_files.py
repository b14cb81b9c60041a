import os

from retrieval.files import label_for, read_labels_csv, scan_folder
from retrieval.settings import Limits


def test_labels_from_first_level_folders(tmp_path):
    for rel in ["cats/a.jpg", "cats/sub/b.jpg", "dogs/c.jpg", "top.jpg", ".hidden.jpg", ".git/x.jpg"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    found, skipped = scan_folder(tmp_path)
    assert [(f.name, f.label) for f in found] == [
        ("top.jpg", None), ("cats/a.jpg", "cats"), ("cats/sub/b.jpg", "cats"), ("dogs/c.jpg", "dogs")]
    assert skipped == []


def test_symlink_out_of_the_folder_is_skipped(tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    root = tmp_path / "upload"
    root.mkdir()
    (root / "inside.jpg").write_bytes(b"x")
    os.symlink(outside, root / "link.jpg")
    os.symlink(root / "inside.jpg", root / "alias.jpg")
    found, skipped = scan_folder(root)
    assert sorted(f.name for f in found) == ["alias.jpg", "inside.jpg"]
    assert [(s.name, s.reason) for s in skipped] == [("link.jpg", "symbolic link points outside the folder")]


def test_file_caps(tmp_path):
    (tmp_path / "big.jpg").write_bytes(b"x" * 2000)
    for i in range(3):
        (tmp_path / f"s{i}.jpg").write_bytes(b"x")
    found, skipped = scan_folder(tmp_path, Limits(max_file_bytes=1000, max_files=2))
    assert [f.name for f in found] == ["s0.jpg", "s1.jpg"]
    assert {s.name for s in skipped} == {"big.jpg", "s2.jpg"}
    assert "file too large" in next(s.reason for s in skipped if s.name == "big.jpg")


def test_labels_csv_with_and_without_header(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("filename,label\na.jpg,cat\nsub\\b.jpg,dog\n\n")
    assert read_labels_csv(csv) == {"a.jpg": "cat", "sub/b.jpg": "dog"}
    assert label_for(__import__("pathlib").Path("x.jpg")) is None
