"""Insight: why two images match (exact heatmaps) and where the gallery lies (a 2-D map).

Why beside search and not in it: both reuse the search's prepared ranker
(its post-processing and neighbours) but answer a person's question, not a
query; neither changes any state.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import ExtractorConfig, SearchConfig
from ..decode import DecodeError, to_pixels
from .caches import Caches
from .models import Models
from .reports import CollectionRef, ServiceError
from .searching import Searcher


class Insight:
    def __init__(self, models: Models, searcher: Searcher, caches: Caches):
        self.models, self.searcher, self.caches = models, searcher, caches

    def _image(self, image, size: int | None) -> np.ndarray:
        try:
            return to_pixels(image, size, self.searcher.limits)
        except DecodeError as exc:
            raise ServiceError(f"cannot use the image: {exc}") from None

    def explain(self, query, result, ref: CollectionRef, cfg: ExtractorConfig, scfg: SearchConfig, display: int = 384):
        """Heatmaps of what drives the similarity of two images (see ``explain.py``).

        ``result`` is a member (name, path or sha256) or any image. Returns the
        explanation and the two images overlaid, at most ``display`` pixels a side.
        """
        from PIL import Image

        from ..explain import contributions, overlay

        cfg = self.models.resolve(cfg)
        if self.models.spec(cfg.backbone).family == "adapted":
            cfg = self.models.resolve(self.models.base_config(cfg.backbone))  # a trained head is not linear
        backbone = self.models.backbone(cfg)
        refusal = getattr(backbone, "explain_refusal", None)
        if refusal:
            raise ServiceError(refusal)
        if hasattr(backbone, "patch_tokens"):  # a ViT whose descriptor is the mean of its patch tokens
            maps_of, pooling, gem_p = backbone.patch_tokens, "mean", 0.0
        elif hasattr(backbone, "feature_maps"):
            maps_of, pooling, gem_p = backbone.feature_maps, cfg.pooling, cfg.gem_p
        else:
            raise ServiceError(f"{cfg.backbone} has no feature map to explain; choose a CNN backbone")
        if isinstance(result, str) and not Path(result).is_file():
            member = next((m for m in self.searcher.store.members(ref.id) if result in (m.name, m.path, m.sha256)), None)
            if member is None or not member.path:
                raise ServiceError(f"no image {result!r} in the gallery {ref.name!r}")
            result = member.path
        whitening = self.searcher.ranker(ref, cfg, scfg)[0].whitening if scfg.whiten != "none" else None
        maps = maps_of(np.stack([self._image(query, backbone.input_size), self._image(result, backbone.input_size)]))
        explanation = contributions(maps[0], maps[1], pooling, gem_p, whitening)
        scale = max(float(np.abs(explanation.query_map).max()), float(np.abs(explanation.result_map).max()), 1e-12)
        images = []
        for image, heat in ((query, explanation.query_map), (result, explanation.result_map)):
            pixels = self._image(image, None)
            h, w = pixels.shape[:2]
            if max(h, w) > display:
                f = display / max(h, w)
                pixels = np.asarray(Image.fromarray(pixels).resize((max(1, round(w * f)), max(1, round(h * f)))))
            images.append(overlay(pixels, heat, scale=scale))
        return explanation, images[0], images[1]

    def embedding_map(self, ref: CollectionRef, cfg: ExtractorConfig, scfg: SearchConfig, query=None):
        """2-D PCA of the collection's (post-processed) vectors, plus the query and its top k.

        Returns (coordinates (N, 2), members, query point or None, top-k rows).
        The projection is cached per gallery generation.
        """
        from ..explain import pca_2d

        cfg = self.models.resolve(cfg)
        ranker, gallery = self.searcher.ranker(ref, cfg, scfg)
        config_id = self.searcher.store.find_config(cfg)
        key = (ref.id, config_id, gallery.generation, scfg.whiten, scfg.rerank)
        cached = self.caches.maps.get(key)
        if cached is None:
            cached = pca_2d(ranker.space)
            self.caches.maps.put(key, cached)
        coords, mean, axes = cached
        point, rows = None, np.zeros(0, np.int64)
        if query is not None:
            vector, _, _ = self.searcher.embed_query(query, cfg)
            q = ranker.whitening.apply(vector[None]) if ranker.whitening is not None else vector[None]
            point = ((q - mean) @ axes)[0]
            rows = ranker.search(vector[None], scfg.k).indices[0]
        return coords, gallery.members, point, rows
