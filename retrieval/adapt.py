"""Adapt: train a retrieval model for one labelled gallery.

Why: ImageNet features rank Fashion-MNIST at mAP ~0.6; a few minutes of
training on the gallery's own labels lifts that a lot. Three methods, from
cheapest to dearest:

- ``head``: an ensemble of 5 projection heads (Dense-ReLU-Dropout-Dense,
  L2-normalised) on the frozen backbone's *cached* embeddings. No image is
  decoded and no CNN runs, so 3,000 images train in under a minute on 2
  cores and 54,000 in under two (``docs/fewshot.md``, ``docs/adapt.md``).
- ``finetune``: the backbone's top blocks are unfrozen (BatchNorm stays in
  inference mode), with GeM pooling and a projection on top, trained on
  augmented images (random crop/zoom, flip, rotation, colour jitter).
- ``scratch``: the seed's own CNN (Conv 32-64-128 with max-pooling, Dense
  512, L2 weight decay) from random weights: the baseline that shows what
  pretraining is worth.

All three use one objective: CosFace (Wang et al., 2018), a normalised
softmax with an additive margin. The class weights act as learned proxies on
the unit sphere and the margin pulls each class tighter than plain
classification would, which is what ranking by cosine rewards; unlike
triplet or contrastive losses it needs no pair mining, so it is stable at
small batch sizes on a CPU. AdamW gives the weight decay, and training stops
early when the validation loss has not improved for ``patience`` epochs,
keeping the best epoch's weights.

Honest evaluation is the caller's job, made easy by ``split_by_image``:
the test images never reach training, validation included.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import numpy as np

# The trained models' definitions live with the backbones that serve them;
# they are importable from here too, beside the training that makes them.
from .backbones.adapted import (
    METHODS,
    AdaptConfig,
    apply_head,
    build_finetune,
    build_scratch,
    head_dim,
    load_weights,
    pack,
    save_weights,
    unpack,
)
from .device import import_keras

__all__ = ["METHODS", "AdaptConfig", "BatchCallback", "Cancelled", "EpochCallback", "TrainLog", "apply_head",
           "build_finetune", "build_scratch", "head_dim", "load_weights", "pack", "save_weights", "split_by_image", "train_head",
           "train_images", "unpack"]

EpochCallback = Callable[[int, int, dict], None]  # (epoch done, epochs planned, logs)
BatchCallback = Callable[[int, int, int], None]  # (epoch running, batch done, batches per epoch)


class Cancelled(RuntimeError):
    """The user stopped a long operation (training, an evaluation, indexing) between two steps.

    Training saves nothing when cancelled; indexing keeps the batches already committed.
    """


@dataclass
class TrainLog:
    history: list[dict] = field(default_factory=list)  # one dict per epoch: loss, val_loss, accuracies
    best_epoch: int = 0
    stopped: str = "max-epochs"  # or "early-stopped"
    seconds: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


# -- splits -------------------------------------------------------------------
def split_by_image(labels: list[str | None], fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (rest, held-out) row indices over labelled rows.

    Each label keeps at least one row on the rest side and, when it has 3 or
    more rows, at least 2 held out, so held-out queries always have an answer.
    Unlabelled rows are in neither.
    """
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        if label is not None:
            by_label.setdefault(label, []).append(i)
    rest, held = [], []
    for label in sorted(by_label):
        rows = np.array(by_label[label])
        rng.shuffle(rows)
        n_held = int(round(len(rows) * fraction))
        if len(rows) >= 3:
            n_held = min(max(n_held, 2), len(rows) - 1)
        else:
            n_held = 0
        held += rows[:n_held].tolist()
        rest += rows[n_held:].tolist()
    return np.sort(np.array(rest, np.int64)), np.sort(np.array(held, np.int64))


def _cosface_parts(keras, n_classes: int, cfg: AdaptConfig, name: str = "proxies"):
    class Proxies(keras.layers.Layer):
        """Scaled cosine between an embedding and one learned unit vector per class."""

        def __init__(self, classes: int, scale: float, **kwargs):
            super().__init__(**kwargs)
            self.classes, self.scale = classes, scale

        def build(self, shape):
            self.w = self.add_weight(shape=(shape[-1], self.classes), initializer="glorot_uniform", name="proxies")

        def call(self, z):
            return self.scale * keras.ops.matmul(z, keras.ops.normalize(self.w, axis=0))

    class CosFace(keras.losses.Loss):
        """Cross-entropy on scaled cosines, the true class's cosine lowered by the margin."""

        def __init__(self, margin: float, scale: float, classes: int):
            super().__init__(name="cosface")
            self.shift, self.classes = margin * scale, classes

        def call(self, y_true, logits):
            onehot = keras.ops.one_hot(keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32"), self.classes)
            return keras.losses.categorical_crossentropy(onehot, logits - self.shift * onehot, from_logits=True,
                                                         label_smoothing=0.1)

    return Proxies(n_classes, cfg.scale, name=name), CosFace(cfg.margin, cfg.scale, n_classes)


def _fit(keras, model, train, val, cfg: AdaptConfig, on_epoch: EpochCallback | None,
         cancel: threading.Event | None, on_batch: BatchCallback | None = None,
         early_stopping: bool = True) -> TrainLog:
    """model.fit with early stopping (or the whole schedule), per-epoch reports and cancellation between batches."""
    log = TrainLog()
    started = time.perf_counter()

    steps = -(-len(train[0]) // cfg.effective_batch)

    class Watch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if cancel is not None and cancel.is_set():
                self.model.stop_training = True
            if on_batch is not None:
                on_batch(len(log.history) + 1, batch + 1, steps)

        def on_epoch_end(self, epoch, logs=None):
            entry = {"epoch": epoch + 1, **{k: round(float(v), 5) for k, v in (logs or {}).items()}}
            log.history.append(entry)
            if on_epoch is not None:
                on_epoch(epoch + 1, cfg.epochs, entry)

    callbacks = [Watch()]
    if early_stopping:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience,
                                                       restore_best_weights=True))
    model.fit(*train, validation_data=val, epochs=cfg.epochs, batch_size=cfg.effective_batch, verbose=0,
              shuffle=True, callbacks=callbacks)
    if cancel is not None and cancel.is_set():
        raise Cancelled("training cancelled")
    log.seconds = round(time.perf_counter() - started, 2)
    losses = [h.get("val_loss", np.inf) for h in log.history]
    log.best_epoch = (int(np.argmin(losses)) + 1 if early_stopping else len(log.history)) if losses else 0
    log.stopped = "early-stopped" if len(log.history) < cfg.epochs else "max-epochs"
    return log


# -- (a) the head on cached embeddings ------------------------------------------
def _ensemble_loss(keras, loss):
    """The CosFace loss of every member, averaged: logits are (batch, heads, classes)."""
    class EnsembleLoss(keras.losses.Loss):
        def __init__(self):
            super().__init__(name="cosface_ensemble")

        def call(self, y_true, logits):
            heads = keras.ops.shape(logits)[1]
            y = keras.ops.repeat(keras.ops.reshape(y_true, (-1, 1)), heads, axis=1)
            per = loss.call(keras.ops.reshape(y, (-1,)), keras.ops.reshape(logits, (-1, loss.classes)))
            return keras.ops.mean(keras.ops.reshape(per, (-1, heads)), axis=1)

    return EnsembleLoss()


HEAD_MIN_STEPS_PER_EPOCH = 40
HEAD_MAX_STEPS = 1500


def _head_schedule(cfg: AdaptConfig, n: int) -> AdaptConfig:
    """The batch size and epochs the head runs for ``n`` training rows (see ``train_head``)."""
    batch = cfg.batch_size or int(np.clip(n // HEAD_MIN_STEPS_PER_EPOCH, 32, 256))
    steps_per_epoch = -(-n // batch)
    epochs = max(1, min(cfg.epochs, HEAD_MAX_STEPS // steps_per_epoch))
    return replace(cfg, batch_size=batch, epochs=epochs)


def train_head(x: np.ndarray, y: np.ndarray, n_classes: int, cfg: AdaptConfig = AdaptConfig(),
               val: tuple[np.ndarray, np.ndarray] | None = None, on_epoch: EpochCallback | None = None,
               cancel: threading.Event | None = None,
               on_batch: BatchCallback | None = None) -> tuple[dict[str, np.ndarray], TrainLog]:
    """Fit the head; returns its weights as plain arrays (applied by ``apply_head``).

    An ensemble of ``cfg.heads`` MLPs (Dense-ReLU-Dropout-Dense, normalised,
    each with its own proxies) is trained as one model on the same batches,
    so five members cost about two single heads, not five. The members
    differ by initialisation and dropout; averaging their cosines ranks
    better than any one of them when labels are few (Fashion-MNIST, 300 per
    class: 0.82 -> 0.83 mAP, ``docs/fewshot.md``).

    The learning rate decays along a cosine and training runs the whole
    schedule: with a few hundred labels the validation loss bottoms out
    after ~6 epochs, when held-out mAP is still 0.03 short of where it ends,
    so early stopping on it stops too soon. Validation is still measured and
    reported every epoch. The schedule is sized in steps, not only epochs:
    small sets get smaller batches (at least ``HEAD_MIN_STEPS_PER_EPOCH``
    steps an epoch, so 3,000 images get 1,200 updates in 30 epochs), and
    large ones fewer epochs (at most ``HEAD_MAX_STEPS`` updates, so 54,000
    images train in about 2 minutes instead of 12).
    """
    keras = import_keras()
    keras.utils.set_random_seed(cfg.seed)
    x = np.asarray(x, np.float32)
    mean = x.mean(axis=0)
    if val is None:
        fit_rows, val_rows = split_by_image([str(v) for v in y], cfg.val_fraction, cfg.seed)
        val = (x[val_rows], y[val_rows])
        x, y = x[fit_rows], y[fit_rows]
    cfg = _head_schedule(cfg, len(x))
    inputs = keras.Input((x.shape[1],))
    proxies, loss = [], None
    for m in range(cfg.heads):
        h = keras.layers.Dense(cfg.hidden, activation="relu", name=f"hidden{m}")(inputs)
        h = keras.layers.Dropout(cfg.dropout)(h)
        z = keras.layers.UnitNormalization()(keras.layers.Dense(cfg.dim, name=f"project{m}")(h))
        layer, loss = _cosface_parts(keras, n_classes, cfg, f"proxies{m}")
        proxies.append(layer(z))
    logits = keras.ops.stack(proxies, axis=1) if cfg.heads > 1 else keras.layers.Reshape((1, n_classes))(proxies[0])
    model = keras.Model(inputs, logits)
    steps = cfg.epochs * -(-len(x) // cfg.effective_batch)
    schedule = keras.optimizers.schedules.CosineDecay(cfg.effective_lr, steps, alpha=0.01)
    accuracy = keras.metrics.MeanMetricWrapper(
        lambda t, p: keras.metrics.sparse_categorical_accuracy(t, keras.ops.mean(p, axis=1)), name="accuracy")
    model.compile(keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay), _ensemble_loss(keras, loss),
                  metrics=[accuracy])
    log = _fit(keras, model, (x - mean, y), (val[0] - mean, val[1]), cfg, on_epoch, cancel, on_batch,
               early_stopping=False)
    weights = {"mean": mean}
    for key, layer, attr in (("w1", "hidden", "kernel"), ("b1", "hidden", "bias"), ("w2", "project", "kernel"),
                             ("b2", "project", "bias")):
        weights[key] = np.stack([np.asarray(getattr(model.get_layer(f"{layer}{m}"), attr)) for m in range(cfg.heads)])
    if cfg.heads == 1:  # stored as the first release stored its single head
        weights.update({k: weights[k][0] for k in ("w1", "b1", "w2", "b2")})
    return {k: np.asarray(v, np.float32) for k, v in weights.items()}, log


# -- (b), (c) image models ---------------------------------------------------------
def _augmentation(keras, size: int, seed: int):
    """Random crop (zoom in up to 15 %), flip, small rotation and colour jitter."""
    return keras.Sequential([
        keras.layers.RandomZoom((-0.15, 0.0), fill_mode="reflect", seed=seed),
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomRotation(0.04, fill_mode="reflect", seed=seed),
        keras.layers.RandomBrightness(0.15, value_range=(0, 255), seed=seed),
        keras.layers.RandomContrast(0.15, seed=seed),
    ], name="augment")


def train_images(embedder, images: np.ndarray, y: np.ndarray, n_classes: int, cfg: AdaptConfig,
                 val: tuple[np.ndarray, np.ndarray], on_epoch: EpochCallback | None = None,
                 cancel: threading.Event | None = None, on_batch: BatchCallback | None = None) -> TrainLog:
    """Train an image -> unit-vector model (scratch or fine-tune) with augmentation and CosFace."""
    keras = import_keras()
    keras.utils.set_random_seed(cfg.seed)
    size = embedder.input_shape[1]
    inputs = keras.Input((size, size, 3))
    proxies, loss = _cosface_parts(keras, n_classes, cfg)
    model = keras.Model(inputs, proxies(embedder(_augmentation(keras, size, cfg.seed)(inputs))))
    model.compile(keras.optimizers.AdamW(cfg.effective_lr, weight_decay=cfg.weight_decay), loss, metrics=["accuracy"])
    return _fit(keras, model, (np.asarray(images, np.float32), y), (np.asarray(val[0], np.float32), val[1]),
                cfg, on_epoch, cancel, on_batch)
