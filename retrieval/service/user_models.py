"""Models users bring as files: copied into the data folder by content, registered per database.

Why a copy, by hash: the model must outlive the user's file (moved,
edited, deleted) and stay the one its vectors were made with. The copy is
``<data folder>/<db stem>.models/<sha256>.keras`` (or ``.onnx``); a SavedModel
folder is copied as a folder, ``….models/<sha256>.savedmodel/``, its hash taken
over its files in sorted order (relative path, size and bytes of each), so the
same folder always gets the same name. Nothing is written outside that folder.
The folder is per database (like ``<db stem>.ann``): two databases side by side
never delete each other's copies.

Why per database, like adapted models: the row, and the copy it names,
belong to the Studio's database; another Studio on the same file finds them.
``Models`` owns this registry and the loaded networks; this module knows
files, rows and specs.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
import uuid
from collections import Counter
from pathlib import Path

from ..backbones import user_file
from ..backbones.base import BackboneSpec, BackboneUnavailable
from ..backbones.user_options import UserModelOptions
from ..store import Store

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_CHUNK = 1 << 20
SAME_ROW = ("format", "sha256", "path", "options", "dim", "input_size", "output_shape")  # what a spec is built from


def content_hash(path: Path) -> str:
    """sha256 of a file, or of a folder's files in sorted order (path, size, bytes each)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            rel = file.relative_to(path).as_posix().encode()
            h.update(len(rel).to_bytes(8, "little") + rel + file.stat().st_size.to_bytes(8, "little"))
        with open(file, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    return h.hexdigest()


def folder_for(store: Store) -> str:
    """The copies' folder, relative to the data folder: one per database."""
    return f"{store.path.stem}.models"


class UserModels:
    """The user models of one database: their specs, and their copies under ``root/<db stem>.models``.

    The database is the truth: ``find`` reads a model's row on every lookup
    (one indexed query), so a model another Studio or process replaced or
    removed is never served from this one's memory.
    """

    def __init__(self, store: Store, root: Path):
        self.store, self.root, self.folder = store, root, folder_for(store)
        self.specs: dict[str, BackboneSpec] = {}
        self.rows: dict[str, dict] = {}
        self._files = threading.Lock()  # copies are made, kept and deleted one at a time
        self._pending: Counter[str] = Counter()  # copies of models being added, not in the database yet
        for row in store.user_models():
            try:
                self.register(row)
            except (BackboneUnavailable, ValueError, KeyError):
                pass  # a broken row: ``find`` names the problem when the model is asked for, the Studio opens

    def register(self, row: dict) -> BackboneSpec:
        self._inside(row["path"])  # a row is data: its copy must lie in this database's folder
        spec = user_file.spec_for(row, self.root)
        self.rows[row["name"]], self.specs[row["name"]] = row, spec
        return spec

    def find(self, name: str) -> BackboneSpec | None:
        """A registered model's spec as the database has it now (None when it is not registered)."""
        rows = self.store.user_models(name)
        if not rows:
            self.forget(name)
            return None
        row, known = rows[0], self.rows.get(name)
        if known is None or any(known[k] != row[k] for k in SAME_ROW):
            self.register(row)
        return self.specs[name]

    def forget(self, name: str) -> None:
        self.specs.pop(name, None)
        self.rows.pop(name, None)

    # -- files ------------------------------------------------------------------
    def stored_name(self, sha256: str, fmt: str) -> str:
        return f"{self.folder}/{sha256}.{'savedmodel' if fmt == user_file.SAVEDMODEL else fmt}"

    def _inside(self, rel: str) -> Path:
        """A stored path, refused unless it lies in this database's models folder (a row is data, not trusted)."""
        path = (self.root / rel).resolve()
        if not path.is_relative_to((self.root / self.folder).resolve()):
            raise BackboneUnavailable(f"stored model path {rel!r} lies outside the data folder")
        return path

    def stash(self, source: Path, fmt: str) -> tuple[str, str]:
        """Copy the file (or SavedModel folder) in by content: (sha256, path relative to the data folder).

        The copy counts as pending (``discard`` keeps it) until ``settled``:
        a model being added must not lose its copy to a concurrent remove of
        another model with the same file.
        """
        sha = content_hash(source)
        rel = self.stored_name(sha, fmt)
        with self._files:
            self._pending[rel] += 1
            try:
                self._copy(source, rel)
            except BaseException:
                self._settle(rel)
                raise
        return sha, rel

    def settled(self, rel: str) -> None:
        """An add is over (its row saved, or given up): its copy is no longer pending."""
        with self._files:
            self._settle(rel)

    def _settle(self, rel: str) -> None:
        self._pending[rel] -= 1
        if self._pending[rel] <= 0:
            del self._pending[rel]

    def _copy(self, source: Path, rel: str) -> None:
        target = self._inside(rel)
        if target.exists():
            return  # the same content is stored already
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
        try:
            if source.is_dir():
                shutil.copytree(source, tmp)
            else:
                shutil.copyfile(source, tmp)
            os.replace(tmp, target)  # whole or not at all, files and folders alike
        except OSError as exc:
            if not target.exists():
                raise BackboneUnavailable(f"cannot copy {source.name} into {target.parent}: {exc.strerror or exc}") from None
        finally:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            elif tmp.exists():
                tmp.unlink(missing_ok=True)

    def discard(self, rel: str) -> None:
        """Delete a stored copy that no registered model names any more, and no add in progress holds."""
        with self._files:
            if rel in self._pending or rel in self.store.user_model_paths():
                return
            path = self._inside(rel)
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    # -- registration -----------------------------------------------------------------
    def prepare(self, name: str, source: Path, options: UserModelOptions) -> dict:
        """Copy and open the file, run it once: the row to store (not stored yet). One line on failure.

        On success the copy stays pending: call ``settled(row["path"])`` once the row is saved or given up.
        """
        if not NAME.fullmatch(name or ""):
            raise BackboneUnavailable(f"model name {name!r} is not allowed: use up to 64 letters, digits, '.', "
                                      "'_', '+' or '-', starting with a letter or digit")
        fmt = user_file.file_format(source)
        sha, rel = self.stash(source, fmt)  # pending until the caller's ``settled``
        stored = self._inside(rel)
        try:
            found = user_file.probe(name, stored, fmt, options)
        except BackboneUnavailable as exc:  # it speaks of the copy: name the user's file instead
            self.settled(rel)
            self.discard(rel)
            raise BackboneUnavailable(str(exc).replace(stored.name, source.name)) from None
        except BaseException:
            self.settled(rel)
            self.discard(rel)
            raise
        return {"name": name, "format": fmt, "sha256": sha, "path": rel, "options": options.to_json(),
                "dim": found.dim, "input_size": found.input_size,
                "output_shape": "x".join(map(str, found.output_shape))}

    def describe(self, name: str) -> dict:
        """A registered model as the API and CLI report it."""
        row, spec = self.rows[name], self.specs[name]
        options = UserModelOptions.from_json(row["options"])
        shape = [int(d) for d in row["output_shape"].split("x")]
        return {"name": name, "format": row["format"], "sha256": row["sha256"], "path": row["path"],
                "dim": row["dim"], "input_size": row["input_size"], "output_shape": shape,
                "output": "feature map" if len(shape) == 3 else "embedding", "layer": options.layer,
                "preprocess": options.preprocess, "custom_objects": list(options.custom_objects),
                "added_at": row.get("added_at"), "status": spec.ready()[1], "weights": spec.weights}
