"""The registry of backbones: a name -> how to build it and whether it is ready.

Why a registry: the CLI's ``models`` command, the UI's model picker and the
service layer all list the same backbones, and a new one is a new file in
this folder plus its ``SPECS`` here.
"""

from __future__ import annotations

from types import MappingProxyType

from ..config import ExtractorConfig
from . import efficientnet_lite, handcrafted, keras_apps
from .base import Backbone, BackboneSpec, BackboneUnavailable

# The built-in backbones, read-only: models trained with ``adapt`` belong to
# the ``Studio`` (and database) that trained them, never to this module.
REGISTRY: MappingProxyType[str, BackboneSpec] = MappingProxyType({
    spec.name: spec for spec in (*efficientnet_lite.SPECS, *keras_apps.SPECS, *handcrafted.SPECS)
})

__all__ = ["REGISTRY", "Backbone", "BackboneSpec", "BackboneUnavailable", "get_spec", "resolve"]


def get_spec(name: str) -> BackboneSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise BackboneUnavailable(f"unknown model {name!r}; known: {', '.join(REGISTRY)}") from None


def resolve(cfg: ExtractorConfig) -> ExtractorConfig:
    """A configuration of a built-in backbone with everything it implies filled in."""
    return cfg.resolved(get_spec(cfg.backbone))
