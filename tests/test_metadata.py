"""Search by text metadata (captions and tags): parsing, FTS5 escaping, BM25, filter and fuse,
zip sidecars, edits, fork/remove/drop consistency, the metadata evaluation row, and the CLI.

Real SQLite files, the demo's real images and the numpy ``pixels`` backbone (no CNN needed).
"""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval import ExtractorConfig, SearchConfig, ServiceError, Studio
from retrieval.cli import main
from retrieval.metadata import (
    SIDECAR,
    MetadataError,
    fuse,
    fused_order,
    match_expression,
    normalise_image,
    normalise_text,
    parse_csv,
    parse_tags,
    query_terms,
)

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "assets" / "demo"
PX = ExtractorConfig(backbone="pixels")
PLAIN = SearchConfig(k=100, metric="cosine", rerank="none", whiten="none", index="exact")
HOSTILE = ['"cat" OR (', "NEAR(a b", "caption:cat", "*", "AND", '"', "a*b^c", "-cat", "NOT OR AND", "'; DROP TABLE x;--",
           "\x00cat", "(((", "😀 cat", "ﬁsh café", "x" * 5000, "cat\ndog", "{caption tags}: cat"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo indexed with the numpy backbone: its metadata.csv is read on the way."""
    studio = Studio(tmp_path_factory.mktemp("meta") / "m.sqlite", device="cpu", workers=1)
    report = studio.index(DEMO, "demo", PX)
    yield studio, report
    studio.close()


def small_studio(tmp_path: Path) -> Studio:
    studio = Studio(tmp_path / "s.sqlite", device="cpu", workers=1)
    studio.index(DEMO / "cat", "g", PX, metadata_csv=_csv(tmp_path, ""))  # an empty CSV body: header only
    return studio


def _csv(tmp_path: Path, body: str, name: str = "m.csv") -> Path:
    path = tmp_path / name
    path.write_text("name,caption,tags\n" + body, encoding="utf-8")
    return path


# -- pure functions ------------------------------------------------------------------------------------------------
def test_parse_csv_header_optional_columns_any_order_and_tag_separators():
    parsed = parse_csv(b"a.jpg,A cat,cat; pet\nb.jpg,dog,\"dog, animal\"\nc.jpg,,\"x;y,z\"\n")
    assert [(e.key, e.caption, e.tags) for e in parsed.entries] == [
        ("a.jpg", "A cat", ("cat", "pet")), ("b.jpg", "dog", ("dog", "animal")), ("c.jpg", "", ("x", "y,z"))]
    parsed = parse_csv("\ufeffTags,Name,Caption\n\"red;  red ; blue\",sub\\d.png,\"  two\n  lines\t\"\n".encode())
    assert [(e.key, e.caption, e.tags) for e in parsed.entries] == [("sub/d.png", "two lines", ("red", "blue"))]


def test_parse_csv_bad_rows_are_counted_never_fatal():
    long = "x" * 3000
    parsed = parse_csv(f"name,caption,tags\na.jpg,ok,\n,no name,\nb.jpg,{long},\nc.jpg,x,{';'.join(['t'] * 1)}\n"
                       "d.jpg,\"unterminated".encode())
    assert [e.key for e in parsed.entries] == ["a.jpg", "c.jpg", "d.jpg"]
    assert [line for line, _ in parsed.bad] == [3, 4]
    parsed = parse_csv(b"a.jpg,cap,t1,t2,t3\nb.jpg,fine,t\n")  # unquoted commas: that row, not the file
    assert [e.key for e in parsed.entries] == ["b.jpg"] and "quote" in parsed.bad[0][1]


@pytest.mark.parametrize("data, words", [
    (b"", "no rows"),
    (b"name,title\nx,y\n", "expected name,caption,tags"),
    ("name,caption,tags\na.jpg,caf\u00e9,\n".encode("latin-1"), "not UTF-8"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00", "not a text file"),
    (b"a,b,c,d,e\nf,g,h,i,j\n", "no usable row"),
])
def test_parse_csv_unreadable_files_raise_one_line(data, words):
    with pytest.raises(MetadataError) as info:
        parse_csv(data, "x.csv")
    assert words in str(info.value) and "\n" not in str(info.value)


def test_parse_csv_refuses_a_huge_file_in_one_line():
    with pytest.raises(MetadataError, match="over 16 MB"):
        parse_csv(b"a.jpg,x,y\n" * (2 * 1024 * 1024))


def test_parse_tags():
    assert parse_tags("a; b ;a;; ") == ("a", "b")
    assert parse_tags("a, b") == ("a", "b")
    assert parse_tags(["x;y", " z "]) == ("x y", "z")
    assert parse_tags(None) == () and parse_tags("") == ()


@pytest.mark.parametrize("text", HOSTILE)
def test_match_expression_quotes_every_word(text):
    expr = match_expression(query_terms(text))
    if expr is not None:
        assert all(part.startswith('"') and part.endswith('"') for part in expr.split(" OR "))


def test_query_terms_drop_common_words_unless_nothing_else_is_left():
    assert query_terms("A photo of THE cat, the cat!") == ["photo", "cat"]
    assert query_terms("the of") == ["the", "of"]
    assert query_terms("Café_au-lait") == ["café", "au", "lait"]


def test_normalisation_and_fusion():
    keys = np.array([0.2, 0.8, 0.5, -np.inf])
    np.testing.assert_allclose(normalise_image(keys), [0.0, 1.0, 0.5, 0.0])
    np.testing.assert_allclose(normalise_image(np.array([3.0, 3.0])), [1.0, 1.0])
    np.testing.assert_allclose(normalise_text(np.array([0.0, 2.0, 4.0])), [0.0, 0.5, 1.0])
    assert normalise_text(np.zeros(3)).tolist() == [0, 0, 0]
    image, text = np.array([0.9, 0.1, 0.5]), np.array([0.0, 3.0, 1.0])
    assert fused_order(image, text, 0.0).tolist() == [0, 2, 1]
    assert fused_order(image, text, 1.0).tolist() == [1, 2, 0]
    np.testing.assert_allclose(fuse(image, text, 0.5), [0.5, 0.5, 0.25 + 1 / 6])
    assert fused_order(image, text, 0.5).tolist() == [0, 1, 2]  # a tie goes to the better image
    with pytest.raises(ValueError):
        fuse(image, text, 1.5)


# -- the demo, end to end -----------------------------------------------------------------------------------------
def test_demo_index_reads_its_metadata_csv_and_never_takes_it_for_an_image(demo):
    studio, report = demo
    assert len(report.added) == 70 and not report.skipped
    assert [(m.source.endswith(SIDECAR), m.rows, m.applied, m.unknown, m.bad) for m in report.metadata] == [
        (True, 70, 70, [], [])]
    described = studio.metadata("demo")
    assert 50 < len(described) < 70  # some images deliberately have no caption or tags
    chelsea = studio.metadata("demo", "cat/chelsea.jpg")
    assert chelsea.tags == ("cat", "tabby", "pet") and "tabby" in chelsea.caption
    assert studio.metadata("demo", "space/hubble.jpg").tags[0] == "space"  # named by its bare file name
    assert studio.metadata("demo", "texture/grass_crop.jpg") is None
    assert sum("chelsea" in m.name for m in described.values()) == 4


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_text_never_raises(demo, text):
    studio, _ = demo
    result = studio.search_text(text, "demo", 5) if query_terms(text) else None
    if result is not None:
        assert len(result.hits) <= 5
    else:
        with pytest.raises(ServiceError, match="no words"):
            studio.search_text(text, "demo", 5)


def test_text_search_ranks_by_bm25(demo):
    studio, _ = demo
    result = studio.search_text('"cat" OR (', "demo", 10)
    names = [h.name for h in result.hits]
    assert set(names) == {"cat/chelsea.jpg", "cat/chelsea_crop.jpg"}  # "or" is a common word, dropped
    assert [h.rank for h in result.hits] == [1, 2] and result.hits[0].score >= result.hits[1].score > 0
    assert result.text["terms"] == ["cat"] and result.text["matched"] == 2
    both = studio.search_text("sandal summer", "demo", 20)
    scores = [h.score for h in both.hits]
    assert scores == sorted(scores, reverse=True)
    first = studio.metadata("demo", both.hits[0].name)
    assert {"sandal", "summer"} <= set(first.tags)  # both words beat one
    assert studio.search_text("cats", "demo").hits[0].label == "cat"  # porter: a plural finds the singular
    assert studio.search_text("zeppelin", "demo").hits == []


def test_filter_keeps_only_text_matches_ranked_by_image(demo):
    studio, _ = demo
    query = DEMO / "fashion-sandal" / "fmnist-test-0008.png"
    result = studio.search_combined(query, "summer", "demo", PX, PLAIN, text_mode="filter")
    matched = {h.sha256 for h in studio.search_text("summer", "demo", 100).hits}
    assert {h.sha256 for h in result.hits} == matched and result.text["matched"] == len(matched)
    plain = [h.sha256 for h in studio.search(query, "demo", PX, PLAIN).hits if h.sha256 in matched]
    assert [h.sha256 for h in result.hits] == plain  # the image's own order among the matches
    assert result.hits[0].name == "fashion-sandal/fmnist-test-0008.png" and result.hits[0].score > 0.999


def test_fuse_moves_from_image_order_to_text_order(demo):
    studio, _ = demo
    query = DEMO / "cat" / "chelsea.jpg"
    image = [h.sha256 for h in studio.search(query, "demo", PX, PLAIN).hits]
    at0 = studio.search_combined(query, "espresso", "demo", PX, PLAIN, text_mode="fuse", text_weight=0.0)
    assert [h.sha256 for h in at0.hits] == image[:len(at0.hits)]
    at1 = studio.search_combined(query, "espresso", "demo", PX, PLAIN, text_mode="fuse", text_weight=1.0)
    assert at1.hits[0].label == "coffee" and at1.hits[0].score == pytest.approx(1.0)
    scores = [h.score for h in at1.hits]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    with pytest.raises(ValueError):
        studio.search_combined(query, "espresso", "demo", PX, PLAIN, text_mode="both")


def test_metadata_row_on_the_demo(demo):
    studio, _ = demo
    report = studio.evaluate_metadata("demo")
    text_only = report.config["metadata"]
    assert report.config["protocol"] == "leave-one-out" and report.config["key"] == "metadata"
    assert report.queries == text_only["described"] and len(text_only["no_text"]) == 70 - report.queries
    assert 0.2 < report.map < 0.6, report.map  # words help, but are "not always accurate"
    image = studio.evaluate("demo", PX, PLAIN)
    assert set(report.to_json()) == set(image.to_json())  # the same report, comparable row by row
    assert image.queries == 70


def test_metadata_row_with_held_out_queries(demo, tmp_path):
    studio, _ = demo
    folder = tmp_path / "queries"
    for label, name in (("cat", "chelsea.jpg"), ("coffee", "coffee.jpg")):
        (folder / label).mkdir(parents=True)
        pixels = np.asarray(Image.open(DEMO / label / name))[10:-10, 10:-10]  # new content: no member's
        Image.fromarray(pixels).save(folder / label / name)
    with pytest.raises(ServiceError, match="unavailable"):
        studio.evaluate_metadata("demo", queries=folder)
    (folder / SIDECAR).write_text("name,caption,tags\nchelsea.jpg,a tabby cat,cat\n", encoding="utf-8")
    report = studio.evaluate_metadata("demo", queries=folder)
    assert report.queries == 1 and report.config["queries"]["no_text"] == ["coffee/coffee.jpg"]
    assert 0.4 < report.map < 1.0  # two of the four cat photos say "cat"; "kitten" and "pet" do not


# -- storage consistency -------------------------------------------------------------------------------------------
def counts(studio: Studio) -> dict:
    c = studio.store.metadata_counts()
    assert c["rows"] == c["indexed"] == c["members"] and c["unindexed"] == c["stray"] == 0, c
    return c


def test_set_metadata_keeps_clears_and_refuses(tmp_path):
    studio = small_studio(tmp_path)
    assert studio.metadata("g") == {}
    got = studio.set_metadata("g", "chelsea.jpg", caption="A  cat\non a sofa", tags="cat; sofa")
    assert (got.caption, got.tags) == ("A cat on a sofa", ("cat", "sofa"))
    got = studio.set_metadata("g", "chelsea.jpg", tags=["tabby"])  # the caption is kept
    assert (got.caption, got.tags) == ("A cat on a sofa", ("tabby",))
    assert studio.search_text("sofa", "g").hits[0].name == "chelsea.jpg"
    assert studio.search_text("cat", "g").hits[0].name == "chelsea.jpg"
    assert studio.set_metadata("g", got.sha256, caption="", tags="") is None  # by sha256; nothing left: no row
    assert studio.search_text("sofa", "g").hits == [] and counts(studio)["rows"] == 0
    with pytest.raises(ServiceError, match="no image"):
        studio.set_metadata("g", "nope.jpg", caption="x")
    with pytest.raises(ServiceError, match="longer than"):
        studio.set_metadata("g", "chelsea.jpg", caption="x" * 5000)
    with pytest.raises(ServiceError, match="no collection"):
        studio.set_metadata("gone", "chelsea.jpg", caption="x")


def test_fork_copies_and_remove_and_drop_delete_metadata(tmp_path):
    studio = small_studio(tmp_path)
    studio.import_metadata(_csv(tmp_path, "chelsea.jpg,tabby cat,cat\nchelsea_crop.jpg,cat face,cat\n"), "g")
    assert counts(studio)["rows"] == 2
    studio.fork("g", "session-1")
    assert {m.caption for m in studio.metadata("session-1").values()} == {"tabby cat", "cat face"}
    assert counts(studio)["rows"] == 4
    studio.set_metadata("session-1", "chelsea.jpg", caption="edited in the fork")  # copy-on-write
    assert studio.metadata("g", "chelsea.jpg").caption == "tabby cat"
    assert studio.remove("chelsea_crop.jpg", "session-1") == ["chelsea_crop.jpg"]
    assert len(studio.metadata("session-1")) == 1 and len(studio.metadata("g")) == 2 and counts(studio)["rows"] == 3
    assert [h.name for h in studio.search_text("face", "g").hits] == ["chelsea_crop.jpg"]
    assert studio.search_text("face", "session-1").hits == []
    studio.drop_collection("session-1")
    assert counts(studio)["rows"] == 2
    tab = studio.session("tab", None, "g", writable=True)
    assert len(studio.metadata(tab.collection)) == 2
    assert studio.cleanup("session-", -60) == [tab.collection] and counts(studio)["rows"] == 2
    studio.drop_collection("g")
    assert counts(studio) == {"rows": 0, "indexed": 0, "members": 0, "unindexed": 0, "stray": 0}


def test_reopening_keeps_metadata_and_edited_file_drops_its_own(tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(DEMO / "coffee", folder)
    (folder / SIDECAR).write_text("name,caption,tags\ncoffee.jpg,espresso,coffee\ncoffee_crop.jpg,crema,coffee\n")
    studio = Studio(tmp_path / "r.sqlite", device="cpu", workers=1)
    report = studio.index(folder, "r", PX)
    assert report.metadata[0].applied == 2 and not report.skipped
    studio.close()
    studio = Studio(tmp_path / "r.sqlite", device="cpu", workers=1)
    assert len(studio.metadata("r")) == 2
    (folder / SIDECAR).unlink()
    Image.open(DEMO / "cat" / "chelsea.jpg").save(folder / "coffee.jpg")  # edited in place: another picture
    report = studio.index(folder, "r", PX)
    assert report.replaced == ["coffee.jpg"] and report.metadata == []
    assert [m.name for m in studio.metadata("r").values()] == ["coffee_crop.jpg"] and counts(studio)["rows"] == 1
    studio.close()


def test_zip_sidecar_is_applied_and_bad_rows_are_counted(tmp_path):
    studio = small_studio(tmp_path)
    archive = tmp_path / "up.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(DEMO / "coffee" / "coffee.jpg", "coffee/a.jpg")
        zf.write(DEMO / "rocket" / "rocket.jpg", "b.jpg")
        zf.write(DEMO / "cat" / "chelsea.jpg", "c.jpg")  # a duplicate of a member: still described
        zf.writestr(SIDECAR, "name,caption,tags\ncoffee/a.jpg,espresso cup,coffee\nb.jpg,rocket,\nc.jpg,my cat,cat\n"
                             "ghost.jpg,missing,\n,no name,\nb.jpg," + "x" * 3000 + ",\n")
    report = studio.upload([(archive, "up.zip", None)], "g", PX)
    assert not report.skipped, report.skipped  # metadata.csv is not an image
    [m] = report.metadata
    assert (m.source, m.applied, m.unknown, [line for line, _ in m.bad]) == ("up.zip/metadata.csv", 3, ["ghost.jpg"],
                                                                            [6, 7])
    assert any("ghost.jpg" in note for note in m.notes())
    assert studio.metadata("g", "up.zip/coffee/a.jpg").caption == "espresso cup"
    assert studio.metadata("g", "chelsea.jpg").caption == "my cat"
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(broken, "w") as zf:
        zf.write(DEMO / "space" / "hubble.jpg", "h.jpg")
        zf.writestr(SIDECAR, "name,caption,tags\nh.jpg,caf\u00e9,\n".encode("latin-1"))
    report = studio.upload([(broken, "broken.zip", None)], "g", PX)
    assert report.added == ["broken.zip/h.jpg"] and "not UTF-8" in report.metadata[0].error
    counts(studio)


def test_import_refuses_unreadable_csv_and_changes_nothing(tmp_path):
    studio = small_studio(tmp_path)
    studio.import_metadata(_csv(tmp_path, "chelsea.jpg,tabby,cat\n"), "g")
    bad = tmp_path / "bad.csv"
    bad.write_bytes("name,caption,tags\nchelsea.jpg,caf\u00e9,\n".encode("utf-16"))
    with pytest.raises(ServiceError) as info:
        studio.import_metadata(bad, "g")
    assert "\n" not in str(info.value)
    with pytest.raises(ServiceError, match="cannot read"):
        studio.import_metadata(tmp_path / "missing.csv", "g")
    assert studio.metadata("g", "chelsea.jpg").caption == "tabby"
    report = studio.import_metadata(_csv(tmp_path, "chelsea.jpg,again,\nnot-here.png,x,\n"), "g")
    assert (report.applied, report.unknown) == (1, ["not-here.png"])


# -- the command line ----------------------------------------------------------------------------------------------
def test_cli_metadata_search_and_evaluate(tmp_path, capsys):
    db = tmp_path / "cli.sqlite"
    folder = tmp_path / "photos"
    for label in ("cat", "coffee"):
        shutil.copytree(DEMO / label, folder / label)
    csv_path = _csv(tmp_path, "chelsea.jpg,tabby cat,cat; pet\ncoffee/coffee.jpg,espresso,coffee\n"
                              "coffee_crop.jpg,crema on espresso,coffee\n")
    assert main(["index", str(folder), "--db", str(db), "--model", "pixels", "--quiet", "--metadata", str(csv_path)]) == 0
    assert "captions and tags: 3 images" in capsys.readouterr().out
    assert main(["metadata", "set", "cat/chelsea_crop.jpg", "--caption", "cat face", "--tags", "cat;face",
                 "--db", str(db)]) == 0
    assert "cat face\tcat; face" in capsys.readouterr().out
    assert main(["metadata", "show", "--db", str(db), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 4
    assert main(["search", "--text", 'espresso OR "(', "--db", str(db), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in out["results"]][0] in ("coffee/coffee.jpg", "coffee/coffee_crop.jpg")
    assert out["text"]["terms"] == ["espresso"]
    assert main(["search", str(DEMO / "cat" / "chelsea.jpg"), "--text", "espresso", "--text-mode", "filter",
                 "--model", "pixels", "--db", str(db), "-k", "3"]) == 0
    assert "espresso (filter); 2 images match" in capsys.readouterr().out
    assert main(["evaluate", "--metadata", "--model", "pixels", "--db", str(db), "--json"]) == 0
    image_row, text_row = json.loads(capsys.readouterr().out)
    assert text_row["config"]["key"] == "metadata" and text_row["queries"] == 4 and image_row["queries"] == 8
    assert main(["metadata", "import", str(tmp_path / "nope.csv"), "--db", str(db)]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["search", "--db", str(db)]) == 2
    assert "--text" in capsys.readouterr().err


def test_fts_index_matches_its_table_after_a_mixed_run(demo, tmp_path):
    studio, _ = demo
    counts(studio)
    buf = io.StringIO()
    buf.write("name,caption,tags\n")
    for i in range(300):
        buf.write(f"img{i}.jpg,caption {i},t{i}\n")
    report = studio.import_metadata(_csv(tmp_path, buf.getvalue().split("\n", 1)[1]), "demo")
    assert report.applied == 0 and len(report.unknown) == 300
    counts(studio)
