"""End to end through the service layer: real photos, real model, real SQLite."""

import numpy as np
import pytest
from PIL import Image

from retrieval import ExtractorConfig, SearchConfig, ServiceError
from retrieval.files import SourceFile


def test_index_reports_added_and_skipped(indexed):
    assert len(indexed.added) == 9
    assert [(s.name, s.reason) for s in indexed.skipped] == [
        ("space/notes.jpg", "not an image Pillow can read (unrecognised format)")]
    assert indexed.computed == 9 and indexed.reused == 0
    assert "CPU" in indexed.device


def test_query_returns_itself_first_and_its_near_duplicate_second(studio, indexed, photo_folder):
    result = studio.search(photo_folder / "cats" / "chelsea.jpg", "photos", scfg=SearchConfig(k=3, rerank="none"))
    names = [h.name for h in result.hits]
    assert names[0] == "cats/chelsea.jpg" and result.hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert names[1] == "cats/chelsea_flipped.jpg"
    assert [h.rank for h in result.hits] == [1, 2, 3]
    assert set(result.timings) == {"decode_ms", "embed_ms", "search_ms", "rerank_ms", "total_ms"}


def test_query_by_pixels_matches_query_by_file(studio, indexed, photo_folder):
    pil = Image.open(photo_folder / "coffee" / "coffee.jpg")
    by_array = studio.search(np.asarray(pil), "photos")
    assert by_array.hits[0].name == "coffee/coffee.jpg"


def test_reindex_computes_nothing(studio, indexed, photo_folder):
    again = studio.index(photo_folder, collection="photos")
    assert again.computed == 0 and again.reused == 9 and again.unchanged == 9 and not again.added


def test_duplicate_content_is_stored_once(studio, indexed, photo_folder, tmp_path):
    copy = tmp_path / "copy_of_chelsea.jpg"
    copy.write_bytes((photo_folder / "cats" / "chelsea.jpg").read_bytes())
    report = studio.add_files([SourceFile(copy, "copy_of_chelsea.jpg", None)], "photos")
    assert report.duplicates == [("copy_of_chelsea.jpg", "cats/chelsea.jpg")]
    assert not report.added and report.computed == 0


def test_evaluate_gives_real_figures(studio, indexed):
    report = studio.evaluate("photos")
    assert report.queries == 9
    assert 0.5 < report.map <= 1.0  # near-duplicate groups are easy for a real CNN
    assert set(report.per_class_ap) == {"cats", "coffee", "space"}
    assert report.config["key"] == studio.resolve(ExtractorConfig()).key


@pytest.mark.parametrize("metric", ["cosine", "euclidean", "mahalanobis", "manhattan"])
@pytest.mark.parametrize("rerank, whiten", [("none", "none"), ("qe", "center"), ("dba", "pca")])
def test_every_metric_and_rerank_finds_the_query(studio, indexed, photo_folder, metric, rerank, whiten):
    result = studio.search(photo_folder / "space" / "rocket.jpg", "photos",
                           scfg=SearchConfig(metric=metric, k=3, rerank=rerank, whiten=whiten))
    assert result.hits[0].name == "space/rocket.jpg"


def test_switching_pooling_computes_once_then_reuses(studio, indexed):
    gap = ExtractorConfig(pooling="gap")
    assert studio.ensure_embeddings("photos", gap) == 9
    assert studio.ensure_embeddings("photos", gap) == 0
    assert studio.evaluate("photos", gap).queries == 9


def test_compare_two_configurations(studio, indexed, photo_folder):
    cmp = studio.compare(photo_folder / "coffee" / "coffee.jpg", "photos",
                         (ExtractorConfig(), SearchConfig(k=5)),
                         (ExtractorConfig(backbone="colorhist"), SearchConfig(metric="euclidean", k=5)))
    assert cmp.a.hits[0].name == "coffee/coffee.jpg" == cmp.b.hits[0].name
    assert 0.0 < cmp.agreement.overlap_at_k <= 1.0
    assert -1.0 <= cmp.agreement.spearman_rho <= 1.0


def test_handcrafted_baseline_is_a_backbone(studio, indexed):
    report = studio.evaluate("photos", ExtractorConfig(backbone="colorhist"))
    assert report.queries == 9 and report.config["extractor"]["backbone"] == "colorhist"
    assert 0.0 < report.map < studio.evaluate("photos").map  # the CNN wins even on nine photos


def test_bad_requests_say_why(studio, indexed, tmp_path):
    with pytest.raises(ServiceError, match="no collection named 'nope'"):
        studio.search(tmp_path / "x.jpg", "nope")
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    with pytest.raises(ServiceError, match="cannot use the query image"):
        studio.search(tmp_path / "bad.jpg", "photos")


def test_remove_then_drop(studio, photo_folder):
    studio.index(photo_folder / "space", collection="scratch")
    assert studio.remove(str(photo_folder / "space" / "rocket.jpg"), "scratch") == ["rocket.jpg"]
    assert [h.name for h in studio.search(photo_folder / "space" / "rocket.jpg", "scratch").hits] == ["astronaut.jpg", "camera.png"]
    assert studio.drop_collection("scratch")
    assert "scratch" not in [c.name for c in studio.collections()]
