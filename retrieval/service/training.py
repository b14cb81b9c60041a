"""Training: adapt a model to a labelled gallery and register it as a backbone.

Why figures on held-out images: a model trained on a gallery and scored on
the same images flatters itself. A stratified share of the labelled images
never reaches training; they are the queries and the gallery of the
before/after figures, computed with the same search settings.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import asdict

import numpy as np

from .. import adapt as A
from ..adapt import AdaptConfig, BatchCallback, EpochCallback
from ..config import ExtractorConfig, SearchConfig
from ..decode import DecodeError, decode
from ..evaluation import EvalReport, exact_duplicate_groups, leave_one_out
from ..extract import ordered_map
from ..ranking import build_ranker
from .indexing import Indexer
from .models import Models
from .reports import AdaptReport, CollectionRef, ServiceError
from .searching import Searcher

# What a head trains on: the cached vectors of any network backbone (a built-in CNN,
# a KerasHub transformer, the user's own model). Fine-tuning unfreezes the top blocks
# of a built-in CNN, so it starts from one of those only.
HEAD_BASES = ("cnn", "hub", "file")


def _base_refusal(name: str, family: str) -> str:
    if family in HEAD_BASES:  # fine-tuning something other than a built-in CNN
        return (f"fine-tuning unfreezes a built-in CNN's top blocks; {name} is not one ({family}): train a 'head' "
                "on its cached vectors, or fine-tune an EfficientNet-Lite")
    return f"adapt starts from a network backbone; {name} is {family}: choose a CNN, a KerasHub model or your own"


class Trainer:
    def __init__(self, models: Models, searcher: Searcher, indexer: Indexer):
        self.models, self.searcher, self.indexer = models, searcher, indexer

    def _pixels(self, members, size: int) -> np.ndarray:
        """Decode members' files at ``size`` (for the image-training methods)."""
        def work(m):
            try:
                return decode(m.path, size, self.indexer.limits).pixels
            except DecodeError as exc:
                raise ServiceError(f"cannot read {m.name} for training: {exc}") from None

        workers = self.indexer.workers
        return np.stack(list(ordered_map(work, members, workers, prefetch=4 * workers)))

    def adapt(self, ref: CollectionRef, acfg: AdaptConfig, base: ExtractorConfig, scfg: SearchConfig,
              on_epoch: EpochCallback | None = None, cancel: threading.Event | None = None, name: str | None = None,
              on_batch: BatchCallback | None = None) -> AdaptReport:
        started = time.perf_counter()
        base = self.models.resolve(base)
        if name is not None and self.models.exists(name):
            raise ServiceError(f"a model named {name!r} exists already")
        family = self.models.spec(base.backbone).family
        if family not in HEAD_BASES or (acfg.method == "finetune" and family != "cnn"):
            raise ServiceError(_base_refusal(base.backbone, family))
        _, gallery = self.searcher.gallery(ref, base)
        labels = gallery.labels
        rest, held = A.split_by_image(labels, acfg.test_fraction, acfg.seed)
        fit_rows, val_rows = (rest[i] for i in A.split_by_image([labels[r] for r in rest], acfg.val_fraction, acfg.seed))
        classes = sorted({labels[r] for r in fit_rows})
        if len(classes) < 2 or len(held) < 2 or len(val_rows) < 1:
            raise ServiceError(f"the gallery {ref.name!r} needs at least 2 labels with 3 or more images each to "
                               "train and to measure the result on images kept out of training")
        code = {c: i for i, c in enumerate(classes)}
        # validation and test rows whose label training never saw cannot be learned; they stay as test queries
        val_rows = np.array([r for r in val_rows if labels[r] in code], np.int64)
        y = np.array([code.get(labels[r], -1) for r in range(len(labels))], np.int64)
        test_labels = [labels[r] for r in held]

        def figures(vectors: np.ndarray) -> EvalReport:
            ranker = build_ranker(vectors, scfg.metric, scfg.rerank, scfg.whiten)
            return leave_one_out(test_labels, lambda rows, ex: ranker.full_order(vectors[rows], ex),
                                 exact_duplicate_groups(vectors))

        before = figures(gallery.vectors[held])
        tmp_dir = self.models.store.path.parent / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        if acfg.method == "head":
            weights, log = A.train_head(gallery.vectors[fit_rows], y[fit_rows], len(classes), acfg,
                                        val=(gallery.vectors[val_rows], y[val_rows]), on_epoch=on_epoch, cancel=cancel,
                                        on_batch=on_batch)
            after_vectors = A.apply_head(weights, gallery.vectors[held])
            params, input_size, dim = A.pack(weights), base.input_size, A.head_dim(weights)
        else:
            from ..device import import_keras

            keras = import_keras()
            size = acfg.scratch_size if acfg.method == "scratch" else base.input_size
            if acfg.method == "scratch":
                embedder = A.build_scratch(keras, acfg)
            else:
                embedder = A.build_finetune(keras, self.models.backbone(base).feature_model, acfg, base.pooling,
                                            base.gem_p)
            members = gallery.members
            train_px = self._pixels([members[r] for r in fit_rows], size)
            val_px = self._pixels([members[r] for r in val_rows], size)
            log = A.train_images(embedder, train_px, y[fit_rows], len(classes), acfg, (val_px, y[val_rows]),
                                 on_epoch, cancel, on_batch)
            test_px = self._pixels([members[r] for r in held], size)
            after_vectors = np.asarray(embedder.predict(test_px.astype(np.float32), batch_size=64, verbose=0))
            params, input_size = A.save_weights(embedder, tmp_dir), size
            dim = acfg.dim if acfg.method == "finetune" else 512
        after = figures(after_vectors)
        name = name or f"{acfg.method}-{base.backbone.replace('efficientnet-', '')}-{secrets.token_hex(3)}"
        report = AdaptReport(name, acfg.method, ref.name, before.map, after.map, before.p_at[1], after.p_at[1],
                             len(fit_rows), len(val_rows), before.queries, time.perf_counter() - started, log.to_json(),
                             acfg.to_json(), base.key)
        self.models.add_trained({
            "name": name, "method": acfg.method, "base": json.dumps(asdict(base)), "collection": ref.name,
            "input_size": int(input_size), "dim": int(dim), "params": params,
            "settings": json.dumps(acfg.to_json()), "figures": json.dumps(report.to_json())})
        self.indexer.ensure(ref, ExtractorConfig(backbone=name))  # ready for search and compare at once
        return report
