"""Which engine runs a Keras backbone: Keras itself, or a faster one that matches it.

Why a layer of its own: the Keras model is the definition (and what Adapt
trains), but on a CPU an engine such as OpenVINO runs the same graph several
times faster, in f32 or at reduced precision. A converted model is used only
after it matched Keras on real photos (``parity``); ``auto`` takes the
fastest one that did, and says why when it falls back (``choose``).

The options are listed once, here: the CLI, the API and the app read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class RuntimeOption:
    name: str  # what a user types: "openvino-bf16"
    engine: str  # "keras" or "openvino"
    precision: str  # "f32", "bf16" or "int8"

    @property
    def label(self) -> str:
        """What a results line shows beside the device: "OpenVINO bf16"."""
        return f"{ENGINE_LABELS[self.engine]} {self.precision}"


ENGINE_LABELS = {"keras": "Keras", "openvino": "OpenVINO"}

OPTIONS: MappingProxyType[str, RuntimeOption] = MappingProxyType({o.name: o for o in (
    RuntimeOption("keras", "keras", "f32"),
    RuntimeOption("openvino-f32", "openvino", "f32"),
    RuntimeOption("openvino-bf16", "openvino", "bf16"),
)})
RUNTIMES = ("auto", *OPTIONS)
KERAS = OPTIONS["keras"]


class RuntimeUnavailable(RuntimeError):
    """A runtime asked for by name cannot run here; the message says why."""


def option(name: str) -> RuntimeOption:
    try:
        return OPTIONS[name]
    except KeyError:
        raise RuntimeUnavailable(f"unknown runtime {name!r}: choose one of {', '.join(RUNTIMES)}") from None
