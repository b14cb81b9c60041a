"""The KerasHub presets offered as backbones, and where their files are: no Keras here.

Why apart from the networks (``hub``): the registry, the ``models`` listing
and the UI ask what a preset is (its size, its licence, whether it reads
text) and whether it is on this machine long before anything is loaded, and
``import retrieval`` must stay free of Keras.

Where a preset comes from, in this order: ``$RETRIEVAL_PRESETS/<preset>/``,
then ``<data folder>/presets/<preset>/`` (any KerasHub preset directory,
i.e. holding ``config.json``), else a download of ``hf://keras/<preset>``
into that data folder (never ``~/.cache``). Offline, ``fetch`` fails within
seconds with one line that says where to put the preset; huggingface_hub
alone would retry for about 23 s first.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlparse

from .base import BackboneUnavailable

# What a backbone's vector is, per KerasHub model family:
#   dinov2 "cls"       the CLS token of the final (layer-normed) sequence
#   dinov2 "patchmean" the mean of the final patch tokens (registers skipped)
#   clip   "image"     the vision tower's pooled token through the vision projection,
#                      the vector that lives in CLIP's joint image-text space
#   siglip "image"     the vision tower's attention-pooled output, in SigLIP's joint space
KINDS = ("dinov2", "clip", "siglip")
TEXT_KINDS = ("clip", "siglip")


@dataclass(frozen=True)
class HubPreset:
    """A backbone made from a KerasHub preset.

    ``input_size`` is what the engine decodes images to. DINOv2 presets are
    saved at 518 px; they run at 224, the crop of DINOv2's own image
    processor, with the position embeddings interpolated (KerasHub does this
    when the image shape is given), which is ~5x cheaper per image.
    """

    name: str  # what users type
    preset: str  # the KerasHub preset, also the folder name under presets/
    kind: str  # one of KINDS
    output: str  # "cls", "patchmean" or "image"
    dim: int
    input_size: int
    params: int  # from KerasHub's *_presets.py: the download is about params x 4 bytes
    licence: str

    @property
    def download_mb(self) -> int:
        return round(self.params * 4 / 1e6)

    @property
    def text_capable(self) -> bool:
        return self.kind in TEXT_KINDS

    @property
    def source(self) -> str:
        return f"KerasHub preset {self.preset}"

    @property
    def explain_refusal(self) -> str | None:
        """None when the vector is an exact sum over patches; else why it is not, in one line."""
        if self.output == "patchmean":
            return None
        if self.kind == "dinov2":
            why = "the CLS token attends to all patches through softmax attention"
        elif self.kind == "clip":
            why = "CLIP's image vector is its class token after attention over all patches and a projection"
        else:
            why = "SigLIP's image vector comes from an attention-pooling head that weighs all patches"
        return (f"{self.name}: {why}, so its similarity cannot be split over patches; "
                f"explain with a …-patchmean model such as dinov2-small-patchmean")


_DINO = "Apache-2.0 (Meta DINOv2, via KerasHub)"
_CLIP = "MIT (OpenAI CLIP, via KerasHub)"
_SIGLIP = "Apache-2.0 (Google SigLIP, via KerasHub)"

PRESETS: dict[str, HubPreset] = {p.name: p for p in (
    HubPreset("dinov2-small-cls", "dinov2_small", "dinov2", "cls", 384, 224, 22_582_656, _DINO),
    HubPreset("dinov2-small-patchmean", "dinov2_small", "dinov2", "patchmean", 384, 224, 22_582_656, _DINO),
    HubPreset("dinov2-base-cls", "dinov2_base", "dinov2", "cls", 768, 224, 87_632_640, _DINO),
    HubPreset("dinov2-base-patchmean", "dinov2_base", "dinov2", "patchmean", 768, 224, 87_632_640, _DINO),
    HubPreset("clip-vit-b32", "clip_vit_base_patch32", "clip", "image", 512, 224, 151_277_363, _CLIP),
    HubPreset("clip-vit-b16", "clip_vit_base_patch16", "clip", "image", 512, 224, 149_620_934, _CLIP),
    HubPreset("siglip-b16-224", "siglip_base_patch16_224", "siglip", "image", 768, 224, 203_156_230, _SIGLIP),
)}


def is_text_capable(name: str) -> bool:
    """Whether a backbone name embeds words into its image space (CLIP, SigLIP)."""
    preset = PRESETS.get(name)
    return preset is not None and preset.text_capable


# -- where presets are ------------------------------------------------------------
PRESETS_ENV = "RETRIEVAL_PRESETS"
CONNECT_TIMEOUT_S = 3.0
_DOWNLOAD_LOCK = threading.Lock()  # one download per process; a second build waits and finds it


def fail(message: str, cause: BaseException | None = None) -> NoReturn:
    """Raise the one-line ``BackboneUnavailable`` the UI and CLI show as it is."""
    raise BackboneUnavailable(message) from cause


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def forced_offline() -> bool:
    """The user said there is no network: ``HF_HUB_OFFLINE`` or ``RETRIEVAL_OFFLINE``."""
    return _flag("HF_HUB_OFFLINE") or _flag("RETRIEVAL_OFFLINE")


def download_root() -> Path:
    from ..settings import data_dir

    return data_dir() / "presets"


def preset_dirs() -> list[Path]:
    """Folders that may hold ``<preset>/``, in the order they are looked in."""
    env = os.environ.get(PRESETS_ENV, "").strip()
    return [*([Path(env).expanduser()] if env else []), download_root()]


def local_preset(preset: str) -> Path | None:
    """The first local KerasHub preset directory for ``preset``, or None. No network."""
    for folder in preset_dirs():
        if (folder / preset / "config.json").is_file():
            return folder / preset
    return None


def keras_hub_installed() -> bool:
    return importlib.util.find_spec("keras_hub") is not None


def downloadable(name: str) -> bool:
    """Not here yet, but it would download on first use: KerasHub installed and not forced offline."""
    preset = PRESETS.get(name)
    return (preset is not None and local_preset(preset.preset) is None and keras_hub_installed()
            and not forced_offline())


def hub_address() -> tuple[str, int]:
    """Where a download's first connection goes: the Hugging Face host (``HF_ENDPOINT`` when set),
    or the HTTP(S) proxy the environment names for it, as ``requests`` would use it."""
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = url.hostname or "huggingface.co"
    proxy = None if urllib.request.proxy_bypass(host) else urllib.request.getproxies().get(url.scheme)
    if proxy:
        url = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        host = url.hostname or host
    return host, url.port or (80 if url.scheme == "http" else 443)


def reachable(timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub opens within ``timeout`` (DNS included).

    The probe runs in a daemon thread because name resolution has no timeout
    of its own; a resolver that hangs costs at most ``2 * timeout``.
    """
    opened: list[bool] = []

    def probe() -> None:
        with contextlib.suppress(OSError), socket.create_connection(hub_address(), timeout=timeout):
            opened.append(True)

    thread = threading.Thread(target=probe, name="hub-reachability", daemon=True)
    thread.start()
    thread.join(2 * timeout)
    return bool(opened)


def _missing(p: HubPreset, why: str) -> str:
    return (f"{p.name}: KerasHub preset {p.preset} is not on this machine and {why}; it downloads on first use "
            f"when online (≈ {p.download_mb} MB), or put its preset directory (what "
            f"keras_hub.models.Backbone.from_preset('{p.preset}').save_to_preset(DIR), plus its image converter "
            f"and tokenizer, writes on a machine with network) in {download_root() / p.preset}/ "
            f"or ${PRESETS_ENV}/{p.preset}/")


def fetch(p: HubPreset) -> Path:
    """The local preset directory, downloading it into the data folder when it is missing and the hub is reachable."""
    found = local_preset(p.preset)
    if found is not None:
        return found
    if forced_offline():
        return fail(_missing(p, "the network is switched off (HF_HUB_OFFLINE / RETRIEVAL_OFFLINE)"))
    if importlib.util.find_spec("huggingface_hub") is None:
        return fail(_missing(p, "huggingface_hub is not installed (pip install huggingface_hub)"))
    host, port = hub_address()
    if not reachable():
        return fail(_missing(p, f"{host}:{port} cannot be reached"))
    target = download_root() / p.preset
    if target.exists():  # not a preset (no config.json): never download over someone's folder
        fail(f"{p.name}: {target}/ exists but holds no KerasHub preset (no config.json); complete or remove it")
    partial = target.parent / f".{p.preset}.partial"  # renamed into place only once complete
    with _DOWNLOAD_LOCK:
        if (found := local_preset(p.preset)) is not None:
            return found
        from huggingface_hub import snapshot_download

        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # the endpoint the probe checked (huggingface_hub reads HF_ENDPOINT once, at its import)
            snapshot_download(repo_id=f"keras/{p.preset}", local_dir=partial, endpoint=os.environ.get("HF_ENDPOINT"))
            if not (partial / "config.json").is_file():
                return fail(f"{p.name}: hf://keras/{p.preset} holds no KerasHub preset (no config.json)")
            shutil.rmtree(partial / ".cache", ignore_errors=True)  # huggingface_hub's bookkeeping
            os.replace(partial, target)
        except BackboneUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - any failed download: one line, nothing half-installed
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            return fail(f"{p.name}: downloading hf://keras/{p.preset} into {target}/ failed: {first}", exc)
    return target
