import numpy as np
import pytest

from retrieval.backbones import REGISTRY, BackboneUnavailable
from retrieval.backbones.keras_apps import APPS
from retrieval.device import resolve


def test_every_required_application_is_registered():
    for name in ("mobilenetv2", "mobilenetv3large", "resnet50", "efficientnetb0", "vgg16"):
        assert name in REGISTRY and name in APPS


def test_missing_imagenet_weights_give_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setenv("RETRIEVAL_OFFLINE", "1")
    ready, why = REGISTRY["resnet50"].ready()
    assert not ready and "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in why
    with pytest.raises(BackboneUnavailable) as err:
        REGISTRY["resnet50"].build("gem", 3.0, resolve("cpu"))
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path / "models") in message and "efficientnet-lite1" in message


def test_local_weights_file_is_loaded(tmp_path):
    import keras

    reference = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(96, 96, 3))
    path = tmp_path / "mnv2.weights.h5"
    reference.save_weights(path)
    backbone = REGISTRY["mobilenetv2"].build("gap", 3.0, resolve("cpu"), input_size=96, weights=str(path))
    images = np.random.default_rng(0).integers(0, 256, (2, 96, 96, 3), dtype=np.uint8)
    expected = np.asarray(reference.predict_on_batch(images / 127.5 - 1.0)).mean(axis=(1, 2))
    np.testing.assert_allclose(backbone.embed(images), expected, rtol=1e-4, atol=1e-5)


def test_missing_local_weights_file_is_reported(tmp_path):
    with pytest.raises(BackboneUnavailable, match="weights file not found"):
        REGISTRY["vgg16"].build("gem", 3.0, resolve("cpu"), weights=str(tmp_path / "nope.h5"))
