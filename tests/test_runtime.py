"""The runtime layer: a converted network stands in for Keras only after it matched it.

Real networks (EfficientNet-Lite0 with its ImageNet weights), real OpenVINO,
real photos; the conversion records live in a per-test folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from retrieval import ExtractorConfig, ServiceError, Studio
from retrieval.runtime import OPTIONS, RUNTIMES, parity, reference
from retrieval.runtime.choose import Chooser, digest

ROOT = Path(__file__).resolve().parents[1]
LITE0 = ExtractorConfig(backbone="efficientnet-lite0", pooling="gap")
from retrieval.runtime.openvino_engine import core  # openvino is in requirements-common.txt: never skipped


def _bf16_here() -> bool:
    return "BF16" in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


# -- the gates, on vectors made to pass or fail them ------------------------------
def _clustered(rng, classes=6, per=8, dim=64, spread=0.35):
    centres = rng.normal(size=(classes, dim))
    vectors = np.concatenate([c + spread * rng.normal(size=(per, dim)) for c in centres]).astype(np.float32)
    labels = [f"c{i}" for i in range(classes) for _ in range(per)]
    return vectors, labels


def test_identical_runs_pass_every_gate():
    vectors, labels = _clustered(np.random.default_rng(0))
    p = parity.measure(vectors, vectors.copy(), labels)
    assert p.median_cosine == pytest.approx(1.0) and p.top10_overlap == 1.0 and p.map_loss == 0.0
    assert parity.verdict(p, "f32") is None and parity.verdict(p, "bf16") is None


def test_an_unfaithful_f32_conversion_is_refused():
    rng = np.random.default_rng(1)
    vectors, labels = _clustered(rng)
    off = vectors + 0.08 * np.abs(vectors).mean() * rng.normal(size=vectors.shape).astype(np.float32)
    p = parity.measure(vectors, off, labels)
    assert p.median_cosine < parity.MIN_MEDIAN_COSINE
    assert "not faithful" in parity.verdict(p, "f32")


def test_reduced_precision_is_judged_by_the_ranking_it_gives():
    """A small perturbation that keeps neighbours passes bf16; one that costs mAP does not."""
    rng = np.random.default_rng(2)
    vectors, labels = _clustered(rng, classes=4, per=11, spread=0.2)  # top-10 = the 10 others of its class
    nudged = vectors * (1 + 0.08 * rng.normal(size=vectors.shape)).astype(np.float32)
    kept = parity.measure(vectors, nudged, labels)
    assert kept.median_cosine < parity.MIN_MEDIAN_COSINE  # f32 would refuse it ...
    assert parity.verdict(kept, "bf16") is None  # ... but the ranking is the same
    far = vectors * (1 + 0.3 * rng.normal(size=vectors.shape)).astype(np.float32)  # int8-like: same classes, far vectors
    assert "for a reduced precision" in parity.verdict(parity.measure(vectors, far, labels), "int8")
    swapped = vectors.copy()
    swapped[:6], swapped[11:17] = vectors[11:17], vectors[:6]  # half of two classes exchanged: labels now wrong
    lost = parity.measure(vectors, swapped, labels)
    assert parity.verdict(lost, "bf16") is not None


# -- a real network through OpenVINO --------------------------------------------------
@pytest.fixture(scope="module")
def lite0(tmp_path_factory):
    studio = Studio(tmp_path_factory.mktemp("rt") / "rt.sqlite", device="cpu", runtime="keras")
    yield studio.backbone(LITE0)
    studio.close()


def test_auto_picks_a_checked_openvino_and_says_why(lite0, tmp_path):
    chooser = Chooser(lite0.target(), tmp_path / digest(lite0.model))
    choice = chooser.choose("auto")
    expected = "openvino-bf16" if _bf16_here() else "openvino-f32"
    assert choice.option.name == expected, choice.note
    assert choice.note.startswith(f"auto: {expected}:") and "cosine" in choice.note and "mAP" in choice.note
    f32 = json.loads(next((tmp_path / digest(lite0.model)).glob("openvino-f32@*.json")).read_text())
    assert f32["problem"] is None and f32["parity"]["median_cosine"] >= 0.999
    assert f32["parity"]["images"] == len(reference.photos(224)[1]) >= 60

    pixels, _ = reference.photos(224)
    theirs = lite0.embed(pixels[:16])
    ours = lite0.using(choice).embed(pixels[:16])
    cos = (theirs * ours).sum(1) / np.linalg.norm(theirs, axis=1) / np.linalg.norm(ours, axis=1)
    assert cos.min() > 0.98


def test_records_are_reused_and_a_torn_one_is_checked_again(lite0, tmp_path):
    folder = tmp_path / digest(lite0.model)
    Chooser(lite0.target(), folder).choose("openvino-f32")
    record = next(folder.glob("openvino-f32@*.json"))
    first = record.read_text()
    os.utime(record, (1, 1))
    again = Chooser(lite0.target(), folder)
    again.choose("openvino-f32")
    assert record.stat().st_mtime == 1 and again._keras is None  # read, not measured again
    record.write_text("{ torn")
    Chooser(lite0.target(), folder).choose("openvino-f32")
    assert json.loads(record.read_text())["parity"]["median_cosine"] == pytest.approx(
        json.loads(first)["parity"]["median_cosine"], abs=1e-4)


def test_without_reference_photos_auto_falls_back_to_keras(lite0, tmp_path):
    choice = Chooser(lite0.target(), tmp_path / "records", photos=tmp_path / "nowhere").choose("auto")
    assert choice.option.name == "keras" and choice.runner is None
    assert "no reference photos" in choice.note


def test_records_are_keyed_by_weights_not_by_name(lite0):
    """A retrained network under a reused name must not inherit another network's conversion."""
    import keras

    clone = keras.models.clone_model(lite0.model)
    weights = lite0.model.get_weights()
    clone.set_weights(weights)
    assert digest(clone) == digest(lite0.model)
    weights[-1] = weights[-1] + 1.0
    clone.set_weights(weights)
    assert digest(clone) != digest(lite0.model)


# -- through the Studio, the CLI ------------------------------------------------------------
def test_results_name_their_runtime(photo_folder, tmp_path):
    studio = Studio(tmp_path / "g.sqlite", device="cpu")
    try:
        report = studio.index(photo_folder, "photos", LITE0)
        assert report.runtime.startswith("OpenVINO") and set(report.timings) == {"decode_s", "embed_s", "write_s"}
        assert report.timings["embed_s"] > 0 and report.timings["decode_s"] > 0
        auto = studio.search(photo_folder / "cats" / "chelsea.jpg", "photos", LITE0)
        keras = studio.search(photo_folder / "cats" / "chelsea.jpg", "photos", LITE0, runtime="keras")
        assert auto.runtime == report.runtime and keras.runtime == "Keras f32"
        assert [h.name for h in auto.hits[:3]] == [h.name for h in keras.hits[:3]]
        assert auto.to_json()["runtime"] == auto.runtime
        with pytest.raises(ServiceError, match="unknown runtime 'tensorrt'"):
            studio.search(photo_folder / "cats" / "chelsea.jpg", "photos", LITE0, runtime="tensorrt")
        rows = {r["runtime"]: r for r in studio.runtime_trials(LITE0)}
        assert set(rows) == set(RUNTIMES) and sum(r["auto"] for r in rows.values() if r["runtime"] != "auto") == 1
        assert rows["openvino-f32"]["parity"]["top10_overlap"] >= 0.9
    finally:
        studio.close()


def test_cli_runtime_flag_and_runtimes_command(photo_folder, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    db = tmp_path / "cli.sqlite"

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "retrieval", *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=600)

    out = cli("index", str(photo_folder), "--db", str(db), "--model", "efficientnet-lite0", "--pooling", "gap",
              "--runtime", "keras", "--quiet")
    assert out.returncode == 0, out.stderr
    assert "Keras f32" in out.stdout
    out = cli("search", str(photo_folder / "coffee" / "coffee.jpg"), "--db", str(db), "--model", "efficientnet-lite0",
              "--pooling", "gap", "--runtime", "openvino-f32", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["runtime"] == "OpenVINO f32"
    out = cli("runtimes", "--model", "efficientnet-lite0", "--pooling", "gap", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["runtime"] for r in rows] == [*OPTIONS, "auto"]
    out = cli("search", str(photo_folder / "coffee" / "coffee.jpg"), "--db", str(db), "--runtime", "fast")
    assert out.returncode == 2 and "invalid choice: 'fast'" in out.stderr
    out = cli("models")
    assert "efficientnet-lite0|imagenet|224|gap · auto · cpu: OpenVINO" in out.stdout


def test_a_conversion_calls_no_one_and_writes_only_in_the_cache(tmp_path):
    """OpenVINO's converter reports usage to Google Analytics and writes ~/intel unless its telemetry is stubbed."""
    home, cache = tmp_path / "home", tmp_path / "cache"
    home.mkdir()
    code = """
import sys, numpy as np
from retrieval.runtime.choose import Chooser, Target, digest
from retrieval.device import import_keras
keras = import_keras()
model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(8, 3), keras.layers.GlobalAveragePooling2D()])
target = Target(model, 32, lambda im: np.asarray(im, np.float32) / 255.0, lambda x: model.predict_on_batch(x))
choice = Chooser(target, Path(sys.argv[1]) / digest(model)).choose("openvino-f32")
print(choice.label, [m for m in sys.modules if m.startswith("openvino_telemetry") and sys.modules[m] is not None])
""".replace("import sys,", "import sys\nfrom pathlib import Path\nimport")
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": str(ROOT), "KERAS_HOME": str(cache / "keras"),
           "MPLCONFIGDIR": str(cache / "matplotlib")}  # what the app sets for Keras and matplotlib, too
    env.pop("CI", None)  # OpenVINO's own opt-out for CI must not be what keeps this quiet
    out = subprocess.run([sys.executable, "-c", code, str(cache)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "OpenVINO f32 []"
    assert list(home.iterdir()) == []  # no ~/intel (client id, usage counters), nothing else
    assert any(cache.rglob("model.xml"))
