"""Bring your own model: real tiny Keras, SavedModel and ONNX files registered as backbones.

The models are built here, saved to disk, and registered with a ``Studio``
of this module's own (never the session-wide one); the gallery is a few
folders of the demo set. The invariants checked: a file is copied by hash
into the data folder and nowhere else, vectors of one file are never served
for another under the same name, and every refusal is one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from retrieval.backbones import BackboneUnavailable
from retrieval.backbones.user_options import PREPROCESS, parse_preprocess
from retrieval.config import ExtractorConfig, SearchConfig
from retrieval.service import ServiceError

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "assets" / "demo"
FOLDERS = ("cat", "coffee", "rocket", "texture")
ERRORS = (BackboneUnavailable, ServiceError)


@pytest.fixture(scope="module")
def keras():
    from retrieval.device import import_keras

    k = import_keras()
    k.utils.set_random_seed(0)
    return k


def _cnn(keras, seed: int, size: int = 32):
    """Three convs ending in an 8×8×16 feature map (ReLU, so GeM is defined)."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inp)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="c2")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="c3")(x)
    return keras.Model(inp, x, name="tiny_cnn")


@pytest.fixture(scope="module")
def files(keras, tmp_path_factory) -> dict[str, Path]:
    """Every model file the tests register, saved to a folder of their own."""
    from tests.custom_layers import Scale

    d = tmp_path_factory.mktemp("user-files")
    out: dict[str, Path] = {}

    def save(name: str, model) -> None:
        out[name] = d / f"{name}.keras"
        model.save(out[name])

    cnn = _cnn(keras, 1)
    save("cnn", cnn)
    save("cnn2", _cnn(keras, 2))
    save("cnn3", _cnn(keras, 3))
    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inp)
    save("embedding", keras.Model(inp, keras.layers.Dense(12, name="embed")(keras.layers.GlobalAveragePooling2D()(x))))
    inp = keras.Input((32, 32, 3))
    fmap = keras.layers.Conv2D(8, 3, activation="relu", name="fmap")(inp)
    save("two", keras.Model(inp, [fmap, keras.layers.Dense(5, name="vec")(keras.layers.Flatten()(fmap))]))
    inp = keras.Input((16, 16, 3))
    save("identity", keras.Model(inp, keras.layers.Identity(name="same")(inp)))  # a feature map = its own input
    inp = keras.Input((16, 16, 3))
    save("lambda", keras.Model(inp, keras.layers.Lambda(lambda t: t * 2.0)(inp)))
    inp = keras.Input((16, 16, 3))
    save("custom", keras.Model(inp, keras.layers.GlobalAveragePooling2D()(Scale(3.0)(inp))))
    inp = keras.Input((32, 32, 3))
    save("rank3", keras.Model(inp, keras.layers.Reshape((32 * 32, 3))(inp)))
    inp = keras.Input((32, 32, 1))
    save("grey", keras.Model(inp, keras.layers.Conv2D(4, 3)(inp)))
    inp = keras.Input((10,))
    save("tabular", keras.Model(inp, keras.layers.Dense(4)(inp)))
    inp = keras.Input((None, None, 3))
    save("anysize", keras.Model(inp, keras.layers.Conv2D(6, 3, activation="relu")(inp)))
    out["garbage"] = d / "garbage.keras"
    out["garbage"].write_text("not a model at all")
    out["truncated"] = d / "truncated.keras"
    out["truncated"].write_bytes(out["cnn"].read_bytes()[:600])
    out["weights"] = d / "model.h5"
    out["weights"].write_bytes(b"\x89HDF\r\n")
    cnn.export(d / "cnn_savedmodel", verbose=False)
    out["savedmodel"] = d / "cnn_savedmodel"
    cnn.predict_on_batch(np.zeros((1, 32, 32, 3), np.float32))  # ONNX export needs a model that ran once
    out["onnx"] = d / "cnn.onnx"
    cnn.export(out["onnx"], format="onnx", verbose=False)
    return out


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo-part")
    for name in FOLDERS:
        shutil.copytree(DEMO / name, root / name)
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("byom-data")


@pytest.fixture(scope="module")
def studio(data):
    from retrieval import Studio

    s = Studio(data / "gallery.sqlite", device="cpu", runtime="keras")
    yield s
    s.close()


@pytest.fixture(scope="module")
def tiny(studio, files, gallery) -> dict:
    """The feature-map model, registered and indexed with GAP."""
    row = studio.add_model("tiny", files["cnn"], preprocess="unit")
    studio.index(gallery, collection="demo", cfg=ExtractorConfig("tiny", "gap"))
    return row


def _query() -> Path:
    return DEMO / "cat" / "chelsea.jpg"


def _one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert text and "\n" not in text, text
    return text


# -- registration, indexing and search ----------------------------------------------------
def test_a_feature_map_model_is_copied_by_hash_indexed_and_searched(studio, tiny, files, data):
    assert (tiny["output"], tiny["dim"], tiny["input_size"], tiny["output_shape"]) == ("feature map", 16, 32, [8, 8, 16])
    sha = hashlib.sha256(files["cnn"].read_bytes()).hexdigest()
    assert tiny["sha256"] == sha and tiny["path"] == f"gallery.models/{sha}.keras"
    assert (data / tiny["path"]).read_bytes() == files["cnn"].read_bytes()
    result = studio.search(_query(), collection="demo", cfg=ExtractorConfig("tiny", "gap"))
    assert result.hits and result.hits[0].name == "cat/chelsea.jpg"
    listed = {m["name"]: m for m in studio.models()}
    assert listed["tiny"]["family"] == "file" and listed["tiny"]["ready"]
    assert listed["tiny"]["status"] == "your model (feature map 8×8×16 → pooled, preprocess unit)"


def test_the_configuration_keeps_its_pooling_and_poolings_differ(studio, tiny):
    pixels = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    vectors = {}
    for pooling in ("gap", "mac", "gem"):
        cfg = studio.resolve(ExtractorConfig("tiny", pooling))
        assert cfg.pooling == pooling and cfg.input_size == 32 and cfg.weights.startswith("sha256:")
        assert cfg.key.split("|")[1] == cfg.weights  # the file's content, read from the row, not the file
        vectors[pooling] = studio.backbone(cfg).embed(pixels)
        assert vectors[pooling].shape == (3, 16)
    assert not np.allclose(vectors["gap"], vectors["mac"]) and not np.allclose(vectors["gap"], vectors["gem"])
    maps = studio.backbone(ExtractorConfig("tiny", "gap")).feature_maps(pixels)
    np.testing.assert_allclose(vectors["gap"], maps.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vectors["mac"], maps.max(axis=(1, 2)), rtol=1e-5, atol=1e-6)


def test_nothing_is_written_outside_the_data_folder(studio, tiny, files, data):
    before = sorted(p.name for p in files["cnn"].parent.iterdir())
    studio.add_model("tiny-again", files["cnn"], preprocess="unit")  # same content: one copy
    assert sorted(p.name for p in files["cnn"].parent.iterdir()) == before
    stored = sorted(p.name for p in (data / "gallery.models").iterdir())
    assert stored == [Path(tiny["path"]).name]
    assert studio.remove_model("tiny-again")
    assert (data / tiny["path"]).exists()  # still named by "tiny"


def test_a_layer_cuts_the_model_and_an_embedding_is_served_unpooled(studio, files):
    cut = studio.add_model("tiny-c2", files["cnn"], layer="c2")
    assert (cut["output"], cut["output_shape"]) == ("feature map", [16, 16, 16])
    emb = studio.add_model("embed", files["embedding"], preprocess="tf")
    assert (emb["output"], emb["dim"]) == ("embedding", 12)
    cfg = studio.resolve(ExtractorConfig("embed", "gem"))
    assert (cfg.pooling, cfg.gem_p) == ("none", 0.0)
    listed = {m["name"]: m for m in studio.models()}
    assert listed["embed"]["status"].startswith("your model (embedding 12-d")
    vec = studio.backbone(cfg).embed(np.zeros((2, 32, 32, 3), np.uint8))
    assert vec.shape == (2, 12)


def test_a_model_with_two_outputs_needs_one_chosen(studio, files):
    with pytest.raises(ERRORS) as err:
        studio.add_model("two", files["two"])
    assert "2 outputs" in _one_line(err) and "--layer" in str(err.value)
    assert studio.add_model("two-vec", files["two"], layer="vec")["dim"] == 5
    assert studio.add_model("two-map", files["two"], layer="0")["output"] == "feature map"


def _expected(pixels: np.ndarray, spec: str) -> np.ndarray:
    """Each preprocessing by its textbook formula, then the per-channel mean (GAP of the identity model)."""
    x = pixels.astype(np.float64)
    imagenet = ((x / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225])
    formulas = {"none": x, "unit": x / 255, "tf": x / 127.5 - 1, "torch": imagenet, "imagenet": imagenet,
                "caffe": x[..., ::-1] - [103.939, 116.779, 123.68],
                "scale=2,mean=1/2/3,std=4/5/6,bgr": (x[..., ::-1] * 2 - [1, 2, 3]) / [4, 5, 6]}
    return formulas[spec].mean(axis=(1, 2))


@pytest.mark.parametrize("spec", [*PREPROCESS, "scale=2,mean=1/2/3,std=4/5/6,bgr"])
def test_each_preprocessing_does_what_it_says(studio, files, spec):
    pixels = np.random.default_rng(1).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    name = "id-" + hashlib.sha256(spec.encode()).hexdigest()[:8]
    studio.add_model(name, files["identity"], preprocess=spec)
    got = studio.backbone(ExtractorConfig(name, "gap")).embed(pixels)
    np.testing.assert_allclose(got, _expected(pixels, spec), rtol=1e-4, atol=1e-4)
    assert studio.remove_model(name)


def test_preprocess_specs_are_checked_before_any_file_is_read():
    assert parse_preprocess("mean=127.5,std=127.5").mean == (127.5,) * 3
    for bad in ("zscore", "scale=x", "mean=1/2", "std=0", "scale=1,shift=2"):
        with pytest.raises(BackboneUnavailable) as err:
            parse_preprocess(bad)
        assert "preprocess" in _one_line(err)


# -- the invariant: vectors belong to one file ----------------------------------------------
def test_removing_deletes_vectors_and_a_new_file_under_the_same_name_gets_new_ones(studio, files, gallery, data):
    cfg = ExtractorConfig("swap", "gem")
    first = studio.add_model("swap", files["cnn2"])
    studio.index(gallery, collection="demo", cfg=cfg)
    old_key = studio.resolve(cfg).key
    old_id = studio.store.find_config(studio.resolve(cfg))
    _, _, old = studio.gallery("demo", cfg)
    assert old.vectors.shape[1] == 16
    with pytest.raises(ERRORS) as err:
        studio.add_model("swap", files["cnn3"])
    assert "exists already" in _one_line(err)

    assert studio.remove_model("swap") and not studio.remove_model("swap")
    assert studio.store.find_config(ExtractorConfig("swap")) is None
    assert studio.store._read("SELECT COUNT(*) FROM configs WHERE backbone = 'swap'")[0][0] == 0
    assert studio.store._read("SELECT COUNT(*) FROM embeddings WHERE config_id = ?", [old_id])[0][0] == 0
    assert not (data / first["path"]).exists()  # no other name used that copy
    with pytest.raises(ERRORS):
        studio.resolve(cfg)

    studio.add_model("swap", files["cnn3"])
    assert studio.resolve(cfg).key != old_key
    studio.index(gallery, collection="demo", cfg=cfg)
    _, new_id, new = studio.gallery("demo", cfg)
    assert new_id != old_id and not np.allclose(new.vectors, old.vectors)

    studio.add_model("swap", files["cnn2"], replace=True)  # replace: the cnn3 vectors go first
    assert studio.store._read("SELECT COUNT(*) FROM embeddings WHERE config_id = ?", [new_id])[0][0] == 0
    _, _, again = studio.gallery("demo", cfg)
    np.testing.assert_allclose(again.vectors, old.vectors, rtol=1e-5, atol=1e-6)

    # the same file again, used another way: one copy kept, other vectors
    same = studio.add_model("swap", files["cnn2"], layer="c2", replace=True)
    assert (data / same["path"]).is_file() and same["path"] == first["path"]
    assert studio.resolve(cfg).key != old_key  # same file, another layer: another content id
    assert studio.backbone(cfg).embed(np.zeros((1, 32, 32, 3), np.uint8)).shape == (1, 16)
    assert studio.remove_model("swap") and not (data / first["path"]).exists()


def test_a_new_studio_on_the_same_database_knows_the_models(studio, tiny, data):
    from retrieval import Studio

    cfg = ExtractorConfig("tiny", "gap")
    _, _, before = studio.gallery("demo", cfg)
    other = Studio(data / "gallery.sqlite", device="cpu", runtime="keras")
    try:
        assert "tiny" in {m["name"] for m in other.models() if m["family"] == "file"}
        assert other.resolve(cfg).key == studio.resolve(cfg).key
        _, _, after = other.gallery("demo", cfg)
        np.testing.assert_array_equal(after.vectors, before.vectors)
        assert other.search(_query(), collection="demo", cfg=cfg).hits[0].name == "cat/chelsea.jpg"
    finally:
        other.close()


# -- one-line refusals ----------------------------------------------------------------------
@pytest.mark.parametrize("name, file, options, says", [
    ("bad", "garbage", {}, "not a readable .keras file"),
    ("bad", "truncated", {}, "not a readable .keras file"),
    ("bad", "weights", {}, "not a model file"),
    ("bad", "cnn", {"layer": "c9"}, "cnn.keras has no layer 'c9'; its last layers are: "),
    ("bad", "rank3", {}, "output of shape ?×1024×3"),
    ("bad", "grey", {}, "not RGB images"),
    ("bad", "tabular", {}, "not RGB images"),
    ("bad", "lambda", {}, "the file contains a Lambda layer (Python code): safe mode refuses to run its code"),
    ("bad", "cnn", {"preprocess": "zscore"}, "unknown preprocess 'zscore'"),
    ("bad", "cnn", {"input_size": 64}, "takes 32×32 images; --input-size 64 does not fit"),
    ("bad", "anysize", {}, "give --input-size N"),
    ("efficientnet-lite0", "cnn", {}, "built-in model's name"),
    ("fusion:lite0+lite1", "cnn", {}, "built-in model's name"),
    ("no spaces", "cnn", {}, "is not allowed"),
    ("bad", "custom", {}, "uses Scale, which Keras does not know"),
    ("bad", "custom", {"custom_objects": ["tests.no_such_module:Scale"]}, "cannot import custom object"),
])
def test_every_refusal_is_one_line_and_leaves_nothing(studio, files, data, name, file, options, says):
    before = sorted((data / "gallery.models").iterdir()) if (data / "gallery.models").exists() else []
    names = {m["name"] for m in studio.user_models()}
    with pytest.raises(ERRORS) as err:
        studio.add_model(name, files[file], **options)
    assert says in _one_line(err)
    if file == "cnn" and "layer" in options:
        assert str(err.value).endswith("c1, c2, c3")
    assert {m["name"] for m in studio.user_models()} == names
    after = sorted((data / "gallery.models").iterdir()) if (data / "gallery.models").exists() else []
    assert after == before


def test_a_model_of_any_size_takes_the_given_one(studio, files):
    row = studio.add_model("anysize", files["anysize"], input_size=24)
    assert (row["input_size"], row["output_shape"]) == (24, [22, 22, 6])


def test_custom_objects_are_imported_only_when_named(studio, files):
    row = studio.add_model("scaled", files["custom"], custom_objects=["tests.custom_layers:Scale"])
    assert row["custom_objects"] == ["tests.custom_layers:Scale"] and row["output"] == "embedding"
    pixels = np.full((1, 16, 16, 3), 10, np.uint8)
    np.testing.assert_allclose(studio.backbone(ExtractorConfig("scaled")).embed(pixels), [[30.0, 30.0, 30.0]])


# -- other formats --------------------------------------------------------------------------
def _reference(studio, pixels):
    return studio.backbone(ExtractorConfig("tiny", "gem")).embed(pixels)


def test_a_savedmodel_folder_is_copied_as_a_folder_and_matches_keras(studio, tiny, files, data):
    from retrieval.service.user_models import content_hash

    row = studio.add_model("saved", files["savedmodel"], preprocess="unit")
    assert row["format"] == "savedmodel" and row["path"].endswith(".savedmodel")
    assert (data / row["path"] / "saved_model.pb").is_file()
    assert content_hash(data / row["path"]) == row["sha256"] == content_hash(files["savedmodel"])
    pixels = np.random.default_rng(2).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    got = studio.backbone(ExtractorConfig("saved", "gem")).embed(pixels)
    np.testing.assert_allclose(got, _reference(studio, pixels), rtol=1e-4, atol=1e-5)


def test_an_onnx_file_runs_through_openvino_and_matches_keras(studio, tiny, files):
    row = studio.add_model("onnx", files["onnx"], preprocess="unit")
    assert (row["format"], row["output"], row["dim"]) == ("onnx", "feature map", 16)
    pixels = np.random.default_rng(3).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    backbone = studio.backbone(ExtractorConfig("onnx", "gem"))
    assert "OpenVINO" in backbone.runtime
    np.testing.assert_allclose(backbone.embed(pixels), _reference(studio, pixels), rtol=1e-4, atol=1e-5)


def test_explain_works_for_a_feature_map_model_and_refuses_an_embedding(studio, tiny):
    explanation, left, right = studio.explain(_query(), "cat/chelsea_crop.jpg", collection="demo",
                                              cfg=ExtractorConfig("tiny", "gap"))
    assert explanation.query_map.shape == (8, 8) and left.ndim == 3 and right.ndim == 3
    with pytest.raises(ERRORS) as err:
        studio.explain(_query(), "cat/chelsea_crop.jpg", collection="demo", cfg=ExtractorConfig("embed"))
    assert "no feature map" in _one_line(err)


def test_the_auto_runtime_checks_a_file_model_but_remembers_nothing_by_name(data, tiny):
    from retrieval import Studio
    from retrieval.runtime.choose import remembered

    auto = Studio(data / "gallery.sqlite", device="cpu")
    try:
        backbone = auto.backbone(ExtractorConfig("tiny", "gem"))
        assert backbone.runtime and backbone.runtime_note
        assert not [k for k in remembered() if k.startswith("tiny|")]
    finally:
        auto.close()


# -- the command line -------------------------------------------------------------------------
def _cli(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-m", "retrieval", *args], check=False, cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert (done.returncode == 0) == ok, done.stderr[-2000:]
    return done


def test_the_cli_adds_lists_searches_with_and_removes_a_model(tmp_path, files, gallery):
    db = str(tmp_path / "cli.sqlite")
    added = json.loads(_cli("add-model", "mine", "--file", str(files["custom"]), "--custom-object",
                            "tests.custom_layers:Scale", "--preprocess", "unit", "--db", db, "--json").stdout)
    assert (added["name"], added["dim"], added["preprocess"]) == ("mine", 3, "unit")
    listed = json.loads(_cli("models", "--db", db, "--json").stdout)
    assert [m["status"] for m in listed if m["name"] == "mine"] == ["your model (embedding 3-d, preprocess unit)"]
    _cli("index", str(gallery / "coffee"), "--model", "mine", "--runtime", "keras", "--db", db)
    hits = json.loads(_cli("search", str(DEMO / "coffee" / "coffee.jpg"), "--model", "mine", "--runtime", "keras",
                           "--db", db, "--json").stdout)
    # the model is the mean of 3× the pixels: a flipped copy ties with the image itself
    assert hits["results"][0]["name"] in ("coffee.jpg", "coffee_flipped.jpg")
    assert hits["config"].startswith("mine") and len(hits["results"]) == len(list((gallery / "coffee").iterdir()))
    refused = _cli("add-model", "other", "--file", str(files["lambda"]), "--db", db, ok=False)
    assert refused.returncode == 2 and refused.stderr.strip().startswith("error: the file contains a Lambda layer")
    assert len(refused.stderr.strip().splitlines()) == 1
    assert "removed mine" in _cli("remove-model", "mine", "--db", db).stdout
    assert _cli("remove-model", "mine", "--db", db, ok=False).returncode == 2


def test_a_head_trains_on_a_file_model_which_then_cannot_be_removed_under_it(studio, files, gallery):
    """Adapt's head takes a file model's cached vectors; the file stays until the head is gone."""
    from retrieval.adapt import AdaptConfig

    studio.add_model("base-for-head", files["cnn"], preprocess="unit")
    base = ExtractorConfig("base-for-head", "gap")
    studio.index(gallery, collection="demo", cfg=base)
    report = studio.adapt("demo", AdaptConfig(method="head", epochs=3, heads=1, dim=8), base=base, name="head-on-file")
    assert report.base.startswith("base-for-head|")
    hits = studio.search(_query(), "demo", ExtractorConfig("head-on-file"), SearchConfig(rerank="none", whiten="none"))
    assert hits.hits[0].name == "cat/chelsea.jpg"
    with pytest.raises(ERRORS) as err:
        studio.remove_model("base-for-head")
    assert "head-on-file" in _one_line(err)
    assert any(m["name"] == "base-for-head" for m in studio.user_models())  # nothing was removed
    with pytest.raises(ERRORS):
        studio.add_model("base-for-head", files["embedding"], replace=True)
    assert studio.delete_adapted("head-on-file")
    assert studio.remove_model("base-for-head")


def test_two_databases_in_one_folder_keep_their_own_copies(tmp_path, files):
    """A copy belongs to its database's folder: removing it from one never breaks the other."""
    from retrieval import Studio

    a, b = Studio(tmp_path / "a.sqlite", device="cpu", runtime="keras"), Studio(tmp_path / "b.sqlite", device="cpu",
                                                                               runtime="keras")
    try:
        ra, rb = a.add_model("same", files["cnn"]), b.add_model("same", files["cnn"])
        assert ra["path"].startswith("a.models/") and rb["path"].startswith("b.models/")
        assert a.remove_model("same")
        assert not (tmp_path / ra["path"]).exists() and (tmp_path / rb["path"]).is_file()
        pixels = np.zeros((1, 32, 32, 3), np.uint8)
        assert b._models.backbone(ExtractorConfig("same", "gap")).embed(pixels).shape == (1, 16)
    finally:
        a.close()
        b.close()


def test_a_model_replaced_by_another_studio_is_never_served_from_memory(tmp_path, files, gallery):
    """The app keeps running while the CLI replaces or removes a model on its database."""
    from retrieval import Studio

    db = tmp_path / "shared.sqlite"
    app, cli = Studio(db, device="cpu", runtime="keras"), Studio(db, device="cpu", runtime="keras")
    query, plain = _query(), SearchConfig(rerank="none", whiten="none", k=3)
    try:
        app.add_model("m", files["cnn"], preprocess="unit")
        cfg = ExtractorConfig("m", "gap")
        app.index(gallery, collection="g", cfg=cfg)
        before = app.search(query, "g", cfg, plain)
        cli.add_model("m", files["embedding"], preprocess="tf", replace=True)  # another process's view
        after = app.search(query, "g", cfg, plain)
        assert after.config != before.config and after.config == cli.search(query, "g", cfg, plain).config
        fresh = Studio(db, device="cpu", runtime="keras")
        try:
            assert [h.score for h in after.hits] == pytest.approx([h.score for h in fresh.search(query, "g", cfg,
                                                                                                 plain).hits])
        finally:
            fresh.close()
        assert cli.remove_model("m")
        with pytest.raises(ERRORS) as err:
            app.search(query, "g", cfg, plain)
        assert "unknown model 'm'" in _one_line(err)
    finally:
        app.close()
        cli.close()
