"""The similarity heatmaps: exact decomposition, checked against the engine's own scores."""

import numpy as np
import pytest

from retrieval.config import ExtractorConfig, SearchConfig
from retrieval.decode import decode
from retrieval.explain import contributions, overlay, position_shares
from retrieval.pooling import l2_normalize, pool
from retrieval.whitening import fit_centering, fit_whitening


@pytest.mark.parametrize("kind, p", [("gap", 1.0), ("mac", 0.0), ("gem", 3.0), ("gem", 8.0)])
def test_shares_rebuild_the_pooled_vector(kind, p):
    fmap = np.random.default_rng(0).uniform(0, 6, (7, 7, 16)).astype(np.float32)
    shares = position_shares(fmap, kind, p)
    assert np.allclose(shares.sum(axis=0), 1.0)
    v = pool(fmap[None], kind, p)[0]
    assert np.allclose((shares * v).sum(axis=0), v, rtol=1e-5)


@pytest.mark.parametrize("kind, p", [("gap", 1.0), ("mac", 0.0), ("gem", 3.0)])
@pytest.mark.parametrize("post", ["none", "center", "pca"])
def test_contributions_sum_to_the_engines_score(kind, p, post):
    rng = np.random.default_rng(1)
    maps = np.maximum(rng.normal(1, 1.5, (40, 5, 5, 32)), 0).astype(np.float32)
    vectors = l2_normalize(pool(maps, kind, p))
    whitening = {"none": None, "center": fit_centering(vectors), "pca": fit_whitening(vectors)}[post]
    e = contributions(maps[0], maps[1], kind, p, whitening)
    space = whitening.apply(vectors[:2]) if whitening is not None else vectors[:2]
    engine_score = float(space[0] @ space[1])
    assert e.score == pytest.approx(engine_score, abs=1e-5)
    assert e.query_map.sum() == pytest.approx(e.score, abs=1e-6)
    assert e.result_map.sum() == pytest.approx(e.score, abs=1e-6)


@pytest.mark.parametrize("post", ["none", "center", "pca"])
def test_signed_token_maps_split_exactly_under_mean_pooling(post):
    """A ViT's patch tokens are signed; their plain mean (DINOv2 patch-mean) still splits exactly."""
    rng = np.random.default_rng(2)
    tokens = rng.normal(0, 1, (40, 4, 4, 24)).astype(np.float32)
    vectors = l2_normalize(tokens.reshape(40, -1, 24).mean(axis=1))
    whitening = {"none": None, "center": fit_centering(vectors), "pca": fit_whitening(vectors)}[post]
    e = contributions(tokens[0], tokens[1], "mean", 0.0, whitening)
    space = whitening.apply(vectors[:2]) if whitening is not None else vectors[:2]
    assert e.score == pytest.approx(float(space[0] @ space[1]), abs=1e-5)
    assert e.query_map.shape == (4, 4)
    assert e.query_map.sum() == pytest.approx(e.score, abs=1e-6)
    assert e.result_map.sum() == pytest.approx(e.score, abs=1e-6)
    assert (e.query_map < 0).any() and (e.query_map > 0).any()  # signed tokens push as well as pull
    gap = contributions(tokens[0], tokens[1], "gap", 1.0, whitening)  # a signed map pooled by GAP: the same split
    np.testing.assert_allclose(gap.query_map, e.query_map, atol=1e-9)


def test_real_photos_match_the_search_score(studio, indexed, photo_folder):
    """On real photos through the Studio: the maps sum to the score search reports without re-ranking.

    Explanations are computed by the Keras definition (f32), so they sum exactly to a Keras search's score
    (the gallery's vectors are the same within bf16 rounding), and to the default runtime's within that rounding.
    """
    scfg = SearchConfig(rerank="none", k=2)
    query = photo_folder / "cats" / "chelsea.jpg"
    hit = studio.search(query, "photos", ExtractorConfig(), scfg).hits[1]
    e, q_img, r_img = studio.explain(query, hit.name, "photos", ExtractorConfig(), scfg)
    if studio.backbone(ExtractorConfig()).runtime == "Keras f32":
        exact = hit
    else:  # the gallery's stored vectors came from the runtime: score both images through Keras
        from retrieval.pooling import l2_normalize

        pixels = np.stack([decode(query, 240).pixels, decode(photo_folder / hit.name, 240).pixels])
        keras = l2_normalize(studio.backbone(ExtractorConfig(), runtime="keras").embed(pixels))
        whitening = studio.ranker("photos", ExtractorConfig(), scfg)[0].whitening
        space = whitening.apply(keras)
        assert e.score == pytest.approx(float(space[0] @ space[1]), abs=1e-4)
        exact = None
    if exact is not None:
        assert e.score == pytest.approx(exact.score, abs=1e-4)
    assert e.score == pytest.approx(hit.score, abs=5e-3)
    assert e.query_map.sum() == pytest.approx(e.score, abs=1e-4)
    assert q_img.ndim == 3 and r_img.ndim == 3 and max(q_img.shape[:2]) <= 384


def test_overlay_colours_by_sign():
    image = np.full((20, 20, 3), 128, np.uint8)
    heat = np.array([[1.0, -1.0]])
    out = overlay(image, heat).astype(int)
    assert out[10, 0, 0] > out[10, 0, 2]  # warm where positive
    assert out[10, 19, 2] > out[10, 19, 0]  # blue where negative
