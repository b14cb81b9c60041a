"""The ``hub`` family: KerasHub presets built through the real specs, from tiny local presets.

Each family (DINOv2, CLIP, SigLIP) is built here from a small random
configuration, saved as a KerasHub preset directory (backbone, image
converter, tokenizer), and loaded by the same code that loads a downloaded
preset. No network and no mocks; the real presets are tried only with
``RETRIEVAL_ONLINE_TESTS=1``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tiny_presets import SIZE, make_presets

from retrieval.backbones import REGISTRY, SINGLE, BackboneUnavailable, fusion, hub
from retrieval.backbones.hub_presets import PRESETS, is_text_capable

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "assets" / "demo"


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    """``RETRIEVAL_PRESETS`` pointing at tiny random presets of the three families (``tiny_presets``)."""
    root = make_presets(tmp_path_factory.mktemp("hub") / "presets")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(hub.PRESETS_ENV, str(root))
        mp.delenv("HF_HUB_OFFLINE", raising=False)
        yield root


@pytest.fixture(scope="module")
def images():
    from PIL import Image

    paths = [DEMO / "cat" / "chelsea.jpg", DEMO / "coffee" / "coffee.jpg", DEMO / "rocket" / "rocket.jpg"]
    return np.stack([np.asarray(Image.open(p).convert("RGB").resize((SIZE, SIZE))) for p in paths])


def _build(name: str):
    return REGISTRY[name].build("none", 0.0, None)


# -- the table ---------------------------------------------------------------------
def test_specs_describe_the_real_presets():
    hub_specs = {n: s for n, s in REGISTRY.items() if s.family == "hub"}
    assert set(hub_specs) == set(PRESETS) == {
        "dinov2-small-cls", "dinov2-small-patchmean", "dinov2-base-cls", "dinov2-base-patchmean",
        "clip-vit-b32", "clip-vit-b16", "siglip-b16-224"}
    dims = {n: s.dim for n, s in hub_specs.items()}
    assert dims["dinov2-small-cls"] == 384 and dims["dinov2-base-patchmean"] == 768
    assert dims["clip-vit-b32"] == dims["clip-vit-b16"] == 512 and dims["siglip-b16-224"] == 768
    assert all(s.input_size == SIZE for s in hub_specs.values())
    assert hub_specs["clip-vit-b32"].source.startswith("KerasHub preset clip_vit_base_patch32 (≈ 605 MB")
    assert "MIT" in hub_specs["clip-vit-b16"].licence and "Apache-2.0" in hub_specs["siglip-b16-224"].licence
    assert [n for n in PRESETS if is_text_capable(n)] == ["clip-vit-b32", "clip-vit-b16", "siglip-b16-224"]
    assert not is_text_capable("efficientnet-lite0") and hub.is_text_capable("siglip-b16-224")


def test_hub_models_are_not_fusion_parts():
    with pytest.raises(BackboneUnavailable):
        fusion.parse("fusion:lite0+dinov2-small-cls", SINGLE)


def test_readiness_without_and_with_a_local_preset(tmp_path, monkeypatch, presets):
    monkeypatch.setenv(hub.PRESETS_ENV, str(tmp_path / "none"))
    monkeypatch.setenv("RETRIEVAL_DATA_DIR", str(tmp_path / "data"))
    assert REGISTRY["dinov2-small-cls"].readiness() == "downloads on first use (≈ 90 MB)"
    assert hub.downloadable("dinov2-small-cls")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not hub.downloadable("dinov2-small-cls")
    # The data folder's presets/ is looked in too, after $RETRIEVAL_PRESETS.
    shutil.copytree(presets / "dinov2_small", tmp_path / "data" / "presets" / "dinov2_small")
    assert REGISTRY["dinov2-small-patchmean"].readiness() is None
    assert REGISTRY["dinov2-small-patchmean"].ready() == (True, "ready offline")
    assert not hub.downloadable("dinov2-small-cls")
    assert hub.local_preset("dinov2_small") == tmp_path / "data" / "presets" / "dinov2_small"


def test_importing_the_engine_loads_no_keras_hub():
    """The listing and readiness need the table only: KerasHub (and Keras) load when a hub model is built."""
    code = ("import sys, retrieval, retrieval.backbones.hub as h; h.SPECS[0].readiness(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('keras', 'keras_hub', 'tensorflow')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_preset_of_another_width_is_refused(tmp_path, monkeypatch):
    """The store sizes vectors by the spec, so a preset giving other widths must not load under its name."""
    import keras_hub

    net = keras_hub.models.DINOV2Backbone(patch_size=14, num_layers=1, hidden_dim=32, num_heads=2,
                                          intermediate_dim=32, image_shape=(28, 28, 3),
                                          position_embedding_shape=(28, 28, 3))
    net.save_to_preset(str(tmp_path / "dinov2_base"))
    keras_hub.layers.DINOV2ImageConverter(image_size=(28, 28), scale=1 / 255).save_to_preset(
        str(tmp_path / "dinov2_base"))
    monkeypatch.setenv(hub.PRESETS_ENV, str(tmp_path))
    with pytest.raises(BackboneUnavailable, match=r"^dinov2-base-cls: .* gives 32-d vectors, not 768"):
        _build("dinov2-base-cls")


# -- building offline --------------------------------------------------------------
@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:9", "https://192.0.2.1"],
                         ids=["refused", "black-holed"])
def test_offline_build_fails_fast_in_one_line(tmp_path, monkeypatch, endpoint):
    """No preset and no hub: one line naming the preset and the folder, in seconds (a hang guard)."""
    monkeypatch.setenv(hub.PRESETS_ENV, str(tmp_path / "none"))
    monkeypatch.setenv("RETRIEVAL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("HF_ENDPOINT", endpoint)  # the real reachability check, against a dead address
    for proxy in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("RETRIEVAL_OFFLINE", raising=False)
    start = time.monotonic()
    with pytest.raises(BackboneUnavailable) as err:
        _build("dinov2-small-cls")
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert "\n" not in message and "dinov2_small" in message and "90 MB" in message
    assert str(tmp_path / "data" / "presets" / "dinov2_small") in message and hub.PRESETS_ENV in message
    assert not (tmp_path / "data" / "presets" / "dinov2_small").exists()


def test_forced_offline_never_touches_the_network(tmp_path, monkeypatch):
    monkeypatch.setenv(hub.PRESETS_ENV, str(tmp_path / "none"))
    monkeypatch.setenv("RETRIEVAL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RETRIEVAL_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(BackboneUnavailable, match="siglip_base_patch16_224 is not on this machine"):
        _build("siglip-b16-224")
    assert time.monotonic() - start < 2


# -- the families, from tiny presets ------------------------------------------------
def test_dinov2_cls_and_patch_mean(presets, images):
    import keras_hub

    folder = presets / "dinov2_small"
    cls, mean = _build("dinov2-small-cls"), _build("dinov2-small-patchmean")
    assert (cls.dim, mean.dim, cls.input_size) == (384, 384, SIZE)
    assert cls.loaded_from == str(folder) and cls.runtime == "Keras f32" and cls.pooling == "none"

    # The preset's converter runs first, and the backbone at our size (position embeddings interpolated).
    converter = keras_hub.layers.ImageConverter.from_preset(str(folder), image_size=(SIZE, SIZE))
    net = keras_hub.models.Backbone.from_preset(str(folder), image_shape=(SIZE, SIZE, 3))
    sequence = np.asarray(net.predict_on_batch({"images": np.asarray(converter(images))}))
    a, b = cls.embed(images), mean.embed(images)
    assert a.shape == b.shape == (3, 384) and a.dtype == np.float32
    np.testing.assert_allclose(a, sequence[:, 0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(b, sequence[:, 1:].mean(axis=1), rtol=1e-4, atol=1e-5)
    assert not np.allclose(a, b)
    assert not np.allclose(np.linalg.norm(b, axis=1), 1.0)  # L2 is the engine's job

    tokens = mean.patch_tokens(images)
    assert tokens.shape == (3, SIZE // 14, SIZE // 14, 384)
    np.testing.assert_array_equal(b, tokens.reshape(3, -1, 384).mean(axis=1))
    assert mean.embed(images[:0]).shape == (0, 384) and mean.patch_tokens(images[:0]).shape == (0, 16, 16, 384)

    assert mean.explain_refusal is None
    assert "patches" in cls.explain_refusal and "patchmean" in cls.explain_refusal
    assert "\n" not in cls.explain_refusal
    assert not hasattr(cls, "text_embed") and not hasattr(mean, "text_embed")
    assert not hasattr(cls, "patch_tokens")


@pytest.mark.parametrize("name,preset,dim", [("clip-vit-b32", "clip_vit_base_patch32", 512),
                                             ("siglip-b16-224", "siglip_base_patch16_224", 768)])
def test_image_text_backbones(presets, images, name, preset, dim):
    import keras_hub

    folder = presets / preset
    model = _build(name)
    assert model.dim == dim and model.loaded_from == str(folder)
    converter = keras_hub.layers.ImageConverter.from_preset(str(folder))
    net = keras_hub.models.Backbone.from_preset(str(folder))
    expected = np.asarray(net.get_vision_embeddings(converter(images)))
    vectors = model.embed(images)
    assert vectors.shape == (3, dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, expected, rtol=1e-4, atol=1e-5)

    words = model.text_embed(["a photo of a cat", "A dog!", "a photo of a cat"])
    assert words.shape == (3, dim) and words.dtype == np.float32 and np.isfinite(words).all()
    np.testing.assert_allclose(words[0], words[2], rtol=1e-5, atol=1e-6)
    assert not np.allclose(words[0], words[1])
    np.testing.assert_allclose(model.text_embed(["A dog!"])[0], words[1], rtol=1e-4, atol=1e-5)  # batch-independent
    assert model.text_embed([]).shape == (0, dim)

    assert "cannot be split over patches" in model.explain_refusal and "\n" not in model.explain_refusal
    assert not hasattr(model, "patch_tokens")


# -- through the engine -------------------------------------------------------------
def test_a_studio_indexes_and_searches_with_a_hub_model(presets, tmp_path):
    from retrieval import Studio
    from retrieval.config import ExtractorConfig, SearchConfig

    gallery = tmp_path / "gallery"
    for group in ("cat", "coffee", "rocket"):
        shutil.copytree(DEMO / group, gallery / group)
    cfg = ExtractorConfig("dinov2-small-patchmean")
    studio = Studio(tmp_path / "hub.sqlite", device="cpu")
    try:
        report = studio.index(gallery, collection="hub", cfg=cfg)
        assert len(report.added) == 12 and report.computed == 12 and report.runtime == "Keras f32"
        first = studio._models.backbone(cfg)
        assert studio._models.backbone(cfg) is first  # the loaded network is reused, not built again
        # no re-ranking or centring: a random network's self-match is then exactly 1, whatever its weights
        plain = SearchConfig(rerank="none", whiten="none")
        result = studio.search(gallery / "cat" / "chelsea.jpg", collection="hub", cfg=cfg, scfg=plain)
        assert result.hits[0].name == "cat/chelsea.jpg" and result.runtime == "Keras f32"
        assert result.hits[0].score == pytest.approx(1.0, abs=1e-5)
        listing = {m["name"]: m for m in studio.models()}
        assert listing["dinov2-small-patchmean"]["ready"] and listing["dinov2-small-patchmean"]["family"] == "hub"
    finally:
        studio.close()


# -- the real presets (downloads ~700 MB) ---------------------------------------------
@pytest.mark.skipif(os.environ.get("RETRIEVAL_ONLINE_TESTS") != "1",
                    reason="downloads real KerasHub presets from huggingface.co; set RETRIEVAL_ONLINE_TESTS=1")
def test_real_presets_download_and_rank_a_cat(tmp_path_factory, monkeypatch, images):
    data = Path(os.environ.get("RETRIEVAL_ONLINE_DATA") or tmp_path_factory.mktemp("online"))
    monkeypatch.setenv("RETRIEVAL_DATA_DIR", str(data))
    monkeypatch.delenv(hub.PRESETS_ENV, raising=False)
    dino = _build("dinov2-small-cls")
    assert dino.embed(images[:2]).shape == (2, 384)
    clip = _build("clip-vit-b32")
    assert clip.loaded_from == str(data / "presets" / "clip_vit_base_patch32")
    pictures = clip.embed(images)  # chelsea (a cat), coffee, rocket
    words = clip.text_embed(["a photo of a cat"])
    pictures /= np.linalg.norm(pictures, axis=1, keepdims=True)
    words /= np.linalg.norm(words, axis=1, keepdims=True)
    assert int(np.argmax(pictures @ words[0])) == 0


def test_a_download_in_progress_never_holds_up_other_searches(tmp_path, monkeypatch):
    """A preset downloading (minutes on a Space) must not hold the lock every other model's search takes.

    A local endpoint accepts the download's first request and answers only when
    told; meanwhile another thread loads a different backbone of the same
    Studio. Then the endpoint says 404 and the build fails in one line.
    """
    import http.server
    import threading

    from retrieval import Studio
    from retrieval.config import ExtractorConfig

    asked, answer = threading.Event(), threading.Event()

    class Stalling(http.server.BaseHTTPRequestHandler):
        def _stall(self):
            asked.set()
            answer.wait(60)
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD = _stall

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stalling)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("RETRIEVAL_DATA_DIR", str(tmp_path / "data"))
    for name in ("HF_HUB_OFFLINE", "RETRIEVAL_OFFLINE", hub.PRESETS_ENV):
        monkeypatch.delenv(name, raising=False)
    # huggingface_hub reads HF_HUB_OFFLINE once, at its import: another test module of this session may have
    # imported it while the variable was set, so its flag follows the environment set here
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    studio = Studio(tmp_path / "lock.sqlite", device="cpu")
    failure: list[BaseException] = []

    def download():
        try:
            studio._models.backbone(ExtractorConfig("dinov2-small-cls"))
        except BaseException as exc:  # noqa: BLE001 - what the build said is asserted below
            failure.append(exc)

    downloading = threading.Thread(target=download)
    try:
        downloading.start()
        assert asked.wait(30), "the download never reached the endpoint"
        other = threading.Thread(target=lambda: studio._models.backbone(ExtractorConfig("colorhist")))
        other.start()
        other.join(20)
        assert not other.is_alive(), "another backbone waited for the download: the lock is held through it"
    finally:
        answer.set()
        downloading.join(60)
        server.shutdown()
        studio.close()
    assert len(failure) == 1 and isinstance(failure[0], BackboneUnavailable)
    message = str(failure[0])
    assert "downloading hf://keras/dinov2_small" in message and "\n" not in message
    assert not (tmp_path / "data" / "presets" / "dinov2_small").exists()  # nothing half-installed
