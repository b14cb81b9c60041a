"""Adapting a model to a labelled gallery: real Fashion-MNIST images, a real store, the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from retrieval import Studio
from retrieval.adapt import AdaptConfig, Cancelled, apply_head, split_by_image, train_head
from retrieval.config import ExtractorConfig, SearchConfig
from retrieval.decode import to_pixels

ROOT = Path(__file__).resolve().parents[1]
CLASSES_USED = (0, 2, 4, 6)  # T-shirt, pullover, coat, shirt: the tops ImageNet features confuse most


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    """A Studio with 320 labelled Fashion-MNIST PNGs (80 per class, 4 look-alike classes)."""
    from benchmarks import fashion_mnist

    images, labels = fashion_mnist.load("t10k", 3000)
    keep = np.concatenate([np.flatnonzero(labels == c)[:80] for c in CLASSES_USED])
    root = tmp_path_factory.mktemp("fashion")
    fashion_mnist.write_folder(root / "images", images[keep], labels[keep])
    studio = Studio(root / "db.sqlite", device="cpu")
    studio.index(root / "images", "tops")
    yield studio, root
    studio.close()


def test_split_is_by_image_stratified_and_disjoint():
    labels = ["a"] * 10 + ["b"] * 4 + ["c"] * 2 + [None] * 3
    rest, held = split_by_image(labels, 0.3, seed=1)
    assert not set(rest) & set(held)
    assert set(rest) | set(held) == set(range(16))  # unlabelled rows are in neither
    held_labels = [labels[i] for i in held]
    assert held_labels.count("a") == 3 and held_labels.count("b") == 2 and held_labels.count("c") == 0


@pytest.fixture(scope="module")
def head(fashion):
    studio, _ = fashion
    epochs = []
    report = studio.adapt("tops", AdaptConfig(method="head", epochs=40),
                          on_epoch=lambda e, n, logs: epochs.append(logs))
    return report, epochs


def test_head_loss_falls_and_held_out_map_rises(head):
    report, epochs = head
    assert len(epochs) >= 3 and epochs[-1]["loss"] < epochs[0]["loss"]
    assert report.test_queries == 96 and report.train_images + report.validation_images == 224
    assert report.map_after > report.map_before + 0.05, (report.map_before, report.map_after)


def test_adapted_model_is_a_backbone_that_persists(head, fashion):
    report, _ = head
    studio, root = fashion
    cfg = ExtractorConfig(backbone=report.name)
    query = sorted((root / "images" / "Coat").iterdir())[0]
    first = studio.search(query, "tops", cfg, SearchConfig(k=5))
    assert first.hits[0].name.endswith(query.name) and first.config.startswith(report.name)
    assert report.name in [m["name"] for m in studio.models()]
    stored = studio.gallery("tops", cfg)[2].vectors.copy()
    # a fresh process-level Studio on the same file: same model, identical vectors
    again = Studio(studio.store.path, device="cpu")
    try:
        reloaded = again.gallery("tops", cfg)[2].vectors
        assert np.array_equal(stored, reloaded)
        backbone = again.backbone(cfg)
        pixels = np.stack([to_pixels(query, backbone.input_size)])
        assert np.allclose(backbone.embed(pixels)[0], again.embed_query(query, cfg)[0], atol=1e-6)
        assert again.search(query, "tops", cfg, SearchConfig(k=5)).hits == first.hits
    finally:
        again.close()


def test_head_weights_round_trip_exactly():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 16)).astype(np.float32)
    y = np.repeat(np.arange(3), 40)
    weights, log = train_head(x, y, 3, AdaptConfig(epochs=2, hidden=8, dim=4, heads=3))
    from retrieval.adapt import pack, unpack

    out = apply_head(weights, x)
    assert weights["w1"].shape == (3, 16, 8) and out.shape == (120, 12)
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(apply_head(unpack(pack(weights)), x), out)
    assert len(log.history) == 2


def test_head_schedule_sizes_steps_not_only_epochs():
    from retrieval.adapt import HEAD_MAX_STEPS, _head_schedule

    small = _head_schedule(AdaptConfig(epochs=30), 2700)  # 300 per class, a tenth validating
    assert small.batch_size == 67 and small.epochs == 30  # 41 updates an epoch, 1,230 in all
    large = _head_schedule(AdaptConfig(epochs=30), 54000)
    assert large.batch_size == 256 and large.epochs * -(-54000 // 256) <= HEAD_MAX_STEPS
    assert _head_schedule(AdaptConfig(epochs=30, batch_size=64), 2700).batch_size == 64  # an explicit size wins


def test_ensemble_training_is_deterministic_and_lifts_real_vectors(fashion):
    """Real lite1 vectors of the look-alike tops: same seed, same weights; held-out mAP above the frozen one."""
    from benchmarks.adapt import loo_map

    studio, _ = fashion
    gallery = studio.gallery("tops", ExtractorConfig())[2]
    labels = np.array(gallery.labels)
    y = np.searchsorted(np.unique(labels), labels)
    rest, held = split_by_image(list(labels), 0.3, seed=0)
    cfg = AdaptConfig(epochs=15, seed=3)
    first, _ = train_head(gallery.vectors[rest], y[rest], 4, cfg)
    second, _ = train_head(gallery.vectors[rest], y[rest], 4, cfg)
    assert all(np.array_equal(first[k], second[k]) for k in first)
    test = list(labels[held])
    before = loo_map(gallery.vectors[held], test)["map"]
    after = loo_map(apply_head(first, gallery.vectors[held]), test)["map"]
    assert after > before + 0.05, (before, after)


def test_single_head_models_of_the_first_release_still_load(fashion):
    """A stored head of 2-D arrays, with settings that predate ``heads``, serves the vectors it always gave."""
    from dataclasses import asdict

    from retrieval.adapt import pack

    studio, _ = fashion
    base = studio.resolve(ExtractorConfig())
    x = studio.gallery("tops", ExtractorConfig())[2].vectors
    rng = np.random.default_rng(0)
    old = {"mean": x.mean(0), "w1": rng.normal(size=(x.shape[1], 32)).astype(np.float32),
           "b1": np.zeros(32, np.float32), "w2": rng.normal(size=(32, 8)).astype(np.float32),
           "b2": np.zeros(8, np.float32)}
    settings = {k: v for k, v in AdaptConfig().to_json().items() if k != "heads"}
    studio._models.add_trained({
        "name": "old-head", "method": "head", "base": json.dumps(asdict(base)), "collection": "tops",
        "input_size": base.input_size, "dim": 8, "params": pack(old), "settings": json.dumps(settings),
        "figures": "{}"})
    z = np.maximum((x - old["mean"]) @ old["w1"] + old["b1"], 0) @ old["w2"] + old["b2"]
    expected = z / np.linalg.norm(z, axis=1, keepdims=True)  # the first release's formula
    again = Studio(studio.store.path, device="cpu")
    try:
        cfg = ExtractorConfig(backbone="old-head")
        assert again.backbone(cfg).dim == 8
        assert np.allclose(again.gallery("tops", cfg)[2].vectors, expected, atol=1e-6)
    finally:
        again.close()
    assert studio.delete_adapted("old-head")


def test_cancel_stops_training_and_saves_nothing(fashion):
    studio, _ = fashion
    before = [m["name"] for m in studio.adapted_models()]
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        studio.adapt("tops", AdaptConfig(method="head", epochs=40), cancel=cancel)
    assert [m["name"] for m in studio.adapted_models()] == before


@pytest.mark.parametrize("method", ["scratch", "finetune"])
def test_image_models_train_persist_and_delete(fashion, method):
    studio, root = fashion
    report = studio.adapt("tops", AdaptConfig(method=method, epochs=1, finetune_blocks=1))
    assert 0.0 < report.map_after <= 1.0 and report.training["history"]
    cfg = ExtractorConfig(backbone=report.name)
    vectors = studio.gallery("tops", cfg)[2].vectors
    assert vectors.shape[0] == 320
    query = sorted((root / "images" / "Shirt").iterdir())[0]
    again = Studio(studio.store.path, device="cpu")  # reloaded from the stored weights
    try:
        members = again.gallery("tops", cfg)[2].members
        row = next(i for i, m in enumerate(members) if m.name.endswith(query.name))
        assert np.allclose(again.embed_query(query, cfg)[0], vectors[row], atol=1e-5)
        # a trained image model runs through the same runtime layer as the built-in ones
        assert again.backbone(cfg).runtime.startswith("OpenVINO"), again.backbone(cfg).runtime_note
    finally:
        again.close()
    key = studio.resolve(cfg).key
    assert studio.delete_adapted(report.name)
    assert report.name not in [m["name"] for m in studio.models()]
    assert studio.store._read("SELECT count(*) FROM configs WHERE key = ?", [key])[0][0] == 0


def test_cli_adapt_json_contract(fashion):
    studio, _ = fashion
    proc = subprocess.run([sys.executable, "-m", "retrieval", "adapt", "--db", str(studio.store.path), "--collection",
                           "tops", "--method", "head", "--epochs", "5", "--json"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    for key in ("map_before", "map_after", "p_at_1_before", "p_at_1_after", "train_images", "test_queries", "seconds"):
        assert key in out
    assert out["test_queries"] == 96
