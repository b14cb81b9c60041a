"""The registry of backbones: a name -> how to build it and whether it is ready.

Why a registry: the CLI's ``models`` command, the UI's model picker and the
service layer all list the same backbones, and a new one is a new file in
this folder plus its ``SPECS`` here.
"""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

from ..config import ExtractorConfig
from . import efficientnet_lite, fusion, handcrafted, hub, keras_apps
from .base import Backbone, BackboneSpec, BackboneUnavailable

# The networks and descriptors a fusion is made of.
SINGLE: MappingProxyType[str, BackboneSpec] = MappingProxyType({
    spec.name: spec for spec in (*efficientnet_lite.SPECS, *keras_apps.SPECS, *handcrafted.SPECS, *hub.SPECS)
})

# The built-in backbones, read-only: models trained with ``adapt`` belong to
# the ``Studio`` (and database) that trained them, never to this module.
# A fusion preset is listed under its short name; its spec carries the
# recipe's canonical name, which is what configurations store.
REGISTRY: MappingProxyType[str, BackboneSpec] = MappingProxyType({
    **SINGLE, **{alias: fusion.spec_for(alias, SINGLE) for alias in fusion.PRESETS},
})

__all__ = ["REGISTRY", "Backbone", "BackboneSpec", "BackboneUnavailable", "get_spec", "resolve", "text_models"]


def text_models() -> tuple[str, ...]:
    """The built-in backbones with a text tower: words can rank their vectors (CLIP, SigLIP)."""
    return tuple(name for name in REGISTRY if hub.is_text_capable(name))


def get_spec(name: str) -> BackboneSpec:
    """A built-in backbone, a fusion preset, or any fusion recipe (``fusion:…``)."""
    if name in REGISTRY:
        return REGISTRY[name]
    if name.startswith(fusion.PREFIX):
        return fusion.spec_for(name, SINGLE)
    raise BackboneUnavailable(f"unknown model {name!r}; known: {', '.join(REGISTRY)}, or a recipe "
                              f"{fusion.PREFIX}PART+PART[;flip][;scales=…][;logits]")


def resolve(cfg: ExtractorConfig) -> ExtractorConfig:
    """A configuration of a built-in backbone with everything it implies filled in.

    The backbone takes the spec's name: a fusion preset or an equivalent
    recipe becomes the recipe's canonical name, so equal fusions share vectors.
    """
    spec = get_spec(cfg.backbone)
    return replace(cfg, backbone=spec.name).resolved(spec)
