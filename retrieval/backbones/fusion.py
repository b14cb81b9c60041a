"""Fusion: several CNNs' descriptors, weighted and concatenated, as one backbone.

Why a backbone and not a search option: search, compare, evaluate, the CLI
and the store all take a backbone name, so a fusion written as a name
(its *recipe*) is usable everywhere and cached like any other configuration.
The recipe's canonical string is the backbone name stored in
``ExtractorConfig.key``: equal recipes, however typed, share vectors, and a
changed recipe never reuses stale ones.

Recipe grammar (``parse``), parts joined by ``+``, options by ``;``::

    fusion:efficientnet-lite0+efficientnet-lite1*2+lite2;flip;scales=1,0.707,1.414;logits=0.5

- ``NAME[*W]``: a built-in CNN (``lite0`` is short for ``efficientnet-lite0``)
  with weight W (default 1). Only the ratios of the weights matter.
- ``flip``: each part's descriptor is the mean of the image's and its
  mirror's pooled descriptors.
- ``scales=S,…``: the mean over the image resized to round(s·S) for each s,
  S being the part's own input size.
- ``logits[=W]``: the ImageNet logits (1000) of the largest EfficientNet-Lite
  part, averaged over the same views, as one more block of weight W
  (default 1). They come from the same forward pass as its feature map.

The vector (``fuse``): each block is L2-normalised and multiplied by
``sqrt(w_i / sum w)``, so the fused vector has unit length and the cosine of
two fused vectors is the weighted mean of the blocks' cosines.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..pooling import l2_normalize
from .base import Backbone, BackboneSpec, BackboneUnavailable

PREFIX = "fusion:"
LOGITS_DIM = 1000
_LITE = "efficientnet-lite"

# Presets listed in the registry (and so in the app's pickers and ``models``).
# The names are aliases: a preset resolves to its recipe's canonical name.
PRESETS = {
    "fusion-lite": "fusion:lite0+lite1+lite2",
    "fusion-lite-flip": "fusion:lite0+lite1+lite2;flip",
    "fusion-lite-ms": "fusion:lite0+lite1+lite2;scales=1,0.707,1.414",
}

# Model time per image relative to efficientnet-lite1, each at its own size,
# measured by benchmarks/fusion.py (docs/fusion.md, OpenVINO bf16). A view at
# scale s costs about s² of that; flipping doubles the views. End to end a
# fusion costs more than this estimate (resizing, and a part whose bf16
# conversion failed its check runs in f32): see the measured presets there.
RELATIVE_COST = {"efficientnet-lite0": 0.67, "efficientnet-lite1": 1.0, "efficientnet-lite2": 1.27}


def _number(text: str, token: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise BackboneUnavailable(f"bad fusion recipe: {what} {text!r} in {token!r} is not a positive number")
    return value


def _fmt(x: float) -> str:
    return f"{float(f'{x:.4g}'):g}"


@dataclass(frozen=True)
class FusionRecipe:
    """What a fusion is made of; ``name`` is its canonical form."""

    parts: tuple[tuple[str, float], ...]  # (backbone name, weight), sorted by name, weights relative
    flip: bool = False
    scales: tuple[float, ...] = (1.0,)
    logits: float = 0.0  # the logits block's weight; 0: no logits

    @property
    def name(self) -> str:
        parts = "+".join(n if w == 1 else f"{n}*{_fmt(w)}" for n, w in self.parts)
        options = (["flip"] if self.flip else []) + (
            [f"scales={','.join(_fmt(s) for s in self.scales)}"] if self.scales != (1.0,) else []) + (
            ([f"logits={_fmt(self.logits)}" if self.logits != 1 else "logits"]) if self.logits else [])
        return PREFIX + ";".join([parts, *options])

    @property
    def total_weight(self) -> float:
        return sum(w for _, w in self.parts) + self.logits

    def sizes(self, native: int) -> tuple[int, ...]:
        """A part's input sizes, one per scale."""
        return tuple(round(s * native) for s in self.scales)

    def views(self) -> int:
        return len(self.scales) * (2 if self.flip else 1)

    def logits_part(self, specs: Mapping[str, BackboneSpec]) -> str | None:
        """The largest EfficientNet-Lite part: its classifier gives the logits."""
        lite = [n for n, _ in self.parts if n.startswith(_LITE)]
        return max(lite, key=lambda n: specs[n].input_size) if lite else None

    def cost(self) -> float | None:
        """Estimated time per image relative to efficientnet-lite1 (None: a part was never measured)."""
        if any(n not in RELATIVE_COST for n, _ in self.parts):
            return None
        per_view = sum(RELATIVE_COST[n] for n, _ in self.parts)
        return per_view * sum(s * s for s in self.scales) * (2 if self.flip else 1)


def is_recipe(name: str) -> bool:
    return name.startswith(PREFIX) or name in PRESETS


def parse(text: str, specs: Mapping[str, BackboneSpec]) -> FusionRecipe:
    """A recipe (or a preset's name) -> its canonical ``FusionRecipe``; a one-line error names the bad token.

    ``specs``: the built-in backbones, which parts are checked against.
    """
    text = PRESETS.get(text, text)
    if not text.startswith(PREFIX):
        raise BackboneUnavailable(f"bad fusion recipe {text!r}: it starts with {PREFIX!r}")
    body = text[len(PREFIX):]
    tokens = [t.strip() for t in body.split(";")]
    parts: dict[str, float] = {}
    for token in (t.strip() for t in tokens[0].split("+")):
        name, _, weight = token.partition("*")
        name = name.strip()
        if name not in specs and f"{_LITE}{name[4:]}" in specs and name.startswith("lite"):
            name = f"{_LITE}{name[4:]}"
        spec = specs.get(name)
        if spec is None or spec.family != "cnn" or is_recipe(name):
            known = ", ".join(n for n, s in specs.items() if s.family == "cnn" and not is_recipe(n))
            raise BackboneUnavailable(f"bad fusion recipe: unknown part {token!r} (CNN backbones: {known})")
        parts[name] = parts.get(name, 0.0) + (_number(weight, token, "weight") if weight else 1.0)
    flip, scales, logits = False, (1.0,), 0.0
    for token in tokens[1:]:
        key, _, value = token.partition("=")
        key = key.strip()
        if key == "flip" and not value:
            flip = True
        elif key == "scales" and value:
            found = {float(_fmt(_number(v, token, "scale"))) for v in value.split(",")}
            scales = tuple(sorted(found, key=lambda s: (s != 1.0, s)))  # 1 first, then ascending
        elif key == "logits":
            logits = _number(value, token, "weight") if value else 1.0
        else:
            raise BackboneUnavailable(f"bad fusion recipe: unknown option {token!r} (use flip, scales=1,0.707,… or logits[=W])")
    if logits and not any(n.startswith(_LITE) for n in parts):
        raise BackboneUnavailable("bad fusion recipe: 'logits' needs an EfficientNet-Lite part (its ImageNet classifier)")
    unit = min(parts.values())  # only ratios matter: the lightest part weighs 1
    return FusionRecipe(tuple(sorted((n, float(_fmt(w / unit))) for n, w in parts.items())), flip, scales,
                        float(_fmt(logits / unit)) if logits else 0.0)


def fuse(blocks: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """``(N, D_i)`` blocks -> ``(N, sum D_i)``: each L2-normalised and scaled by sqrt(w_i / sum w).

    The result has unit rows, and ``fuse(a) . fuse(b) = sum_i w_i cos(a_i, b_i) / sum w``.
    """
    total = float(sum(weights))
    return np.concatenate([l2_normalize(np.asarray(b, np.float32)) * np.float32(math.sqrt(w / total))
                           for b, w in zip(blocks, weights)], axis=1).astype(np.float32)


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``(N, S, S, 3)`` -> ``(N, size, size, 3)``, bilinear as the decoder resizes.

    Pillow on uint8 beats resizing float tensors in the graph (see docs/fusion.md),
    and it keeps each part's network the same as the part used alone.
    """
    if images.shape[1] == size:
        return images
    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in images])


@dataclass(frozen=True)
class View:
    """One network run of a fusion: a part at one input size."""

    part: str
    size: int
    network: Backbone  # a KerasNetwork: output [descriptor] or [descriptor, logits]
    descriptor_dim: int


class FusionBackbone(Backbone):
    """Embeds with every view of every part, then ``fuse``."""

    def __init__(self, recipe: FusionRecipe, views: list[View], logits_part: str | None, input_size: int,
                 pooling: str, gem_p: float):
        self.recipe, self.views, self.logits_part = recipe, views, logits_part
        self.name, self.input_size = recipe.name, input_size
        self.pooling, self.gem_p = pooling, gem_p
        self.dim = sum({v.part: v.descriptor_dim for v in views}.values()) + (LOGITS_DIM if recipe.logits else 0)
        self.device = views[0].network.device
        counts: dict[str, int] = {}
        for v in views:
            counts[v.network.runtime] = counts.get(v.network.runtime, 0) + 1
        self.runtime = " + ".join(f"{label} ×{n}" for label, n in counts.items())
        self.runtime_note = "; ".join(f"{v.part.replace(_LITE, 'lite')}@{v.size}: {v.network.runtime_note or v.network.runtime}"
                                      for v in views)

    def _part(self, images: np.ndarray, views: list[View]) -> np.ndarray:
        """Mean over scales and mirrors of one part's outputs (pooled descriptor, and logits if any)."""
        n, total = len(images), None
        for view in views:
            x = resize(images, view.size)
            if self.recipe.flip:
                x = np.concatenate([x, x[:, :, ::-1]])
            out = np.asarray(view.network.embed(x), np.float64)
            if self.recipe.flip:
                out = (out[:n] + out[n:]) / 2
            total = out if total is None else total + out
        return total / len(views)

    def embed(self, images: np.ndarray) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        blocks, weights, logits = [], [], None
        for name, weight in self.recipe.parts:
            views = [v for v in self.views if v.part == name]
            out = self._part(images, views)
            d = views[0].descriptor_dim
            blocks.append(out[:, :d])
            weights.append(weight)
            if name == self.logits_part and self.recipe.logits:
                logits = out[:, d:]
        if self.recipe.logits:
            blocks.append(logits)
            weights.append(self.recipe.logits)
        return fuse(blocks, weights)

    @property
    def feature_model(self):
        """Fine-tuning trains one network's feature map; a fusion has several."""
        raise BackboneUnavailable("a fusion cannot be fine-tuned (it is several networks): train a head on it "
                                  "(method 'head'), or fine-tune one of its parts")


Network = Callable[[str, int, bool], Backbone]  # (part name, input size, with logits) -> a network


def assemble(recipe: FusionRecipe, specs: Mapping[str, BackboneSpec], network: Network, pooling: str,
             gem_p: float) -> FusionBackbone:
    """A fusion from its recipe; ``network`` supplies each part at each size (Keras, or a runtime's)."""
    logits_part = recipe.logits_part(specs) if recipe.logits else None
    views = []
    for name, _ in recipe.parts:
        for size in recipe.sizes(specs[name].input_size):
            net = network(name, size, name == logits_part)
            views.append(View(name, size, net, int(getattr(net, "descriptor_dim", net.dim))))
    return FusionBackbone(recipe, views, logits_part, input_size(recipe, specs), pooling, gem_p)


def input_size(recipe: FusionRecipe, specs: Mapping[str, BackboneSpec]) -> int:
    """The decode size: the largest view, so no part is upsampled from fewer pixels than it uses."""
    return max(max(recipe.sizes(specs[n].input_size)) for n, _ in recipe.parts)


def cost_note(recipe: FusionRecipe) -> str:
    cost = recipe.cost()
    return f"≈ {cost:.1f}× lite1 per image (model time)" if cost is not None else "cost per image not measured"


def spec_for(text: str, specs: Mapping[str, BackboneSpec]) -> BackboneSpec:
    """The registry entry of a recipe: ready when all parts are; built with Keras.

    A ``Studio`` builds fusions itself (``service.models``) so that each part
    runs through its own checked runtime and shares the loaded part networks.
    """
    recipe = parse(text, specs)
    parts = [specs[n] for n, _ in recipe.parts]

    def build(pooling: str, gem_p: float, placement, input_size: int | None = None, weights: str | None = None,
              batch_size: int = 32) -> FusionBackbone:
        check_build(recipe, specs, input_size, weights)

        def network(name: str, size: int, logits: bool) -> Backbone:
            net = specs[name].build(pooling, gem_p, placement, input_size=size, batch_size=batch_size)
            return net.with_logits() if logits else net

        return assemble(recipe, specs, network, pooling, gem_p)

    def readiness() -> str | None:
        for spec in parts:
            why = spec.readiness()
            if why:
                return f"{spec.name}: {why}"
        return None

    licences = list(dict.fromkeys(s.licence for s in parts))
    sources = ", ".join(dict.fromkeys(s.source for s in parts))
    dim = sum(s.dim for s in parts) + (LOGITS_DIM if recipe.logits else 0)
    return BackboneSpec(recipe.name, "cnn", input_size(recipe, specs), dim, "; ".join(licences),
                        f"fusion of {sources}", build, readiness)


def check_build(recipe: FusionRecipe, specs: Mapping[str, BackboneSpec], size: int | None, weights: str | None) -> None:
    """What a fusion cannot take: its own weights file, or an input size other than its parts' own."""
    if weights not in (None, "imagenet"):
        raise BackboneUnavailable("a fusion uses its parts' packaged weights; a weights file is for one backbone")
    if size not in (None, input_size(recipe, specs)):
        raise BackboneUnavailable(f"a fusion runs each part at its own input size (decoded at "
                                  f"{input_size(recipe, specs)}); change the sizes with scales=… in its recipe")
