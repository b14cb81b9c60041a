"""What every backbone offers: a fixed input size, a dimension, and ``embed``.

Why an abstract base: the extraction pipeline, the store and the ranking never
ask which network made a vector, so adding a backbone is adding one file in
this folder plus a line in the registry.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

import numpy as np


class BackboneUnavailable(RuntimeError):
    """The backbone cannot be built here; the message says what to do."""


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone as the registry lists it, before anything is built."""

    name: str
    family: str  # "cnn", "handcrafted", "adapted" (trained here) or "file" (the user's own)
    input_size: int
    dim: int
    licence: str
    source: str
    build: Callable[..., "Backbone"]
    readiness: Callable[[], str | None]  # None when ready offline, else why not
    # Whether a configuration chooses the pooling of its feature map. None: only built-in CNNs do
    # (hand-crafted and trained models fix theirs); a user's file says so by its output's rank.
    poolable: bool | None = None
    # The weights this backbone always uses (a user file's ``sha256:…``), so its configurations'
    # keys, and so their vectors, belong to that content; None: the configuration's own.
    weights: str | None = None
    note: str = ""  # what the listing says of it when ready, instead of "ready offline"

    @property
    def pools(self) -> bool:
        return self.family == "cnn" if self.poolable is None else self.poolable

    def ready(self) -> tuple[bool, str]:
        why = self.readiness()
        return (why is None, why or self.note or "ready offline")


class Backbone(ABC):
    """Turns a batch of RGB uint8 images at ``input_size`` into descriptors."""

    name: str
    input_size: int
    dim: int
    device: str = "CPU"
    pooling: str = "none"
    runtime: str = "numpy"  # what executes ``embed``: "Keras f32", "OpenVINO bf16", …
    runtime_note: str = ""  # why that runtime, when one was chosen

    @abstractmethod
    def embed(self, images: np.ndarray) -> np.ndarray:
        """``(N, S, S, 3)`` uint8 -> ``(N, dim)`` float32, pooled, not normalised."""

    def with_pooling(self, pooling: str, gem_p: float) -> "Backbone":
        return self  # descriptors without a feature map have nothing to pool
