"""Words as queries (the text towers of CLIP and SigLIP), and the KerasHub models in explain and adapt.

Built on tiny random presets (``tiny_presets``) loaded through the real
loading path: the rankings are checked against the stored vectors, not
against what a trained CLIP would find (that needs the real presets and a
network: ``RETRIEVAL_ONLINE_TESTS=1`` in test_hub.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_presets import make_presets

from retrieval import ExtractorConfig, SearchConfig, ServiceError, Studio, TextQuery
from retrieval.backbones import hub, text_models
from retrieval.pooling import l2_normalize

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "assets" / "demo"
CLIP = ExtractorConfig("clip-vit-b32")
SIGLIP = ExtractorConfig("siglip-b16-224")
PATCHMEAN = ExtractorConfig("dinov2-small-patchmean")
PLAIN = SearchConfig(rerank="none", whiten="none", k=28)


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    root = make_presets(tmp_path_factory.mktemp("text") / "presets")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(hub.PRESETS_ENV, str(root))
        yield root


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    """28 labelled demo photos in five folders (two of eight, so a head has rows to train and validate on)."""
    folder = tmp_path_factory.mktemp("text") / "gallery"
    for group in ("cat", "coffee", "rocket", "fashion-bag", "fashion-sandal"):
        shutil.copytree(DEMO / group, folder / group)
    return folder


@pytest.fixture(scope="module")
def studio(presets, gallery, tmp_path_factory):
    s = Studio(tmp_path_factory.mktemp("text") / "text.sqlite", device="cpu")
    for cfg in (CLIP, SIGLIP):
        s.index(gallery, collection="g", cfg=cfg)
    yield s
    s.close()


def _stored(studio, cfg):
    """(member names, L2-normalised stored vectors) of the collection for ``cfg``."""
    _, g = studio._searcher.gallery(studio._galleries.ref("g"), studio.resolve(cfg))
    return [m.name for m in g.members], g.vectors


def test_the_text_models_are_clip_and_siglip():
    assert set(text_models()) == {"clip-vit-b32", "clip-vit-b16", "siglip-b16-224"}


@pytest.mark.parametrize("cfg", [CLIP, SIGLIP], ids=["clip", "siglip"])
def test_words_rank_the_gallery_by_the_text_towers_vector(studio, cfg):
    result = studio.search(TextQuery("a photo of a cat"), "g", cfg, PLAIN)
    names, vectors = _stored(studio, cfg)
    words = l2_normalize(studio._models.backbone(cfg).text_embed(["a photo of a cat"]))[0]
    scores = vectors @ words
    expected = [names[i] for i in np.lexsort((np.arange(len(names)), -scores))]
    assert [h.name for h in result.hits] == expected
    np.testing.assert_allclose([h.score for h in result.hits], np.sort(scores)[::-1], atol=1e-5)
    assert result.text == {"query": "a photo of a cat", "mode": "model", "model": cfg.backbone, "terms": [],
                           "weight": None, "matched": None}
    assert "decode_ms" not in result.timings and result.timings["embed_ms"] > 0
    other = studio.search(TextQuery("coffee in a white cup"), "g", cfg, PLAIN)
    assert [h.score for h in other.hits] != [h.score for h in result.hits]  # the words matter


def test_words_are_never_centred_on_the_images_mean(studio):
    """Centring and PCA are learned on image vectors: a words query ranks without them, and says so."""
    centred = studio.search(TextQuery("a red car"), "g", CLIP, SearchConfig(rerank="none", whiten="pca", k=28))
    plain = studio.search(TextQuery("a red car"), "g", CLIP, PLAIN)
    assert centred.search["whiten"] == "none"
    assert [h.name for h in centred.hits] == [h.name for h in plain.hits]
    with pytest.raises(ServiceError, match="learned on the images"):
        studio.search(TextQuery("a red car"), "g", CLIP, SearchConfig(metric="mahalanobis"))


def test_reranking_still_applies_to_words(studio):
    dba = studio.search(TextQuery("a photo of a dog"), "g", CLIP, SearchConfig(rerank="dba", whiten="none", k=28))
    plain = studio.search(TextQuery("a photo of a dog"), "g", CLIP, PLAIN)
    assert dba.search["rerank"] == "dba" and {h.name for h in dba.hits} == {h.name for h in plain.hits}
    assert [round(h.score, 6) for h in dba.hits] != [round(h.score, 6) for h in plain.hits]


def test_words_alone_pick_the_text_tower_or_the_captions(studio):
    by_model = studio.search_words("a cat", "g", CLIP, PLAIN)
    assert by_model.text["mode"] == "model"
    studio.set_metadata("g", "cat/chelsea.jpg", caption="a sleepy cat")
    by_words = studio.search_words("cat", "g", ExtractorConfig(), PLAIN)  # EfficientNet has no text tower
    assert by_words.text["mode"] == "text" and [h.name for h in by_words.hits] == ["cat/chelsea.jpg"]
    forced = studio.search_words("cat", "g", CLIP, PLAIN, target="metadata")
    assert forced.text["mode"] == "text"
    with pytest.raises(ServiceError) as refused:
        studio.search_words("cat", "g", ExtractorConfig(), PLAIN, target="model")
    message = str(refused.value)
    assert "has no text tower" in message and "clip-vit-b32" in message and "\n" not in message
    with pytest.raises(ServiceError, match="unknown text target"):
        studio.search_words("cat", "g", CLIP, PLAIN, target="pixels")
    with pytest.raises(ServiceError, match="the text is empty"):
        studio.search(TextQuery("   "), "g", CLIP, PLAIN)


def test_compare_sets_words_against_an_image(studio):
    query = DEMO / "cat" / "chelsea.jpg"
    a, b = (CLIP, PLAIN), (CLIP, SearchConfig(rerank="none", whiten="none", k=5))
    cmp = studio.compare(query, "g", a, b, b_query=TextQuery("a photo of a cat"))
    assert cmp.a.text is None and cmp.a.hits[0].name == "cat/chelsea.jpg"
    assert cmp.b.text["mode"] == "model"
    assert [h.name for h in cmp.b.hits] == [h.name for h in studio.search(TextQuery("a photo of a cat"), "g", *b).hits]
    same = studio.compare(query, "g", a, b)
    assert same.agreement.overlap_at_k == 1.0
    top_a, top_b = {h.name for h in cmp.a.hits[:5]}, {h.name for h in cmp.b.hits[:5]}
    assert cmp.agreement.overlap_at_k == pytest.approx(len(top_a & top_b) / 5)  # the words' list, not the image's


def test_explain_splits_patch_tokens_and_refuses_a_cls_token(studio, gallery):
    query, other = DEMO / "cat" / "chelsea.jpg", "cat/chelsea_crop.jpg"
    studio.index(gallery, collection="g", cfg=PATCHMEAN)
    explanation, q_img, r_img = studio.explain(query, other, "g", PATCHMEAN, SearchConfig(whiten="none", rerank="none"))
    assert explanation.query_map.shape == (16, 16) and explanation.pooling == "mean"
    assert explanation.query_map.sum() == pytest.approx(explanation.score, abs=1e-4)
    assert explanation.result_map.sum() == pytest.approx(explanation.score, abs=1e-4)
    hit = next(h for h in studio.search(query, "g", PATCHMEAN, PLAIN).hits if h.name == other)
    assert explanation.score == pytest.approx(hit.score, abs=1e-4)  # the search's own cosine
    assert q_img.ndim == 3 and r_img.ndim == 3
    for cfg in (CLIP, SIGLIP, ExtractorConfig("dinov2-small-cls")):
        with pytest.raises(ServiceError, match="cannot be split over patches"):
            studio.explain(query, other, "g", cfg, SearchConfig(whiten="none", rerank="none"))


def test_a_head_trains_on_a_hub_models_cached_vectors(studio):
    from retrieval.adapt import AdaptConfig

    report = studio.adapt("g", AdaptConfig(method="head", epochs=3, heads=1, dim=16),
                          base=CLIP, name="head-on-clip")
    assert report.base.startswith("clip-vit-b32|")
    result = studio.search(DEMO / "cat" / "chelsea.jpg", "g", ExtractorConfig("head-on-clip"), PLAIN)
    assert len(result.hits) == 28 and result.hits[0].name == "cat/chelsea.jpg"
    with pytest.raises(ServiceError, match="has no text tower"):  # a head maps images only
        studio.search(TextQuery("a cat"), "g", ExtractorConfig("head-on-clip"), PLAIN)
    with pytest.raises(ServiceError) as refused:
        studio.adapt("g", AdaptConfig(method="finetune", epochs=1), base=CLIP, name="ft-on-clip")
    assert "train a 'head' on its cached vectors" in str(refused.value)
    assert not any(m["name"] == "ft-on-clip" for m in studio.adapted_models())


def test_the_cli_searches_by_words(studio, presets, tmp_path):
    db = studio._searcher.store.path
    env = {**os.environ, hub.PRESETS_ENV: str(presets), "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "retrieval", "search", "--text", "a photo of a cat", "--model",
                          "clip-vit-b32", "--collection", "g", "--db", str(db), "-k", "3", "--rerank", "none",
                          "--whiten", "none", "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    expected = studio.search(TextQuery("a photo of a cat"), "g", CLIP, SearchConfig(rerank="none", whiten="none", k=3))
    assert out["text"]["mode"] == "model" and [r["name"] for r in out["results"]] == [h.name for h in expected.hits]
    plain = subprocess.run([sys.executable, "-m", "retrieval", "search", "--text", "a photo of a cat", "--model",
                            "clip-vit-b32", "--collection", "g", "--db", str(db), "-k", "3"],
                           capture_output=True, text=True, env=env, timeout=300)
    assert plain.returncode == 0, plain.stderr
    assert "embedded by the text tower of clip-vit-b32" in plain.stdout
    refused = subprocess.run([sys.executable, "-m", "retrieval", "search", "--text", "cat", "--text-target", "model",
                              "--collection", "g", "--db", str(db)], capture_output=True, text=True, env=env,
                             timeout=300)
    assert refused.returncode != 0 and "has no text tower" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
