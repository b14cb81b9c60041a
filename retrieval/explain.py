"""Why two images match: the similarity split exactly over feature-map positions.

Derivation. Let ``F`` (positions s, channels c) be an image's last feature
map, all entries >= 0 (ReLU6). Every pooling here gives each channel a value
``v_c`` that can be written as a share-weighted sum over positions,
``v_c = sum_s a[s, c] * v_c`` with ``sum_s a[s, c] = 1``:

- GeM with exponent p: ``v_c = (mean_s F[s,c]^p)^(1/p)`` and
  ``a[s, c] = F[s,c]^p / sum_s' F[s',c]^p``, each position's share of the
  channel's p-th power mass. GAP is p = 1 (``a = F / sum F``).
- MAC (p -> infinity): the whole channel comes from its maximum,
  ``a[s, c] = 1 / (number of maxima)`` at the maxima and 0 elsewhere.

The descriptor is ``x = v / |v|``, then the post-processing ``t``: none,
centring or PCA-whitening, all of the form ``t(x) = L (x - m) / n`` with ``L``
linear (identity or the whitening projection), ``m`` the gallery mean (0 for
none) and ``n = |L (x - m)|``. Since ``x - m = sum_s (a[s] * x - m / S)`` over
the S positions, ``t(x) = sum_s L (a[s] * x - m / S) / n``, and the cosine
score ``t(x_q) . t(x_r)`` splits exactly into per-position terms:

    query map:  c_q(s) = L (a_q[s] * x_q - m / S) / n_q  .  t(x_r)
    result map: c_r(s) = L (a_r[s] * x_r - m / S) / n_r  .  t(x_q)

A vision transformer's patch-mean descriptor (DINOv2 ``…-patchmean``) is the
plain mean of its patch tokens, which may be negative: ``v = sum_s F[s] / S``,
so ``a[s] * x = F[s] / (S |v|)`` exactly and the same split holds (``mean``).
GAP is the same mean, so it takes this signed split too (a user's model may
end in a map before its activation); for non-negative maps the two agree.
A CLS token or an attention-pooling head mixes the patches non-linearly, so
those descriptors are not split (the backbone says why).

Each map sums to the score (tested to float tolerance). Positive terms are
regions that pull the two images together, negative ones push them apart.
Re-ranking (aQE, DBA) mixes in other gallery images, so the maps explain the
cosine of the two images themselves, before re-ranking; a trained head is
non-linear, so adapted models are explained through their base CNN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .pooling import DEFAULT_GEM_P, l2_normalize, pool
from .whitening import Whitening


@dataclass(frozen=True)
class Explanation:
    query_map: np.ndarray  # (h, w) contributions; sums to score
    result_map: np.ndarray  # (h, w)
    score: float  # cosine of the two post-processed descriptors
    pooling: str


def position_shares(fmap: np.ndarray, kind: str, p: float = DEFAULT_GEM_P) -> np.ndarray:
    """``(h, w, C)`` map -> ``(h*w, C)`` shares of each channel's pooled value; columns sum to 1."""
    f = np.asarray(fmap, np.float64).reshape(-1, fmap.shape[-1])
    f = np.maximum(f, 0.0)
    if kind == "mac":
        top = f == f.max(axis=0, keepdims=True)
        return top / top.sum(axis=0, keepdims=True)
    power = 1.0 if kind == "gap" else float(p)
    scaled = f / np.maximum(f.max(axis=0, keepdims=True), 1e-30)  # as pooling.gem: finite for large p
    mass = scaled ** power
    total = mass.sum(axis=0, keepdims=True)
    uniform = np.full_like(mass, 1.0 / len(mass))
    return np.where(total > 0, mass / np.where(total > 0, total, 1.0), uniform)


def _parts(fmap: np.ndarray, kind: str, p: float, whitening: Whitening | None):
    """Per-position pieces of t(x), and t(x) itself."""
    if kind in ("mean", "gap"):  # linear pooling: each position's own term, signed maps included
        f = np.asarray(fmap, np.float64).reshape(-1, fmap.shape[-1])
        v = f.mean(axis=0)
        pieces = f / (len(f) * max(float(np.linalg.norm(v)), 1e-12))  # (S, C): sums over s to x = v / |v|
    else:
        x = l2_normalize(pool(np.asarray(fmap, np.float32)[None], kind, p))[0].astype(np.float64)
        pieces = position_shares(fmap, kind, p) * x  # (S, C): sums over s to x
    if whitening is not None:
        pieces = pieces - np.asarray(whitening.mean, np.float64) / len(pieces)
        if whitening.projection is not None:
            pieces = pieces @ np.asarray(whitening.projection, np.float64)
    total = pieces.sum(axis=0)
    norm = max(float(np.linalg.norm(total)), 1e-12)
    return pieces / norm, total / norm


def contributions(fmap_q: np.ndarray, fmap_r: np.ndarray, kind: str = "gem", p: float = DEFAULT_GEM_P,
                  whitening: Whitening | None = None) -> Explanation:
    """Exact per-position split of the cosine score between two feature maps.

    ``kind``: the pooling that made the descriptors (gem, gap, mac), or
    ``mean`` for signed token maps pooled by their plain mean.
    """
    pieces_q, t_q = _parts(fmap_q, kind, p, whitening)
    pieces_r, t_r = _parts(fmap_r, kind, p, whitening)
    score = float(t_q @ t_r)
    return Explanation((pieces_q @ t_r).reshape(fmap_q.shape[:2]), (pieces_r @ t_q).reshape(fmap_r.shape[:2]),
                       score, kind)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.55, scale: float | None = None) -> np.ndarray:
    """The image with warm colours where a region adds to the score and blue where it subtracts.

    ``scale`` (the largest absolute contribution to map to full colour) is
    shared by the two maps of one explanation so their colours compare.
    """
    image = np.asarray(image, np.uint8)
    h, w = image.shape[:2]
    scale = scale or float(np.abs(heat).max()) or 1.0
    big = np.asarray(Image.fromarray(np.asarray(heat, np.float32)).resize((w, h), Image.BILINEAR))
    t = np.clip(big / scale, -1.0, 1.0)
    t = (np.sign(t) * np.sqrt(np.abs(t)))[..., None]  # lift the mid-range so moderate regions show
    warm = np.array([255.0, 60.0, 0.0]) * (0.4 + 0.6 * t) + np.array([0.0, 195.0, 0.0]) * t * t
    cool = np.array([30.0, 90.0, 255.0])
    colour = np.where(t >= 0, warm, cool)
    weight = alpha * np.abs(t)
    return np.clip(image * (1 - weight) + colour * weight, 0, 255).astype(np.uint8)


def pca_2d(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The two main axes of a gallery: (coordinates (N, 2), mean, axes (D, 2)).

    PCA rather than t-SNE or UMAP: it is exact, deterministic up to sign,
    instant for 100k vectors, and a new query projects onto the same axes.
    """
    x = np.asarray(vectors, np.float64)
    mean = x.mean(axis=0)
    xc = x - mean
    if len(x) < 2:
        return np.zeros((len(x), 2)), mean, np.zeros((x.shape[1], 2))
    # the top-2 right singular vectors, via the (D x D) or (N x N) Gram matrix, whichever is smaller
    if x.shape[0] < x.shape[1]:
        vals, vecs = np.linalg.eigh(xc @ xc.T)
        top = vecs[:, ::-1][:, :2]
        axes = xc.T @ top / np.sqrt(np.maximum(vals[::-1][:2], 1e-12))
    else:
        vals, vecs = np.linalg.eigh(xc.T @ xc)
        axes = vecs[:, ::-1][:, :2]
    axes = axes * np.where(axes.sum(axis=0) < 0, -1.0, 1.0)  # a fixed sign, so maps do not flip between runs
    return xc @ axes, mean, axes
