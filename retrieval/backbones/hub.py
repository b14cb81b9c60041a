"""Backbones from KerasHub presets: DINOv2, CLIP and SigLIP (the ``hub`` family).

Why a family of its own: these are transformers with their own image
converters (resize, rescale, normalise as each preset defines) and, for CLIP
and SigLIP, a text tower. They run in Keras as they are: the OpenVINO/ONNX
conversions of ``runtime`` are for the CNNs, so this is no ``KerasNetwork``.
They are not fusion parts (fusion takes ``family == "cnn"`` only).

What the presets are and where they come from (a local preset directory, or
a download into the data folder) is ``hub_presets``; this file loads them.
Keras and KerasHub are imported only when a backbone is built.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import numpy as np

from .base import Backbone, BackboneSpec, BackboneUnavailable
from .hub_presets import (
    PRESETS,
    PRESETS_ENV,
    HubPreset,
    downloadable,
    fail,
    fetch,
    is_text_capable,
    keras_hub_installed,
    local_preset,
    reachable,
)

__all__ = ["PRESETS_ENV", "SPECS", "HubBackbone", "downloadable", "fetch", "is_text_capable", "local_preset",
           "prefetch", "reachable"]


# -- the loaded networks --------------------------------------------------------
def _keras_hub():
    from ..device import import_keras

    import_keras()  # silences TensorFlow's start-up banner
    import keras_hub

    return keras_hub


def _default_placement():
    """Where Keras runs a model given no placement: its first GPU when it sees one (what ``auto`` says)."""
    from ..device import resolve

    return resolve("auto")


class HubBackbone(Backbone):
    """A KerasHub preset's image tower: converter -> backbone -> the chosen output.

    Batches are padded to ``bucket`` sizes (few traced shapes), and one lock
    serialises the passes of one network, as ``KerasNetwork`` does.
    """

    pooling = "none"
    runtime = "Keras f32"
    runtime_note = "KerasHub transformers run in Keras; the converted runtimes are for the CNNs"

    def __init__(self, preset: HubPreset, folder: Path, placement, batch_size: int, size: int):
        keras_hub = _keras_hub()
        self.preset, self.placement, self.batch_size = preset, placement, batch_size
        self.name, self.input_size, self.loaded_from = preset.name, size, str(folder)
        self.device = (placement or _default_placement()).description
        self.explain_refusal = preset.explain_refusal
        self._lock = threading.Lock()
        with self._placed():
            self.network = keras_hub.models.Backbone.from_preset(str(folder), **self._overrides(size))
            self.converter = keras_hub.layers.ImageConverter.from_preset(str(folder), image_size=(size, size))
            self._load()
        self.dim = int(self.embed(np.zeros((1, size, size, 3), np.uint8)).shape[-1])
        if self.dim != preset.dim:  # the store sizes its vectors by the spec: a variant must not slip in
            fail(f"{self.name}: the preset in {folder}/ gives {self.dim}-d vectors, not {preset.dim}; "
                  f"it is not {preset.preset}")

    def _overrides(self, size: int) -> dict:
        return {}

    def _load(self) -> None:
        """Build what ``_images`` runs; called under the placement."""

    def _images(self, images: np.ndarray) -> np.ndarray:
        """uint8 images -> vectors, through ``_batched``."""
        raise NotImplementedError

    def _placed(self):
        if self.placement is None:
            return contextlib.nullcontext()
        from ..device import placed

        return placed(self.placement)

    def _batched(self, run, x: np.ndarray) -> np.ndarray:
        """``run`` on ``x`` padded to a bucket size, under the lock and the placement; the padding is cut off."""
        from .keras_model import bucket

        n = len(x)
        size = bucket(n, self.batch_size)
        if n < size:
            x = np.concatenate([x, np.zeros((size - n,) + x.shape[1:], x.dtype)])
        with self._lock, self._placed():
            out = run(x)
        return np.asarray(out[:n], dtype=np.float32)

    def convert(self, images: np.ndarray) -> np.ndarray:
        """The preset's own preprocessing (resize, rescale, normalise) of uint8 images; call under the lock."""
        from keras import ops

        return np.asarray(ops.convert_to_numpy(self.converter(np.asarray(images))), np.float32)

    def embed(self, images: np.ndarray) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, getattr(self, "dim", self.preset.dim)), np.float32)
        return self._images(np.asarray(images, np.uint8))


class DinoV2(HubBackbone):
    """DINOv2's final sequence is [CLS, registers, patches], after the final layer norm; this takes CLS."""

    def _overrides(self, size: int) -> dict:
        return {"image_shape": (size, size, 3)}  # position embeddings are interpolated to the size

    def _sequence(self, images: np.ndarray) -> np.ndarray:
        return self._batched(lambda b: self.network.predict_on_batch({"images": self.convert(b)}), images)

    def _images(self, images: np.ndarray) -> np.ndarray:
        return self._sequence(images)[:, 0]


class DinoV2PatchMean(DinoV2):
    """The mean of DINOv2's patch tokens: the vector is an exact sum over patches, so it can be explained."""

    def _patches(self, images: np.ndarray) -> np.ndarray:
        return self._sequence(images)[:, 1 + self.network.num_register_tokens:]

    def _images(self, images: np.ndarray) -> np.ndarray:
        return self._patches(images).mean(axis=1)

    def patch_tokens(self, images: np.ndarray) -> np.ndarray:
        """``(N, h, w, C)`` final patch tokens on the patch grid; ``embed`` is their mean."""
        side = self.input_size // self.network.patch_size
        if len(images) == 0:
            return np.zeros((0, side, side, self.dim), np.float32)
        tokens = self._patches(np.asarray(images, np.uint8))
        return tokens.reshape(len(tokens), side, side, tokens.shape[-1])


class JointSpace(HubBackbone):
    """CLIP or SigLIP: the image tower's vector in the space its text tower shares."""

    def _load(self) -> None:
        import keras
        import keras_hub

        net = self.network
        size = int(net.vision_encoder.image_shape[0])
        if size != self.input_size:
            fail(f"{self.name}: the preset in {self.loaded_from} takes {size} px images, not {self.input_size}")
        image = keras.Input(shape=(size, size, 3), name="images")
        self._image_model = keras.Model(image, net.get_vision_embeddings(image))
        tokens = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        self._text_model = keras.Model(tokens, net.get_text_embeddings(tokens))
        preprocessor = (keras_hub.models.CLIPPreprocessor if self.preset.kind == "clip"
                        else keras_hub.models.SigLIPPreprocessor)
        tokenizer = keras_hub.tokenizers.Tokenizer.from_preset(self.loaded_from)
        # The preset's own text pipeline: lower-casing (and SigLIP's punctuation
        # stripping), start/end tokens and padding to the text tower's length.
        self._texts = preprocessor(tokenizer, sequence_length=int(net.text_encoder.max_sequence_length))

    def _images(self, images: np.ndarray) -> np.ndarray:
        return self._batched(lambda b: self._image_model.predict_on_batch(self.convert(b)), images)

    def text_embed(self, texts: list[str]) -> np.ndarray:
        """``(N, dim)`` float32 text vectors, not normalised, comparable with ``embed``'s."""
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        from keras import ops

        with self._lock:  # the preprocessor builds its packer lazily, like any Keras layer
            ids = ops.convert_to_numpy(self._texts({"images": None, "prompts": texts})["token_ids"])
        return self._batched(self._text_model.predict_on_batch, np.asarray(ids, np.int32))


_CLASSES = {("dinov2", "cls"): DinoV2, ("dinov2", "patchmean"): DinoV2PatchMean,
            ("clip", "image"): JointSpace, ("siglip", "image"): JointSpace}


def prefetch(name: str) -> None:
    """Make a preset local before its network is built (the caller holds no lock while it downloads).

    Offline, it fails as the build would, in one line (and the build is not tried again).
    """
    preset = PRESETS.get(name)
    if preset is not None and keras_hub_installed() and local_preset(preset.preset) is None:
        fetch(preset)


def _build(p: HubPreset):
    def build(pooling: str, gem_p: float, placement, input_size: int | None = None, weights: str | None = None,
              batch_size: int = 32) -> HubBackbone:
        if weights:
            fail(f"{p.name}: takes no weights file; its weights are the KerasHub preset's")
        if not keras_hub_installed():
            fail(f"{p.name}: needs keras-hub (pip install keras-hub)")
        folder = fetch(p)
        try:
            return _CLASSES[p.kind, p.output](p, folder, placement, batch_size, input_size or p.input_size)
        except BackboneUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken preset (or Keras error): one line, not a traceback
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            fail(f"{p.name}: cannot load the KerasHub preset in {folder}/: {first}", exc)

    return build


def _readiness(p: HubPreset):
    def check() -> str | None:
        if not keras_hub_installed():
            return "needs keras-hub (pip install keras-hub)"
        return None if local_preset(p.preset) else f"downloads on first use (≈ {p.download_mb} MB)"

    return check


SPECS = [BackboneSpec(p.name, "hub", p.input_size, p.dim, p.licence, f"{p.source} (≈ {p.download_mb} MB)",
                      _build(p), _readiness(p)) for p in PRESETS.values()]
