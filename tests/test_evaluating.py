"""Held-out evaluation: queries that are never gallery members, on the real demo photos and model.

The demo's 70 labelled photos are split by file: even-numbered files of
each class form the gallery, odd-numbered ones the queries. Other query
folders are built from copies of those bytes, so they cost no model time.
"""

import hashlib
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval import ExtractorConfig, SearchConfig, ServiceError, Studio
from retrieval.cli import main as cli
from retrieval.evaluation import query_gallery
from retrieval.files import SourceFile, scan_folder

DEMO = Path(__file__).resolve().parents[1] / "assets" / "demo"
GALLERY = "heldout-gallery"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def split(tmp_path_factory, studio):
    root = tmp_path_factory.mktemp("split")
    for folder in sorted(f for f in DEMO.iterdir() if f.is_dir()):  # metadata.csv sits beside them
        for i, file in enumerate(sorted(folder.iterdir())):
            target = root / ("queries" if i % 2 else "gallery") / folder.name / file.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(file, target)
    report = studio.index(root / "gallery", GALLERY)
    assert len(report.added) == 35 and not report.skipped
    return root


@pytest.fixture(scope="module")
def honest(studio, split):
    """The first held-out run: it embeds the 35 queries."""
    return studio.evaluate(GALLERY, queries=split / "queries")


def _copy(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, target)
    return target


def _direct(studio, queries: list[tuple[np.ndarray, str]], scfg=SearchConfig()):
    """What the figures must be: ``query_gallery`` on the same vectors against the same ranker."""
    _, _, gallery = studio.gallery(GALLERY, ExtractorConfig())
    ranker, _ = studio.ranker(GALLERY, ExtractorConfig(), scfg)
    vectors = np.stack([v for v, _ in queries])
    return query_gallery([label for _, label in queries], gallery.labels, lambda rows: ranker.keys(vectors[rows]))


def _stored(studio, files: list[Path]) -> list[np.ndarray]:
    config_id = studio.store.find_config(studio.resolve(ExtractorConfig()))
    found = studio.store.vectors_by_content(config_id, [_sha(f) for f in files])
    return [found[_sha(f)] for f in files]


def _same(report, expected) -> None:
    assert report.queries == expected.queries
    assert report.map == pytest.approx(expected.map, abs=1e-9)
    assert report.p_at == pytest.approx(expected.p_at, abs=1e-9)
    assert report.r_at == pytest.approx(expected.r_at, abs=1e-9)
    assert report.ndcg_at_10 == pytest.approx(expected.ndcg_at_10, abs=1e-9)
    assert report.per_class_ap == pytest.approx(expected.per_class_ap, abs=1e-9)


def test_held_out_from_a_folder_equals_query_gallery_on_the_same_vectors(studio, split, honest):
    held = honest.config["queries"]
    assert honest.config["protocol"] == "held-out" and held["kind"] == "folder"
    assert held["offered"] == held["scored"] == honest.queries == 35 and held["notes"] == []
    assert held["computed"] == 35 and held["reused"] == 0
    sources, _ = scan_folder(split / "queries")
    files = [s.path for s in sources]
    vectors = _stored(studio, files)
    _same(honest, _direct(studio, list(zip(vectors, [s.label for s in sources]))))
    # The stored vectors are the model's own for those files, not something else that happens to score alike.
    one, _, _ = studio.embed_query(files[0], ExtractorConfig())
    assert float(one @ vectors[0]) > 0.999
    assert 0.5 < honest.map <= 1.0


def test_leave_one_out_stays_for_a_single_gallery(studio, split, honest):
    report = studio.evaluate(GALLERY)
    assert report.config["protocol"] == "leave-one-out" and "queries" not in report.config
    assert report.queries == 35


def test_a_second_run_does_no_model_work(studio, split, honest):
    again = studio.evaluate(GALLERY, queries=split / "queries")
    assert again.config["queries"]["computed"] == 0 and again.config["queries"]["reused"] == 35
    _same(again, honest)
    fresh = Studio(studio.store.path, device="cpu")  # another process's view: the vectors are in the database
    try:
        report = fresh.evaluate(GALLERY, queries=str(split / "queries"))
        assert report.config["queries"]["computed"] == 0
        assert fresh._models._loaded == {}  # the network was never even loaded
        _same(report, honest)
    finally:
        fresh.close()
    assert GALLERY in [c.name for c in studio.collections()]
    assert not [c for c in studio.collections() if "queries" in c.name]  # no gallery was made of the queries


def test_a_query_that_is_a_gallery_member_is_left_out_and_would_have_flattered(studio, split, honest, tmp_path):
    leaky = tmp_path / "leaky"
    shutil.copytree(split / "queries", leaky)
    # Members of classes the honest queries answer perfectly: a leaked one can only add an easy AP of 1.
    classes = [label for label, ap in honest.per_class_ap.items() if ap == 1.0][:3]
    members = [sorted((split / "gallery" / label).iterdir())[0] for label in classes]
    for file in members:  # the same bytes under another name: content decides, not the name
        _copy(file, leaky / file.parent.name / f"again-{file.name}")
    report = studio.evaluate(GALLERY, queries=leaky)
    held = report.config["queries"]
    assert sorted(held["in_gallery"]) == sorted(f"{f.parent.name}/again-{f.name}" for f in members)
    assert "3 query images are also in the gallery and were left out" in held["notes"]
    assert held["computed"] == 0 and held["offered"] == 38
    _same(report, honest)  # exactly the honest figures
    # Not a vacuous check: asked, each leaked image finds itself first, and the mean would have risen.
    sources, _ = scan_folder(split / "queries")
    asked = list(zip(_stored(studio, [s.path for s in sources]), [s.label for s in sources]))
    leaked = list(zip(_stored(studio, members), classes))
    flattered = _direct(studio, asked + leaked)
    assert flattered.queries == 38 and flattered.map > honest.map
    _, _, gallery = studio.gallery(GALLERY, ExtractorConfig())
    ranker, _ = studio.ranker(GALLERY, ExtractorConfig(), SearchConfig())
    top = np.argmax(ranker.keys(np.stack([v for v, _ in leaked])), axis=1)
    assert [gallery.members[row].sha256 for row in top] == [_sha(f) for f in members]


def test_unlabelled_unknown_duplicate_and_corrupt_queries_are_reported(studio, split, honest, tmp_path):
    odd = tmp_path / "odd"
    cats = sorted((split / "queries" / "cat").iterdir())
    coffee = sorted((split / "queries" / "coffee").iterdir())
    _copy(cats[0], odd / "cat" / cats[0].name)
    _copy(cats[1], odd / "cat" / cats[1].name)
    _copy(cats[0], odd / "cat" / "twice.jpg")  # the same content again
    _copy(coffee[0], odd / "coffee" / coffee[0].name)
    _copy(coffee[1], odd / "unsorted.jpg")  # no subfolder, no label
    _copy(coffee[1], odd / "zebra" / "zebra.jpg")  # a label the gallery lacks
    (odd / "cat" / "broken.jpg").write_text("this is text, not a JPEG")
    (odd / "cat" / "truncated.jpg").write_bytes(cats[1].read_bytes()[:500])
    report = studio.evaluate(GALLERY, queries=odd)
    held = report.config["queries"]
    assert report.queries == held["scored"] == 3 and held["offered"] == 8
    assert held["unlabelled"] == ["unsorted.jpg"] and held["unknown_label"] == ["zebra/zebra.jpg"]
    assert held["duplicates"] == [{"name": "cat/twice.jpg", "duplicate_of": f"cat/{cats[0].name}"}]
    assert sorted(s["name"] for s in held["unreadable"]) == ["cat/broken.jpg", "cat/truncated.jpg"]
    assert held["notes"] == [
        "1 query image has no label (not in a subfolder) and was skipped",
        "1 query image has a label the gallery lacks (zebra) and was skipped",
        "1 query image repeats another one's content and was asked once",
        "2 query files could not be read and were skipped",
    ]
    assert held["computed"] == 0  # every readable one was a copy of a query seen before
    expected = _direct(studio, list(zip(_stored(studio, [cats[0], cats[1], coffee[0]]), ["cat", "cat", "coffee"])))
    _same(report, expected)


def test_nothing_to_score_says_why(studio, split, tmp_path):
    only = tmp_path / "only"
    _copy(sorted((split / "gallery" / "cat").iterdir())[0], only / "cat" / "member.jpg")
    (only / "cat" / "broken.jpg").write_text("not an image")
    with pytest.raises(ServiceError, match="none of the 2 held-out query images can be scored: "
                                           "1 query image is also in the gallery"):
        studio.evaluate(GALLERY, queries=only)
    with pytest.raises(ServiceError, match="no folder, zip or collection named"):
        studio.evaluate(GALLERY, queries=str(tmp_path / "missing"))
    with pytest.raises(ServiceError, match="the queries are the gallery"):
        studio.evaluate(GALLERY, queries=GALLERY)
    (tmp_path / "notes.txt").write_text("not a zip")
    with pytest.raises(ServiceError, match="must be a folder, a zip or a collection, not 'notes.txt'"):
        studio.evaluate(GALLERY, queries=tmp_path / "notes.txt")
    both = str(only)  # a collection named like a folder: refused, never guessed
    studio.add_files([SourceFile(only / "cat" / "member.jpg", "member.jpg", "cat")], both)
    with pytest.raises(ServiceError, match="is both a collection and a path"):
        studio.evaluate(GALLERY, queries=both)
    assert studio.drop_collection(both)


def test_held_out_from_a_collection(studio, split, honest):
    queries = "heldout-queries"
    sources, _ = scan_folder(split / "queries")
    studio.add_files([s for s in sources if s.label in ("cat", "coffee", "rocket", "texture")], queries)
    scfg = SearchConfig(rerank="none", whiten="none")
    report = studio.evaluate(GALLERY, scfg=scfg, queries=queries)
    held = report.config["queries"]
    assert held["kind"] == "collection" and held["source"] == queries and report.queries == 9
    _, _, asked = studio.gallery(queries, ExtractorConfig())
    _same(report, _direct(studio, list(zip(asked.vectors, asked.labels)), scfg))
    # A member of both collections is the gallery's, so it does not ask.
    studio.add_files([s for s in scan_folder(split / "gallery")[0] if s.label == "cat"][:2], queries)
    again = studio.evaluate(GALLERY, scfg=scfg, queries=queries)
    assert again.queries == 9 and len(again.config["queries"]["in_gallery"]) == 2


def test_held_out_from_a_zip_leaves_no_file_behind(studio, split, honest, tmp_path):
    archive = tmp_path / "queries.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in sorted((split / "queries" / "rocket").iterdir()):
            zf.write(file, f"rocket/{file.name}")
        zf.write(sorted((split / "gallery" / "rocket").iterdir())[0], "rocket/member.jpg")
        zf.writestr("rocket/corrupt.jpg", b"\xff\xd8\xff" + b"0" * 200)
        zf.writestr("../escape.jpg", b"x")
    before = sorted(studio.blob_root.rglob("*")) if studio.blob_root.exists() else []
    report = studio.evaluate(GALLERY, queries=archive)
    held = report.config["queries"]
    assert held["kind"] == "zip" and report.queries == 2 and held["in_gallery"] == ["queries.zip/rocket/member.jpg"]
    assert sorted(s["name"] for s in held["unreadable"]) == ["queries.zip/../escape.jpg", "queries.zip/rocket/corrupt.jpg"]
    assert held["computed"] == 0
    after = sorted(studio.blob_root.rglob("*")) if studio.blob_root.exists() else []
    assert [p for p in after if p.is_file()] == [p for p in before if p.is_file()]


def test_query_vectors_go_with_a_deleted_model(tmp_path):
    """A trained model's configuration is deleted with its vectors: held-out ones must not block that."""
    from retrieval.store import Store

    with Store(tmp_path / "s.sqlite") as store:
        cfg = ExtractorConfig(backbone="some-trained-head")
        config_id = store.config_id(cfg, 4)
        store.save_query_vectors(config_id, {"ab" * 32: np.ones(4, np.float32) / 2})
        assert list(store.vectors_by_content(config_id, ["ab" * 32])) == ["ab" * 32]
        store.delete_adapted("some-trained-head", cfg.key)
        assert store.db["query_vectors"].count == 0 and store.find_config(cfg) is None


def test_cli_states_the_protocol_and_the_counts(studio, split, honest, tmp_path, capsys):
    leaky = tmp_path / "leaky"
    _copy(sorted((split / "queries" / "cat").iterdir())[0], leaky / "cat" / "query.jpg")
    _copy(sorted((split / "gallery" / "cat").iterdir())[0], leaky / "cat" / "member.jpg")
    (leaky / "cat" / "broken.jpg").write_text("not an image")
    db = str(studio.store.path)
    assert cli(["evaluate", "--db", db, "--collection", GALLERY, "--queries", str(leaky)]) == 0
    out = capsys.readouterr().out
    assert f"held-out: 1 of 3 query images from {leaky}, none of them a gallery member" in out
    assert "1 query image is also in the gallery and was left out" in out
    assert "skipped: cat/broken.jpg: not an image" in out
    assert "mAP " in out
    assert cli(["evaluate", "--db", db, "--collection", GALLERY]) == 0
    assert f"leave-one-out: every labelled image of {GALLERY} asks the others" in capsys.readouterr().out
    assert cli(["evaluate", "--db", db, "--collection", GALLERY, "--queries", str(split / "queries"), "--json"]) == 0
    import json

    out = json.loads(capsys.readouterr().out)
    assert out["config"]["protocol"] == "held-out" and out["queries"] == 35
    assert out["map"] == pytest.approx(honest.map, abs=1e-9)
    assert cli(["evaluate", "--db", db, "--collection", GALLERY, "--queries", str(tmp_path / "nope")]) == 2
    assert "error: no folder, zip or collection named" in capsys.readouterr().err


def test_app_evaluates_held_out_queries_from_a_zip(app_url, tmp_path):
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gradio_client import Client, handle_file
    from skimage import data

    archive = tmp_path / "queries.zip"
    chelsea = tmp_path / "chelsea.png"
    Image.fromarray(data.chelsea()[40:260, 60:380]).save(chelsea)
    coffee = tmp_path / "coffee.png"
    Image.fromarray(data.coffee()[::-1].copy()).save(coffee)
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(chelsea, "cat/chelsea.png")
        zf.write(coffee, "coffee/coffee.png")
        zf.write(DEMO / "rocket" / "rocket.jpg", "rocket/rocket.jpg")  # a member of the demo gallery
        zf.write(coffee, "coffee.png")  # no label
        zf.writestr("cat/corrupt.jpg", b"not an image")
    client = Client(app_url, verbose=False)
    table, curve, classes, files, note = client.predict(["efficientnet-lite1"], queries_zip=handle_file(str(archive)),
                                                        api_name="/evaluate")
    row = dict(zip(table["headers"], table["data"][0]))
    assert row["protocol"] == "held-out: queries.zip" and row["queries"] == 2 and 0 < row["mAP"] <= 1
    assert "2 held-out queries" in note and "1 query image is also in the gallery and was left out" in note
    assert "1 query image has no label" in note and "`queries.zip/cat/corrupt.jpg`" in note
    table, *_ = client.predict(["efficientnet-lite1"], api_name="/evaluate")
    assert dict(zip(table["headers"], table["data"][0]))["protocol"] == "leave-one-out"
    with pytest.raises(Exception, match="no gallery named"):
        client.predict(["efficientnet-lite1"], queries="session-0123456789abcdef", api_name="/evaluate")
