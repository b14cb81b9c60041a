"""The real-photo sets of ``benchmarks/realsets.py``: deterministic, and queries truly held out."""

from __future__ import annotations

import json

import pytest

from benchmarks import realsets


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory):
    """The first four classes of ``skimage-parts``, built twice into separate folders."""
    a, b = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
    return (realsets.build_set("skimage-parts", a, seed=3, max_classes=4),
            realsets.build_set("skimage-parts", b, seed=3, max_classes=4), a / "skimage-parts")


def test_the_build_is_deterministic(two_builds):
    first, second, _ = two_builds
    assert [f["sha256"] for f in first["files"]] == [f["sha256"] for f in second["files"]]
    assert [f["path"] for f in first["files"]] == [f["path"] for f in second["files"]]


def test_queries_never_repeat_a_gallery_file_or_crop(two_builds):
    files = two_builds[0]["files"]
    gallery = [f for f in files if f["role"] == "gallery"]
    queries = [f for f in files if f["role"] == "queries"]
    assert {f["sha256"] for f in queries}.isdisjoint(f["sha256"] for f in gallery)
    crops = {(f["photo"], tuple(f["box"])) for f in gallery}
    assert not [f for f in queries if (f["photo"], tuple(f["box"])) in crops]


def test_every_class_has_queries_and_gallery_on_disk(two_builds):
    manifest, _, set_dir = two_builds
    per_class = manifest["summary"]["per_class"]
    assert len(per_class) == 4
    for label, counts in per_class.items():
        assert counts["queries"] >= 1 and counts["gallery"] >= 1
        total = counts["queries"] + counts["gallery"]
        assert realsets.FILES_PER_CLASS[0] <= total <= realsets.FILES_PER_CLASS[1]
        assert len(list((set_dir / "queries" / label).iterdir())) == counts["queries"]
        assert len(list((set_dir / "gallery" / label).iterdir())) == counts["gallery"]
    g, gl, q, ql = realsets.load(set_dir)
    assert all(p.is_file() for p in g + q) and set(gl) == set(ql) == set(per_class)


def test_a_second_build_reuses_the_files(two_builds):
    _, _, set_dir = two_builds
    stamp = (set_dir / realsets.MANIFEST).stat().st_mtime_ns
    again = realsets.build_set("skimage-parts", set_dir.parent, seed=3, max_classes=4)
    assert (set_dir / realsets.MANIFEST).stat().st_mtime_ns == stamp
    assert again == json.loads((set_dir / realsets.MANIFEST).read_text())
