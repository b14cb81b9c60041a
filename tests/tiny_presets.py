"""Tiny random KerasHub presets (DINOv2, CLIP, SigLIP) saved as local preset directories.

Shared by the tests of the ``hub`` family, text queries and the app: each is
loaded by the same code that loads a downloaded preset. Few layers and a
small inner width, but the real output widths (384, 512, 768): the store
sizes vectors by the spec, and the build checks it.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

SIZE = 224  # every hub spec's input size; the decode stage resizes to it
MAKERS = {}  # preset folder name -> how to make it


def _dinov2(keras_hub, folder: Path) -> None:
    net = keras_hub.models.DINOV2Backbone(patch_size=14, num_layers=2, hidden_dim=384, num_heads=6,
                                          intermediate_dim=64, image_shape=(56, 56, 3),
                                          position_embedding_shape=(56, 56, 3))
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    converter = keras_hub.layers.DINOV2ImageConverter(image_size=(56, 56), scale=list(1 / (255 * std)),
                                                      offset=list(-mean / std))
    net.save_to_preset(str(folder))
    converter.save_to_preset(str(folder))


def _clip(keras_hub, folder: Path) -> None:
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    merges = ["c a", "ca t</w>", "d o", "do g</w>", "p h", "ph o", "pho t", "phot o</w>"]
    vocab = {t: i for i, t in enumerate([*letters, *(x + "</w>" for x in letters),
                                         *(m.replace(" ", "") for m in merges), "<|startoftext|>", "<|endoftext|>"])}
    tokenizer = keras_hub.models.CLIPTokenizer(vocabulary=vocab, merges=merges)
    vision = keras_hub.models.CLIPVisionEncoder(patch_size=32, hidden_dim=32, num_layers=2, num_heads=2,
                                                intermediate_dim=64, image_shape=(SIZE, SIZE, 3))
    text = keras_hub.models.CLIPTextEncoder(vocabulary_size=len(vocab), embedding_dim=32, hidden_dim=32,
                                            num_layers=2, num_heads=2, intermediate_dim=64, max_sequence_length=16)
    net = keras_hub.models.CLIPBackbone(vision, text, projection_dim=512)
    converter = keras_hub.layers.CLIPImageConverter(image_size=(SIZE, SIZE), scale=[1 / (255 * 0.2686)] * 3,
                                                    offset=[-0.4815 / 0.2686] * 3)
    for part in (net, converter, tokenizer):
        part.save_to_preset(str(folder))


def _siglip(keras_hub, folder: Path) -> None:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["a photo of a cat", "a photo of a dog", "a red car on the road",
                                "coffee in a white cup"] * 5),
        model_writer=model, vocab_size=40, model_type="word", hard_vocab_limit=False, minloglevel=2,
        unk_id=0, eos_id=1, bos_id=-1, pad_id=-1, unk_piece="<unk>", eos_piece="</s>")
    tokenizer = keras_hub.models.SigLIPTokenizer(proto=model.getvalue())
    vision = keras_hub.models.SigLIPVisionEncoder(patch_size=16, hidden_dim=768, num_layers=1, num_heads=12,
                                                  intermediate_dim=64, image_shape=(SIZE, SIZE, 3))
    text = keras_hub.models.SigLIPTextEncoder(vocabulary_size=tokenizer.vocabulary_size(), embedding_dim=32,
                                              hidden_dim=32, num_layers=1, num_heads=2, intermediate_dim=64,
                                              max_sequence_length=16, projection_dim=768)
    net = keras_hub.models.SigLIPBackbone(vision, text)
    converter = keras_hub.layers.SigLIPImageConverter(image_size=(SIZE, SIZE), scale=1 / 127.5, offset=-1.0)
    for part in (net, converter, tokenizer):
        part.save_to_preset(str(folder))


MAKERS.update({"dinov2_small": _dinov2, "clip_vit_base_patch32": _clip, "siglip_base_patch16_224": _siglip})


def make_presets(root: Path, names=tuple(MAKERS)) -> Path:
    """Write the tiny presets named (folder names) under ``root``; returns ``root`` (for ``RETRIEVAL_PRESETS``)."""
    from retrieval.backbones import hub

    keras_hub = hub._keras_hub()
    for name in names:
        MAKERS[name](keras_hub, Path(root) / name)
    return Path(root)
