"""The re-rankers through the studio, on real photos embedded by the default model."""

from pathlib import Path

import numpy as np
import pytest

from retrieval import SearchConfig

DEMO = Path(__file__).resolve().parents[1] / "assets" / "demo"


@pytest.fixture(scope="module")
def demo(studio):
    studio.index(DEMO, collection="rerank-demo")
    return "rerank-demo"


def test_graph_re_rankers_beat_the_plain_order_on_the_demo_gallery_honestly(studio, demo):
    """70 labelled photos, 12 classes, leave-one-out with each query absent from the graphs."""
    maps = {r: studio.evaluate(demo, scfg=SearchConfig(rerank=r)).map for r in ("none", "diffusion", "kreciprocal")}
    assert maps["diffusion"] > maps["none"] + 0.01
    assert maps["kreciprocal"] > maps["none"] + 0.01


def test_search_reports_the_re_rank_cost_and_builds_the_graph_once(studio, demo):
    query = DEMO / "cat" / "chelsea.jpg"
    first = studio.search(query, demo, scfg=SearchConfig(rerank="diffusion", metric="euclidean", whiten="none", k=5))
    again = studio.search(query, demo, scfg=SearchConfig(rerank="diffusion", metric="cosine", whiten="none", k=5))
    assert "graph_build_ms" in first.timings and "graph_build_ms" not in again.timings  # shared across metrics
    assert 0 < again.timings["rerank_ms"] <= again.timings["search_ms"]
    assert [h.name for h in first.hits] == [h.name for h in again.hits]
    assert first.hits[0].score == pytest.approx(1.0) and first.hits[0].label == "cat"
    assert np.all(np.diff([h.score for h in again.hits]) <= 1e-6)


def test_dropping_a_collection_drops_its_graphs(studio, demo):
    before = set(studio.caches.graphs._items)
    studio.fork(demo, "rerank-scratch")
    studio.search(DEMO / "cat" / "chelsea.jpg", "rerank-scratch", scfg=SearchConfig(rerank="kreciprocal"))
    added = set(studio.caches.graphs._items) - before
    assert len(added) == 1
    assert studio.drop_collection("rerank-scratch")
    assert not added & set(studio.caches.graphs._items)
