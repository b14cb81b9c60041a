"""The two choices a user makes: how images become vectors, and how to rank.

Why frozen dataclasses: a configuration is a value. Its ``key`` identifies
the embeddings it produced in the store, so two equal configurations share
cached vectors and a changed one never reuses stale ones.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from . import distances, ranking, whitening
from .pooling import DEFAULT_GEM_P

if TYPE_CHECKING:
    from .backbones.base import BackboneSpec

# Chosen by measurement on held-out queries: Fashion-MNIST (docs/fashion_full.md)
# and two real-photo sets (benchmarks/defaults.py, docs/defaults.md); see README
# "Defaults, and why".
DEFAULT_BACKBONE = "efficientnet-lite1"
DEFAULT_POOLING = "gem"
DEFAULT_METRIC = "cosine"
DEFAULT_RERANK = "dba"
DEFAULT_WHITEN = "center"

# The choices, read from the registries that implement them: a new metric,
# re-ranking or post-processing is one entry there and shows up here, in the
# CLI and in the app.
METRICS = tuple(distances.METRICS)
RERANKS = tuple(ranking.RERANKS)
WHITENINGS = tuple(whitening.FITTERS)
# "auto": the gallery's Milvus index if it was published to one, else the IVF
# index from ann.AUTO_THRESHOLD images on, else exact.
INDEXES = ("auto", "exact", "ivf", "milvus")
# What a gallery served from Milvus can rank with: whatever needs only a
# query's candidates. DBA, the graph re-rankers, centring and PCA-whitening
# are learned on the whole gallery, which such a gallery never loads.
MILVUS_RERANKS = ("none", "qe")
MILVUS_WHITENINGS = ("none",)
MILVUS_METRICS = tuple(m for m in METRICS if not distances.METRICS[m].whitened)


@dataclass(frozen=True)
class ExtractorConfig:
    backbone: str = DEFAULT_BACKBONE
    pooling: str = DEFAULT_POOLING
    gem_p: float = DEFAULT_GEM_P
    input_size: int | None = None  # None: the backbone's native resolution
    weights: str = "imagenet"  # or a path to a local weights file; a user file model: its "sha256:…"

    def resolved(self, spec: BackboneSpec) -> ExtractorConfig:
        """Fill in what the backbone implies, so equal setups compare equal.

        The spec comes from whoever knows the backbones (``backbones.resolve``
        for the built-in ones, a ``Studio``'s model registry for trained ones):
        a configuration is a plain value and imports no model code.
        """
        cfg = replace(self, input_size=self.input_size or spec.input_size)
        if spec.family != "cnn":  # hand-crafted, adapted or a user's file: the model fixes size and weights
            cfg = replace(cfg, input_size=spec.input_size, weights=spec.weights or "none")
        if not spec.pools:  # and pooling, unless it ends in a feature map (``BackboneSpec.poolable``)
            cfg = replace(cfg, pooling="none", gem_p=0.0)
        elif cfg.pooling != "gem":
            cfg = replace(cfg, gem_p=0.0)
        return cfg

    @property
    def weights_id(self) -> str:
        if self.weights in ("imagenet", "none") or self.weights.startswith("sha256:"):
            return self.weights  # names, or a user file's content id: no file to read
        digest = hashlib.sha256(Path(self.weights).read_bytes()).hexdigest()[:16]
        return f"file:{digest}"

    @property
    def key(self) -> str:
        pool = f"gem{self.gem_p:g}" if self.pooling == "gem" else self.pooling
        return f"{self.backbone}|{self.weights_id}|{self.input_size}|{pool}"

    @property
    def label(self) -> str:
        """Short, human: what a results table or a plot legend shows."""
        pool = f"GeM p={self.gem_p:g}" if self.pooling == "gem" else self.pooling.upper()
        return self.backbone if self.pooling == "none" else f"{self.backbone} · {pool}"


@dataclass(frozen=True)
class SearchConfig:
    metric: str = DEFAULT_METRIC  # one of distances.METRICS
    k: int = 10
    rerank: str = DEFAULT_RERANK  # one of ranking.RERANKS
    whiten: str = DEFAULT_WHITEN  # post-processing: one of whitening.FITTERS
    index: str = "auto"  # one of INDEXES

    def __post_init__(self):
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}: choose one of {', '.join(METRICS)}")
        if self.rerank not in RERANKS:
            raise ValueError(f"unknown re-ranking {self.rerank!r}: choose one of {', '.join(RERANKS)}")
        if self.whiten not in WHITENINGS:
            raise ValueError(f"unknown post-processing {self.whiten!r}: choose one of {', '.join(WHITENINGS)}")
        if self.index not in INDEXES:
            raise ValueError(f"unknown index {self.index!r}: choose one of {', '.join(INDEXES)}")
        if self.k < 1:
            raise ValueError("k must be at least 1")

    @classmethod
    def for_milvus(cls, **chosen) -> SearchConfig:
        """The defaults for a Milvus-served gallery: aQE on cosine, nothing learned on the gallery."""
        return cls(**{"rerank": "qe", "whiten": "none", **chosen})

    def milvus_refusal(self) -> str | None:
        """Why a Milvus-served gallery cannot rank this way (one line), or None."""
        if self.rerank not in MILVUS_RERANKS:
            return (f"re-ranking {self.rerank!r} needs the whole gallery in memory; a Milvus-served gallery "
                    f"ranks with {' or '.join(MILVUS_RERANKS)} (or search it with index 'exact')")
        if self.whiten not in MILVUS_WHITENINGS:
            return (f"post-processing {self.whiten!r} is learned on the whole gallery; a Milvus-served gallery "
                    f"uses 'none' (or search it with index 'exact')")
        if self.metric not in MILVUS_METRICS:
            return (f"the {self.metric} metric needs a covariance learned on the whole gallery; choose "
                    f"{', '.join(MILVUS_METRICS)} (or search it with index 'exact')")
        return None
