"""The backbones one ``Studio`` can use, and the networks it has loaded.

Why per Studio: a model trained with ``adapt``, or registered from the
user's own file (``user_models``), belongs to the database that stores it.
The built-in registry (``retrieval.backbones.REGISTRY``) is read-only; each
Studio adds the models of its own database, and looks a name up in the
database when another Studio or process added it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import replace
from pathlib import Path

from ..backbones import REGISTRY, SINGLE, Backbone, BackboneSpec, BackboneUnavailable, fusion, get_spec, hub
from ..backbones.adapted import spec_for
from ..backbones.user_options import UserModelOptions
from ..config import ExtractorConfig
from ..runtime import RuntimeUnavailable, option
from ..store import Store
from .caches import Caches
from .reports import ServiceError
from .user_models import UserModels

CNN_FAMILIES = ("cnn", "adapted", "file", "hub")  # backbones that run a network and so have a device


def option_checked(name: str) -> str:
    """A runtime name as the user gave it, or a ServiceError listing the choices."""
    if name == "auto":
        return name
    try:
        return option(name).name
    except RuntimeUnavailable as exc:
        raise ServiceError(str(exc)) from None


class Models:
    def __init__(self, store: Store | None, caches: Caches, device: str = "auto", batch_size: int = 32,
                 runtime: str = "auto"):
        """``store`` None: the built-in models only (a distributed worker, which never sees the database)."""
        self.store, self.caches, self.device, self.batch_size = store, caches, device, batch_size
        self.runtime = option_checked(runtime)
        self._trained: dict[str, BackboneSpec] = {}
        self._loaded: dict[tuple, Backbone] = {}
        self._placements: dict[str, object] = {}
        self._lock = threading.RLock()
        for row in store.adapted() if store is not None else ():
            self._register(row)
        self.user = UserModels(store, store.path.parent) if store is not None else None

    # -- names --------------------------------------------------------------
    def spec(self, name: str) -> BackboneSpec:
        if name in REGISTRY or fusion.is_recipe(name):
            return get_spec(name)
        with self._lock:
            if name in self._trained:
                return self._trained[name]
            if self.store is None:
                raise BackboneUnavailable(f"unknown model {name!r}; known: {', '.join(REGISTRY)}")
            # brought as a file, or trained, here or by another Studio on this database?
            found = self.user.find(name)
            # a network loaded from another file (or options) under this name is never served again
            self._loaded = {k: v for k, v in self._loaded.items()
                            if k[0] != name or (found is not None and k[1] == found.weights)}
            if found is not None:
                return found
            rows = self.store.adapted(name)
            if not rows:
                known = [*REGISTRY, *self._trained, *self.user.specs]
                raise BackboneUnavailable(f"unknown model {name!r}; known: {', '.join(known)}")
            self._register(rows[0])
            return self._trained[name]

    def resolve(self, cfg: ExtractorConfig) -> ExtractorConfig:
        """Everything the backbone implies filled in; a fusion takes its recipe's canonical name.

        A file model's configuration, once resolved, names its file's content
        (``sha256:…``): resolving it again after the model was replaced is
        refused, so one search never ranks one file's gallery vectors against
        another file's query vector.
        """
        spec = self.spec(cfg.backbone)
        resolved = replace(cfg, backbone=spec.name).resolved(spec)
        if spec.family == "file" and str(cfg.weights).startswith("sha256:") and cfg.weights != resolved.weights:
            raise ServiceError(f"the model {cfg.backbone!r} was replaced while this ran: try again")
        return resolved

    def listing(self) -> list[dict]:
        """Every backbone, and for CNNs what ran each configuration used so far, and why."""
        from ..runtime.choose import remembered

        chosen = remembered()
        out = []
        with self._lock:  # as the database has them now: another Studio may have replaced or removed some
            users = ([(row["name"], self.user.specs[row["name"]]) for row in self.store.user_models()
                      if self._usable(row["name"])] if self.user is not None else [])
        for name, spec in [*REGISTRY.items(), *self._trained.items(), *users]:
            ready, why = spec.ready()
            runtimes = {key: entry for key, entry in chosen.items() if key.split("|")[0] == spec.name}
            entry = {"name": name, "family": spec.family, "dim": spec.dim, "input_size": spec.input_size,
                     "ready": ready, "status": why, "licence": spec.licence, "source": spec.source,
                     "runtimes": runtimes}
            if fusion.is_recipe(name):  # what it is made of, and what it costs per image
                recipe = fusion.parse(name, SINGLE)
                entry.update(recipe=recipe.name, cost=recipe.cost(), status=f"{why} · {fusion.cost_note(recipe)}")
            if spec.family == "file":
                entry.update(user=self.user.describe(name))
            out.append(entry)
        return out

    # -- loaded networks ------------------------------------------------------
    def placement(self, device: str | None = None):
        """``auto``/``cpu``/``gpu`` -> a placement, or ``DeviceError`` saying why not."""
        device = device or self.device
        with self._lock:
            if device not in self._placements:
                from ..device import resolve

                self._placements[device] = resolve(device)
            return self._placements[device]

    def backbone(self, cfg: ExtractorConfig, device: str | None = None, runtime: str | None = None) -> Backbone:
        """Load a backbone once per Studio and device; poolings share one network.

        A Keras network then runs through the runtime chosen for it (once per
        pooling and runtime request, remembered on the loaded network so a
        deleted model's choices go with it).
        """
        cfg = self.resolve(cfg)
        spec = self.spec(cfg.backbone)
        runtime = option_checked(runtime or self.runtime)
        if fusion.is_recipe(cfg.backbone):
            return self._fusion(cfg, device, runtime)
        return self._network(cfg, spec, device, runtime)

    def _fusion(self, cfg: ExtractorConfig, device: str | None, runtime: str) -> Backbone:
        """A fusion of this Studio's loaded part networks, each through its own checked runtime.

        The parts are the same loaded networks (and runtime choices) as when
        used alone, and other sizes (scales) share their weights.
        """
        recipe = fusion.parse(cfg.backbone, SINGLE)
        fusion.check_build(recipe, SINGLE, cfg.input_size, None if cfg.weights == "imagenet" else cfg.weights)

        def network(name: str, size: int, logits: bool) -> Backbone:
            part = ExtractorConfig(name, cfg.pooling, cfg.gem_p, size)
            return self._network(self.resolve(part), SINGLE[name], device, runtime, logits)

        return fusion.assemble(recipe, SINGLE, network, cfg.pooling, cfg.gem_p)

    def _network(self, cfg: ExtractorConfig, spec: BackboneSpec, device: str | None, runtime: str,
                 logits: bool = False) -> Backbone:
        placement = self.placement(device) if spec.family in CNN_FAMILIES else None
        key = (cfg.backbone, cfg.weights, cfg.input_size, getattr(placement, "kind", "cpu"))
        if spec.family == "hub" and key not in self._loaded:
            hub.prefetch(spec.name)  # a download (minutes) never holds the lock every search needs
        with self._lock:
            base = self._loaded.get(key)
            if base is None:
                weights = None if cfg.weights in ("imagenet", "none") else cfg.weights
                base = spec.build(cfg.pooling, cfg.gem_p, placement, input_size=cfg.input_size, weights=weights,
                                  batch_size=self.batch_size)
                self._loaded[key] = base
            backbone = base.with_pooling(cfg.pooling, cfg.gem_p)
            if logits:  # [descriptor, ImageNet logits] from one pass, for a fusion
                backbone = backbone.with_logits()
            if spec.family not in CNN_FAMILIES:
                return backbone
            from ..backbones.keras_model import KerasNetwork  # Keras is loaded by now

            if not isinstance(backbone, KerasNetwork):  # a head on a CNN: its base chose already
                return backbone
            choices = base.__dict__.setdefault("_runtime_choices", {})
            choice_key = (cfg.pooling, cfg.gem_p, runtime, logits)
            if choice_key not in choices:
                choices[choice_key] = self._choose(backbone, placement, runtime)
                if spec.family == "cnn":  # built-in networks: names are never reused
                    from ..runtime.choose import remember

                    remember(f"{cfg.key}{' +logits' if logits else ''} · {runtime} · {placement.kind}",
                             choices[choice_key])
            return backbone.using(choices[choice_key])

    def runtime_trials(self, cfg: ExtractorConfig, device: str | None = None) -> list[dict]:
        """Every runtime checked against Keras for ``cfg`` here, and which one ``auto`` uses."""
        from dataclasses import asdict

        from ..runtime import OPTIONS
        from ..runtime.choose import chooser

        backbone = self.backbone(cfg, device, "auto")
        if isinstance(backbone, fusion.FusionBackbone):  # no one network: say what each part runs
            return [{"runtime": backbone.runtime, "auto": True,
                     "status": f"each part of the fusion chose its own — {backbone.runtime_note}"}]
        if not hasattr(backbone, "target"):  # hand-crafted, or a head whose base network chose already
            return [{"runtime": backbone.runtime, "auto": True, "status": "no network to convert"}]
        rows = []
        trials = chooser(backbone.target())
        for opt in OPTIONS.values():
            used = backbone.runtime == opt.label
            if opt.name == "keras":
                rows.append({"runtime": opt.name, "auto": used, "status": "the definition" + (" — used by auto" if used else "")})
                continue
            trial = trials.checked(opt)
            rows.append({"runtime": opt.name, "auto": used, **asdict(trial),
                         "status": trial.summary() + (" — used by auto" if used else "")})
        rows.append({"runtime": "auto", "auto": True, "status": backbone.runtime_note})
        return rows

    def _choose(self, backbone, placement, runtime: str):
        from ..device import import_keras
        from ..runtime.choose import chooser, fixed

        if runtime == "keras":
            return fixed("Keras (as asked)")
        backend = import_keras().config.backend()
        why_not = ("Keras runs on the GPU" if getattr(placement, "kind", "cpu") == "gpu" else
                   f"other runtimes convert from TensorFlow, and Keras runs on {backend} here"
                   if backend != "tensorflow" else None)
        if why_not:
            if runtime != "auto":
                raise ServiceError(f"runtime {runtime} cannot run here: {why_not}")
            return fixed(f"auto: Keras, because {why_not}")
        try:
            return chooser(backbone.target()).choose(runtime)
        except RuntimeUnavailable as exc:
            raise ServiceError(str(exc)) from None

    # -- trained models -------------------------------------------------------
    def _register(self, row: dict) -> None:
        name = row["name"]

        def base_backbone(base: dict) -> Backbone:
            return self.backbone(ExtractorConfig(**base))

        def params() -> bytes:
            return self.store.adapted(name, with_params=True)[0]["params"]

        self._trained[name] = spec_for(row, base_backbone, params)

    def add_trained(self, row: dict) -> None:
        if row["name"] in REGISTRY or fusion.is_recipe(row["name"]):
            raise ServiceError(f"{row['name']!r} is a built-in model's name")
        if self.user.find(row["name"]) is not None:
            raise ServiceError(f"{row['name']!r} is the name of a model added from a file")
        self.store.save_adapted(row)
        with self._lock:
            self._register(row)

    def exists(self, name: str) -> bool:
        try:
            self.spec(name)
            return True
        except BackboneUnavailable:
            return False

    def base_config(self, name: str) -> ExtractorConfig:
        rows = self.store.adapted(name)
        if not rows:
            raise ServiceError(f"no adapted model named {name!r}")
        return ExtractorConfig(**json.loads(rows[0]["base"]))

    def trained(self) -> list[dict]:
        """Trained models with their settings and before/after figures."""
        return [{**r, "settings": json.loads(r["settings"]), "figures": json.loads(r["figures"]),
                 "base": json.loads(r["base"])} for r in self.store.adapted()]

    def delete_trained(self, name: str) -> bool:
        """A trained model, its vectors, its loaded network and every cache built on them."""
        rows = self.store.adapted(name)
        if not rows:
            return False
        cfg = self.resolve(ExtractorConfig(backbone=name))
        config_id = self.store.find_config(cfg)
        with self._lock:
            self._loaded = {k: v for k, v in self._loaded.items() if k[0] != name}
            self._trained.pop(name, None)
        if config_id is not None:
            self.caches.forget_config(config_id)
        return self.store.delete_adapted(name, cfg.key)

    # -- models from the user's files ---------------------------------------------
    def add_user(self, name: str, source: Path, options: UserModelOptions, replace: bool = False) -> dict:
        """Register a file as backbone ``name``; ``replace`` removes the model of that name first.

        The new file is copied and checked before anything is removed, so a
        bad file leaves the old model as it was.
        """
        if name in REGISTRY or fusion.is_recipe(name) or (name or "").startswith(fusion.PREFIX):
            raise ServiceError(f"{name!r} is a built-in model's name: choose another")
        if self.store.adapted(name):
            raise ServiceError(f"{name!r} is a model trained with adapt: choose another name")
        if self.user.find(name) is not None and not replace:
            raise ServiceError(f"a model named {name!r} exists already: remove it, or add with replace")
        row = self.user.prepare(name, Path(source), options)  # its copy is pending until settled
        replaced = None
        try:
            with self._lock:
                if self.user.find(name) is not None:
                    if not replace:  # added meanwhile, by another thread
                        raise ServiceError(f"a model named {name!r} exists already: remove it, or add with replace")
                    replaced = self._drop_user(name)
                try:
                    self.store.save_user_model(row)
                except sqlite3.IntegrityError:  # added meanwhile, by another process
                    raise ServiceError(f"a model named {name!r} was just added by another process: remove it, "
                                       "or add with replace") from None
                self.user.register(self.store.user_models(name)[0])
        except BaseException:
            self.user.settled(row["path"])
            self.user.discard(row["path"])  # kept if anything else names it
            raise
        self.user.settled(row["path"])
        if replaced is not None:
            self.user.discard(replaced)  # kept when the new row names the same copy
        return self.user.describe(name)

    def delete_user(self, name: str) -> bool:
        """A user model, every configuration's vectors made with it, its loaded network, caches and copy."""
        with self._lock:
            if self.user.find(name) is None:
                return False
            rel = self._drop_user(name)
        self.user.discard(rel)
        return True

    def _drop_user(self, name: str) -> str:
        """Everything of a user model but its copy, whose path is returned (another row may share it)."""
        dependants = [r["name"] for r in self.store.adapted() if json.loads(r["base"]).get("backbone") == name]
        if dependants:  # their heads were trained on this file's vectors: they would silently change meaning
            raise ServiceError(f"{name} is the base of the adapted model(s) {', '.join(dependants)}: delete those "
                               "first (delete_adapted), then remove or replace it")
        with self._lock:
            rel = self.user.rows[name]["path"]
            self._loaded = {k: v for k, v in self._loaded.items() if k[0] != name}
            config_ids = self.store.delete_user_model(name) or []
            self.user.forget(name)
        for config_id in config_ids:
            self.caches.forget_config(config_id)
        return rel

    def user_models(self) -> list[dict]:
        with self._lock:  # a concurrent remove must not pull a row out from under ``describe``
            return [self.user.describe(row["name"]) for row in self.store.user_models() if self._usable(row["name"])]

    def _usable(self, name: str) -> bool:
        try:
            return self.user.find(name) is not None
        except (BackboneUnavailable, ValueError, KeyError):  # a broken row: listed nowhere, refused by name
            return False
