import numpy as np
import pytest
from PIL import Image
from skimage import data

from retrieval.backbones.efficientnet_lite import VARIANTS, _cache_path, load_classifier, preprocess, weights_file


def _classify(model, img, size):
    x = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR), np.float32)[None]
    logits = np.asarray(model.predict_on_batch(preprocess(x)))[0]
    p = np.exp(logits - logits.max())
    return int(p.argmax()), float(p.max() / p.sum())


@pytest.fixture(scope="module")
def lite0():
    return load_classifier(VARIANTS["efficientnet-lite0"])


def test_real_imagenet_weights_cat_and_espresso(lite0):
    cls, prob = _classify(lite0, data.chelsea(), 224)
    assert cls == 285  # Egyptian cat
    assert prob > 0.5
    assert _classify(lite0, data.coffee(), 224)[0] == 967  # espresso


def test_conversion_is_cached_and_reloads_identically(lite0):
    variant = VARIANTS["efficientnet-lite0"]
    cached = _cache_path(variant, weights_file(variant))
    assert cached.is_file()
    again = load_classifier(variant)  # from the cache this time
    for a, b in zip(lite0.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["efficientnet-lite1", "efficientnet-lite2"])
def test_bigger_variants_classify_the_cat(name):
    variant = VARIANTS[name]
    model = load_classifier(variant)
    assert _classify(model, data.chelsea(), variant.resolution)[0] in range(281, 286)  # a cat class
