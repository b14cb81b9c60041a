"""The registry of backbones: a name -> how to build it and whether it is ready.

Why a registry: the CLI's ``models`` command, the UI's model picker and the
service layer all list the same backbones, and a new one is a new file in
this folder plus its ``SPECS`` here.
"""

from __future__ import annotations

from . import efficientnet_lite, handcrafted, keras_apps
from .base import Backbone, BackboneSpec, BackboneUnavailable

REGISTRY: dict[str, BackboneSpec] = {
    spec.name: spec for spec in (*efficientnet_lite.SPECS, *keras_apps.SPECS, *handcrafted.SPECS)
}

__all__ = ["REGISTRY", "Backbone", "BackboneSpec", "BackboneUnavailable", "get_spec"]


def get_spec(name: str) -> BackboneSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise BackboneUnavailable(f"unknown model {name!r}; known: {', '.join(REGISTRY)}") from None
