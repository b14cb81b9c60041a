"""A model-based stateful test of the service contract (issue 10, part 3).

A hypothesis ``RuleBasedStateMachine`` drives ONE ``Studio`` on a temporary
SQLite file, with the numpy backbones only, through random programs of:
index a folder (new, again, or after editing a file in place), upload files
and zips (duplicates, a corrupt PNG, a text file), remove an image, fork the
demo into a session, ask for a session (``Studio.session``), drop, clean up
idle sessions, search or compare under several configurations, evaluate, and
reopen the ``Studio`` on the same file.

Beside it runs a plain-Python model: for each collection name, the members
``sha256 -> (name, label, path)``. After every step the invariants below are
checked against the model, through the public API only:

- the collections are exactly the model's, with its image and label counts;
- every member's stored file exists and holds that member's content; no two
  members of a collection share a path; every file under ``blob_root``
  belongs to a member (no upload is in flight between steps);
- every configuration (two backbones, two metrics, re-ranking and centring on
  and off, the IVF index) sees exactly the current members: a search with a
  large k returns each of them once, a search with k returns min(k, members),
  and ``ensure_embeddings`` finds nothing missing afterwards;
- a member's vector is the vector of the content at its path: its own file
  scores ~1.0 against it (cosine, no re-ranking, no centring), so an edited
  file is re-indexed, not duplicated;
- nothing from a dropped collection reappears: its name is not listed (nor
  named in another's error message), and its contents are in no gallery, hit
  or blob unless a live collection holds them (the checks above are exact);
- evaluation's query count is the model's (labelled members whose label has
  another member); empty collections and unknown names raise ``ServiceError``
  with the contract's messages;
- a reopened ``Studio`` answers a fixed query exactly as before;
- captions and tags (``set_metadata``, cleared by setting nothing) are the
  model's: a fork or a new session starts with its template's, removing a
  member or dropping a collection deletes its own, and the FTS5 index holds
  exactly one row per metadata row, each a live member's; a text search for
  a word finds exactly the members whose caption or tags hold it.

Budget (CI): ``RETRIEVAL_STATEFUL_EXAMPLES`` programs (default 60) of at most
``RETRIEVAL_STATEFUL_STEPS`` steps (default 30); ``RETRIEVAL_STATEFUL_DERANDOMIZE=1``
makes a run reproducible. Hypothesis keeps no database (nothing is written
outside the temporary folders). ``benchmarks/soak.py --stateful N`` runs the
same machine longer. Run with ``-s`` to see "N programs, M steps".
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from PIL import Image

from retrieval import ExtractorConfig, SearchConfig, ServiceError, Studio

PX = ExtractorConfig(backbone="pixels")
CH = ExtractorConfig(backbone="colorhist")
BACKBONES = (PX, CH)

# Search configurations checked after every step: two backbones, two metrics, re-ranking (qe) on and off,
# centring on and off, the exact search and the IVF index.
PLAIN = SearchConfig(k=1000, metric="cosine", rerank="none", whiten="none", index="exact")
CONFIGS = (
    (PX, PLAIN),
    (CH, PLAIN),
    (PX, SearchConfig(k=1000, metric="euclidean", rerank="qe", whiten="center", index="exact")),
    (CH, SearchConfig(k=1000, metric="euclidean", rerank="none", whiten="center", index="exact")),
    (CH, SearchConfig(k=1000, metric="cosine", rerank="qe", whiten="none", index="exact")),
    (PX, SearchConfig(k=1000, metric="cosine", rerank="none", whiten="none", index="ivf")),
)
REOPEN_CONFIGS = (CONFIGS[0], CONFIGS[2], CONFIGS[3])

DEMO = "demo"
PREFIX = "session-"
NAMES = ("a", "b", "session-1", "session-2", "session-3")  # collections the rules write to
LABELS = ("cat", "coffee", "space")
UPLOAD_LABELS = (None, "cat", "coffee", None, "space", "cat")  # label of upload name u{j}: a function of the name
WORDS = ("red", "blue", "kiwi", "zebra")  # caption and tag words: no stop words, each its own porter stem

STATS = {"programs": 0, "steps": 0, "seconds": 0.0}
RULES: dict[str, int] = {}  # steps per rule, to show what a run exercised


# -- the pool of real image content, made once per process ------------------------------------------------------
@dataclass(frozen=True)
class Content:
    data: bytes
    ext: str
    label: str

    @property
    def sha(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def _encode(pixels: np.ndarray, ext: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG" if ext == ".png" else "JPEG", quality=90)
    return buf.getvalue()


_POOL: list[Content] = []


def pool() -> list[Content]:
    """12 distinct small photos (crops of scikit-image's bundled ones, 40x40), three labels, PNG and JPEG."""
    if not _POOL:
        from skimage import data

        chelsea, cat, coffee = data.chelsea(), data.cat(), data.coffee()
        astronaut, rocket, hubble = data.astronaut(), data.rocket(), data.hubble_deep_field()
        crops = [
            ("cat", chelsea, 0, 0), ("cat", chelsea, 100, 150), ("cat", cat, 40, 60), ("cat", chelsea, 180, 300),
            ("coffee", coffee, 0, 0), ("coffee", coffee, 150, 200), ("coffee", coffee, 250, 400),
            ("coffee", data.immunohistochemistry(), 100, 100),
            ("space", astronaut, 0, 100), ("space", astronaut, 250, 250), ("space", rocket, 100, 200),
            ("space", hubble, 50, 50),
        ]
        for i, (label, image, y, x) in enumerate(crops):
            pixels = np.asarray(Image.fromarray(np.ascontiguousarray(image[y:y + 160, x:x + 160, :3]))
                                .resize((40, 40), Image.BILINEAR))
            ext = ".png" if i % 2 == 0 else ".jpg"
            _POOL.append(Content(_encode(pixels, ext), ext, label))
        assert len({c.sha for c in _POOL}) == len(_POOL)
    return _POOL


CORRUPT = b"\x89PNG\r\n\x1a\n" + b"\x00 this is not really a PNG " * 8
TEXT = b"a text file, not an image\n"


def sha_of(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass(frozen=True)
class M:
    """What the model knows of a member: its name, label and path (uploads: "<blob>" + sha)."""

    name: str
    label: str | None
    path: str


def _resolved(path: Path | str) -> str:
    return str(Path(path).resolve())


class StudioMachine(RuleBasedStateMachine):
    """One Studio, one model; see the module docstring."""

    base: Path | None = None  # where programs make their temporary folders (set by the test or the soak)

    def __init__(self):
        super().__init__()
        STATS["programs"] += 1
        self.root = Path(tempfile.mkdtemp(prefix="stateful-", dir=self.base))
        self.studio: Studio | None = None
        self.colls: dict[str, dict[str, M]] = {}
        self.meta: dict[str, dict[str, tuple[str, tuple[str, ...]]]] = {}  # collection -> sha -> (caption, tags)
        self.folders: list[dict[str, tuple[Path, str]]] = []  # folder -> name -> (file, sha) of its images
        self.contents: dict[str, bytes] = {c.sha: c.data for c in pool()}
        self.ever: dict[str, None] = {}  # every collection name that ever existed, in order
        self.generated: list[str] = []  # names Studio.session made
        self.owners: dict[str, str] = {}  # tab -> the gallery Studio.session forked for it (this Studio instance)
        self.counter = 0
        self.queries = self.root / "queries"
        self.queries.mkdir()
        for i, c in enumerate(pool()):
            (self.queries / f"q{i}{c.ext}").write_bytes(c.data)
        self.probe = self.queries / f"q0{pool()[0].ext}"

    # -- helpers ----------------------------------------------------------------------------------------------
    def _step(self) -> None:
        STATS["steps"] += 1
        rule_name = sys._getframe(1).f_code.co_name
        RULES[rule_name] = RULES.get(rule_name, 0) + 1

    def _next(self) -> int:
        self.counter += 1
        return self.counter

    def _open(self) -> None:
        self.studio = Studio(self.root / "data" / "studio.sqlite", device="cpu", batch_size=self.batch, workers=1)

    def _targets(self) -> list[str]:
        """Names the writing rules choose from: the fixed ones and the live generated sessions."""
        return list(NAMES) + [n for n in self.generated if n in self.colls]

    def _live(self) -> list[str]:
        """Live names in creation order: never sorted, since generated names are random and a program's choices
        must not depend on them (hypothesis replays a program and expects the same draws)."""
        return list(self.colls)

    def _blob_root(self) -> str:
        return _resolved(self.studio.blob_root)

    def _model_path(self, path: str | None, sha: str) -> str | None:
        """The engine's path as the model writes it: uploads live under blob_root, named by sha256."""
        if path is None:
            return None
        resolved = _resolved(path)
        root = self._blob_root()
        if resolved.startswith(root + os.sep):
            assert Path(resolved).name.startswith(sha), f"blob {resolved} is not named by its sha256 {sha}"
            return "<blob>" + sha
        return resolved

    def _add(self, collection: str, items: list[tuple[str | None, str, str | None, str]]) -> None:
        """The contract's add: unreadable items skipped, the first of equal contents wins (a later one, or one
        already a member under another name, is a duplicate), a member with the same path but other content is
        replaced (a file edited in place). Every index/upload creates the collection."""
        members = self.colls.setdefault(collection, {})
        self.ever[collection] = None
        seen: set[str] = set()
        for sha, name, label, path in items:
            if sha is None or sha in seen:
                continue
            seen.add(sha)
            if sha in members:
                continue  # unchanged (same name: same label, same path) or a duplicate under another name
            for old, m in list(members.items()):
                if m.path == path:
                    del members[old]
            members[sha] = M(name, label, path)

    def _drop_model(self, name: str) -> None:
        del self.colls[name]
        # a tab whose gallery was dropped owns nothing any more: a later gallery under the same name
        # (re-created by an index) is not its own, so it gets a fresh fork, never that one
        self.owners = {owner: mine for owner, mine in self.owners.items() if mine != name}

    def _prune_meta(self) -> None:
        """Captions and tags belong to a membership: they go with it (removed, replaced, dropped)."""
        self.meta = {c: {sha: v for sha, v in m.items() if sha in self.colls[c]}
                     for c, m in self.meta.items() if c in self.colls}

    def _write_folder(self, picks: list[int], labelled: list[bool], junk: bool) -> int:
        k = len(self.folders)
        folder = self.root / "folders" / f"f{k}"
        files: dict[str, tuple[Path, str]] = {}
        for j, i in enumerate(picks):
            c = pool()[i]
            name = f"{c.label}/f{k}-{i}{c.ext}" if labelled[j % len(labelled)] else f"f{k}-{i}{c.ext}"
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(c.data)
            files[name] = (path, c.sha)
        folder.mkdir(parents=True, exist_ok=True)
        if junk:
            (folder / f"f{k}-broken.png").write_bytes(CORRUPT)
            (folder / f"f{k}-notes.txt").write_bytes(TEXT)
        self.folders.append(files)
        return k

    def _index(self, k: int, collection: str, cfg: ExtractorConfig):
        report = self.studio.index(self.root / "folders" / f"f{k}", collection, cfg)
        files = self.folders[k]
        # scan order: the folder's own files, then each label subfolder, names sorted
        order = sorted(files, key=lambda n: (n.count("/"), n))
        self._add(collection, [(files[n][1], n, n.split("/")[0] if "/" in n else None, _resolved(files[n][0]))
                               for n in order])
        return report

    def _holders(self, path: Path) -> list[str]:
        p = _resolved(path)
        return [c for c in self._live() if any(m.path == p for m in self.colls[c].values())]

    def _expect_missing(self, call, name: str) -> None:
        with pytest.raises(ServiceError) as info:
            call()
        message = str(info.value)
        assert f"no collection named {name!r}" in message, message
        for other in self._live():
            if other != name:
                quoted = repr(other) in message or f'"{other}"' in message
                word = len(other) > 2 and re.search(rf"(?<![\w-]){re.escape(other)}(?![\w-])", message)
                assert not (quoted or word), f"the error names another collection ({other}): {message}"

    def _expect_empty(self, call) -> None:
        with pytest.raises(ServiceError) as info:
            call()
        assert "no image" in str(info.value).lower(), str(info.value)

    def _check_hits(self, collection: str, hits, k: int) -> None:
        members = self.colls[collection]
        assert len(hits) == min(k, len(members)), (collection, len(hits), k, len(members))
        assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
        assert len({h.sha256 for h in hits}) == len(hits), "an image is returned twice"
        for h in hits:
            assert h.sha256 in members, f"hit {h.name} ({h.sha256[:8]}) is not a member of {collection}"
            m = members[h.sha256]
            assert (h.name, h.label, self._model_path(h.path, h.sha256)) == (m.name, m.label, m.path), (h, m)

    def _expected_queries(self, collection: str) -> int:
        """leave-one-out: a labelled member queries when another member has its label."""
        labels = [m.label for m in self.colls[collection].values() if m.label is not None]
        return sum(labels.count(label) > 1 for label in labels)

    def _answers(self) -> dict:
        out = {}
        for c in self._live():
            if self.colls[c]:
                for i, (cfg, scfg) in enumerate(REOPEN_CONFIGS):
                    hits = self.studio.search(self.probe, c, cfg, scfg).hits
                    out[c, i] = [(h.sha256, h.name, h.score) for h in hits]
        return out

    # -- rules --------------------------------------------------------------------------------------------------
    @initialize(batch=st.sampled_from([2, 4]), cfg=st.sampled_from(BACKBONES),
                picks=st.lists(st.integers(0, 11), min_size=2, max_size=5, unique=True))
    def start(self, batch, cfg, picks):
        """A fresh data folder, one Studio, and the demo template every session forks."""
        self._step()
        self.batch = batch
        self._open()
        k = self._write_folder(picks, [True], junk=False)
        self._index(k, DEMO, cfg)

    @rule(again=st.booleans(), folder=st.integers(0, 99),
          picks=st.lists(st.integers(0, 11), min_size=1, max_size=6, unique=True),
          labelled=st.lists(st.booleans(), min_size=1, max_size=3), junk=st.booleans(),
          where=st.integers(0, 99), cfg=st.sampled_from(BACKBONES))
    def index_folder(self, again, folder, picks, labelled, junk, where, cfg):
        """Index a folder written before (it may be in that collection already, or partly), or write a new one
        (label subfolders and top-level files, maybe a corrupt file and a text file) and index that."""
        self._step()
        targets = self._targets()
        if again and len(self.folders) > 1:
            k = 1 + folder % (len(self.folders) - 1)
        else:
            k = self._write_folder(picks, labelled, junk)
        report = self._index(k, targets[where % len(targets)], cfg)
        assert not getattr(report, "replaced", []), report.replaced  # nothing was edited since it was indexed

    @precondition(lambda self: any(self._holders(p) for f in self.folders[1:] for p, _ in f.values()))
    @rule(pick=st.integers(0, 999), cfg=st.sampled_from(BACKBONES), spot=st.integers(0, 29))
    def edit_in_place_and_reindex(self, pick, cfg, spot):
        """Overwrite an indexed file with new content, then index its folder again into every collection that
        holds it: the member is replaced (same name and path, new content), not duplicated."""
        self._step()
        held = [(k, name) for k in range(1, len(self.folders)) for name, (p, _) in sorted(self.folders[k].items())
                if self._holders(p)]
        k, name = held[pick % len(held)]
        path, _ = self.folders[k][name]
        pixels = np.asarray(Image.open(path).convert("RGB")).copy()
        while True:
            n = self._next()
            y, x = (spot + n) % 30, (spot * 7 + n) % 30
            pixels[y:y + 10, x:x + 10] = 255 - pixels[y:y + 10, x:x + 10]
            data = _encode(pixels, path.suffix)
            sha = hashlib.sha256(data).hexdigest()
            if sha not in self.contents:
                break
        path.write_bytes(data)
        self.contents[sha] = data
        self.folders[k][name] = (path, sha)
        for collection in self._holders(path):
            report = self._index(k, collection, cfg)
            self._check_members(collection)
            assert getattr(report, "replaced", None) == [name], f"IndexReport.replaced: {getattr(report, 'replaced', '(none)')}"

    @rule(items=st.lists(st.one_of(
              st.tuples(st.just("file"), st.integers(0, 11), st.integers(0, 5)),
              st.tuples(st.just("zip"), st.lists(st.tuples(st.integers(0, 11), st.booleans()), min_size=1,
                                                 max_size=4, unique_by=lambda e: e[0]), st.integers(0, 2)),
              st.tuples(st.just("corrupt"), st.integers(0, 1), st.integers(0, 0)),
              st.tuples(st.just("text"), st.integers(0, 1), st.integers(0, 0))), min_size=1, max_size=4),
          where=st.integers(0, 99), cfg=st.sampled_from(BACKBONES))
    def upload(self, items, where, cfg):
        """Upload files and zips (as the app gets them: a temporary path, the user's name, a label)."""
        self._step()
        targets = self._targets()
        collection = targets[where % len(targets)]
        incoming = self.root / "incoming" / str(self._next())
        incoming.mkdir(parents=True)
        uploads, expected = [], []
        for n, (kind, what, j) in enumerate(items):
            if kind == "file":
                c = pool()[what]
                name, label = f"u{j}{c.ext}", UPLOAD_LABELS[j]
                (incoming / f"{n}{c.ext}").write_bytes(c.data)
                uploads.append((incoming / f"{n}{c.ext}", name, label))
                expected.append((c.sha, name, label, "<blob>" + c.sha))
            elif kind == "zip":
                zname = f"z{j}.zip"
                buf = io.BytesIO()
                with zipfile.ZipFile(buf, "w") as zf:
                    for i, labelled in what:
                        c = pool()[i]
                        entry = f"{c.label}/p{i}{c.ext}" if labelled else f"p{i}{c.ext}"
                        zf.writestr(entry, c.data)
                        expected.append((c.sha, f"{zname}/{entry}", c.label if labelled else UPLOAD_LABELS[j],
                                         "<blob>" + c.sha))
                (incoming / f"{n}.zip").write_bytes(buf.getvalue())
                uploads.append((incoming / f"{n}.zip", zname, UPLOAD_LABELS[j]))
            else:
                name = f"broken{what}.png" if kind == "corrupt" else f"notes{what}.txt"
                (incoming / name).write_bytes(CORRUPT if kind == "corrupt" else TEXT)
                uploads.append((incoming / name, name, None))
                expected.append((None, name, None, ""))
        report = self.studio.upload(uploads, collection, cfg)
        self._add(collection, expected)
        refused = {s.name for s in report.skipped}
        assert {n for sha, n, _, _ in expected if sha is None} <= refused, report.skipped

    @precondition(lambda self: any(c != DEMO for c in self.colls))
    @rule(which=st.integers(0, 999), by_path=st.booleans(), everywhere=st.sampled_from([False, False, False, True]),
          absent=st.sampled_from([False, False, False, True]), content=st.integers(0, 11))
    def remove(self, which, by_path, everywhere, absent, content):
        """Remove one member by sha256 or path, from its collection (or from all); or remove content the
        collection does not hold, which changes nothing."""
        self._step()
        pairs = [(c, sha) for c in self._live() if c != DEMO for sha in sorted(self.colls[c])]
        if absent or not pairs:
            live = [c for c in self._live() if c != DEMO]
            collection, sha = live[which % len(live)], pool()[content].sha
            if sha not in self.colls[collection]:
                assert self.studio.remove(sha, collection) == []
                return
        else:
            collection, sha = pairs[which % len(pairs)]
        m = self.colls[collection][sha]
        if by_path:  # the file's path; an upload's is its blob (named by its content)
            key = next(x.path for x in self.studio.members(collection) if x.sha256 == sha)
            match = lambda s, x: x.path == m.path
        else:
            key, match = sha, lambda s, x: s == sha
        scope = self._live() if everywhere else [collection]
        expected = []
        for c in scope:
            for s, x in list(self.colls[c].items()):
                if match(s, x):
                    del self.colls[c][s]
                    expected.append(x.name)
        removed = self.studio.remove(key, None if everywhere else collection)
        assert sorted(removed) == sorted(expected), (removed, expected)

    @rule(where=st.integers(0, 99))
    def fork_demo(self, where):
        """Copy-on-write copy of the demo (a no-op when the target exists)."""
        self._step()
        targets = self._targets()
        name = targets[where % len(targets)]
        assert self.studio.fork(DEMO, name) == name
        if name not in self.colls:
            self.colls[name] = dict(self.colls[DEMO])
            self.meta[name] = dict(self.meta.get(DEMO, {}))
            self.ever[name] = None

    @rule(writable=st.booleans(), current=st.sampled_from(["none", "live", "gone", "own"]), which=st.integers(0, 99),
          reuse=st.booleans())
    def session(self, writable, current, which, reuse):
        """A tab asks for its gallery (Studio.session), as the contract says: a gone gallery is never re-created,
        a new one is a private fork of the template under a new name, an owner's live gallery comes first."""
        self._step()
        owners = list(self.owners)
        owner = owners[which % len(owners)] if reuse and owners else f"tab-{self._next()}"
        mine = self.owners.get(owner)
        live = [c for c in self._live() if c != DEMO]
        gone = [n for n in self.ever if n not in self.colls] + [f"{PREFIX}never-{which}"]
        if current == "own" and mine is not None:
            name = mine
        elif current == "none":
            name = None
        elif current == "live" and live:
            name = live[which % len(live)]
        else:
            name = gone[which % len(gone)]
        got = self.studio.session(owner, name, DEMO, prefix=PREFIX, writable=writable)
        mine_live, name_live = mine in self.colls, name in self.colls
        if mine_live:  # the owner's live gallery first, for reads and writes, whatever `current` says
            assert (got.collection, got.note, got.private) == (mine, None, True), (owner, mine, name, got)
        elif writable and name_live:  # else `current` if it exists, which becomes the owner's
            assert (got.collection, got.note) == (name, None), got
            self.owners[owner] = name
        elif not writable and name is None:
            assert (got.collection, got.note, got.private) == (DEMO, None, False), got
        elif not writable and name_live:
            assert (got.collection, got.note, got.private) == (name, None, True), got
        else:  # a new private fork of the template under a new name; a note only when `current` was gone
            assert got.collection.startswith(PREFIX) and got.collection not in self.ever, (got, list(self.ever))
            if name is None:
                assert got.note is None, got
            else:
                assert got.note and "\n" not in got.note.strip(), got
            assert got.private, got
            self.colls[got.collection] = dict(self.colls[DEMO])
            self.meta[got.collection] = dict(self.meta.get(DEMO, {}))
            self.ever[got.collection] = None
            self.generated.append(got.collection)
            self.owners[owner] = got.collection

    @precondition(lambda self: any(self.colls.values()))
    @rule(which=st.integers(0, 999), caption=st.lists(st.sampled_from(WORDS), max_size=3),
          tags=st.lists(st.sampled_from(WORDS), max_size=2, unique=True), by_name=st.booleans())
    def set_metadata(self, which, caption, tags, by_name):
        """Set a member's caption and tags (the demo's too, so forks and sessions inherit them); nothing at
        all clears them."""
        self._step()
        self._prune_meta()
        pairs = [(c, sha) for c in self._live() for sha in sorted(self.colls[c])]
        collection, sha = pairs[which % len(pairs)]
        key = self.colls[collection][sha].name if by_name else sha
        if by_name and sum(m.name == key for m in self.colls[collection].values()) > 1:
            key = sha  # a name two members share (two folders' files) picks either: ask by content
        text = " ".join(caption)
        got = self.studio.set_metadata(collection, key, caption=text, tags=tags)
        if text or tags:
            self.meta.setdefault(collection, {})[sha] = (text, tuple(tags))
            assert (got.sha256, got.caption, got.tags) == (sha, text, tuple(tags)), got
        else:
            self.meta.get(collection, {}).pop(sha, None)
            assert got is None, got

    @rule(where=st.integers(0, 99), generated=st.booleans())
    def drop(self, where, generated):
        """Drop a fixed name or one Studio.session made (live or gone already: then nothing happens)."""
        self._step()
        targets = list(NAMES) if not generated or not self.generated else self.generated
        name = targets[where % len(targets)]
        assert self.studio.drop_collection(name) == (name in self.colls)
        if name in self.colls:
            self._drop_model(name)

    @rule(everything=st.booleans(), prefix=st.sampled_from([PREFIX, PREFIX, "a"]))
    def cleanup(self, everything, prefix):
        """Idle galleries named prefix... go: a negative max_idle_s makes every one idle, a huge one none (so the
        outcome does not depend on the clock)."""
        self._step()
        dropped = self.studio.cleanup(prefix, -60.0 if everything else 1e9)
        expected = sorted(c for c in self._live() if c.startswith(prefix)) if everything else []
        assert sorted(dropped) == expected
        for name in expected:
            self._drop_model(name)

    @rule(where=st.integers(0, 99), config=st.integers(0, len(CONFIGS) - 1), k=st.sampled_from([1, 3, 7, 1000]),
          query=st.integers(0, 999), own=st.booleans(), versus=st.integers(-2, len(CONFIGS) - 1))
    def search(self, where, config, k, query, own, versus):
        """A search (or a comparison of two configurations) by a pool photo or by a member's own file, in a live,
        empty, dropped or unknown collection."""
        self._step()
        names = [DEMO] + self._targets() + [n for n in self.generated if n not in self.colls] + ["nowhere"]
        name = names[where % len(names)]

        def with_k(pair):
            cfg, scfg = pair
            return cfg, SearchConfig(k=k, metric=scfg.metric, rerank=scfg.rerank, whiten=scfg.whiten, index=scfg.index)

        a, b = with_k(CONFIGS[config]), with_k(CONFIGS[max(versus, 0)])
        paths = sorted(self.queries.iterdir())
        image = paths[query % len(paths)]

        def call():
            if versus < 0:
                return [self.studio.search(image, name, *a)]
            comparison = self.studio.compare(image, name, a, b)
            return [comparison.a, comparison.b]

        if name not in self.colls:
            self._expect_missing(call, name)
            self._expect_missing(lambda: self.studio.members(name), name)
            return
        if not self.colls[name]:
            self._expect_empty(call)
            return
        if own:
            members = self.studio.members(name)
            image = members[query % len(members)].path
        for result in call():
            self._check_hits(name, result.hits, k)

    @rule(where=st.integers(0, 99), config=st.integers(0, len(CONFIGS) - 1))
    def evaluate(self, where, config):
        """Leave-one-out over the labelled members: the query count is the model's."""
        self._step()
        names = [DEMO] + self._targets()
        name = names[where % len(names)]
        cfg, scfg = CONFIGS[config]
        if name not in self.colls:
            self._expect_missing(lambda: self.studio.evaluate(name, cfg, scfg), name)
            return
        if not self.colls[name]:
            self._expect_empty(lambda: self.studio.evaluate(name, cfg, scfg))
            return
        if not any(m.label for m in self.colls[name].values()):
            with pytest.raises(ServiceError):  # nothing to evaluate: said in words, not a zero report
                self.studio.evaluate(name, cfg, scfg)
            return
        report = self.studio.evaluate(name, cfg, scfg)
        assert report.queries == self._expected_queries(name), (report.queries, self._expected_queries(name))

    @rule(batch=st.sampled_from([2, 4]))
    def reopen(self, batch):
        """Close the Studio and open a new one on the same file (maybe another batch size): it answers a fixed
        query as before."""
        self._step()
        before = self._answers()
        self.studio.close()
        self.batch = batch
        self._open()
        self.owners.clear()  # whether a reopened Studio remembers tabs the contract leaves open: new tabs only
        after = self._answers()
        assert before.keys() == after.keys()
        for key in before:
            assert [x[:2] for x in after[key]] == [x[:2] for x in before[key]], key
            np.testing.assert_allclose([x[2] for x in after[key]], [x[2] for x in before[key]], rtol=1e-5, atol=1e-6)

    # -- invariants -----------------------------------------------------------------------------------------------
    def _check_members(self, collection: str) -> list:
        members = self.studio.members(collection)
        model = self.colls[collection]
        got = {m.sha256: M(m.name, m.label, self._model_path(m.path, m.sha256)) for m in members}
        assert len(got) == len(members), f"{collection}: a content is a member twice"
        assert got == model, f"{collection}: engine {got} != model {model}"
        paths = [_resolved(m.path) for m in members]
        assert len(set(paths)) == len(paths), f"{collection}: two members share a path"
        for m in members:
            assert Path(m.path).is_file(), f"{collection}: {m.name}'s file {m.path} is gone"
            assert sha_of(m.path) == m.sha256, f"{collection}: {m.name}'s file holds other content than the member"
        return members

    @invariant()
    def collections_are_the_model(self):
        infos = {c.name: c for c in self.studio.collections()}
        assert set(infos) == set(self.colls), f"engine {sorted(infos)} != model {sorted(self.colls)}"
        for name, info in infos.items():
            members = self.colls[name]
            assert info.images == len(members), (name, info)
            assert info.labelled == sum(m.label is not None for m in members.values()), (name, info)
            assert info.labels == len({m.label for m in members.values() if m.label is not None}), (name, info)

    @invariant()
    def stored_files_are_the_members(self):
        in_use = set()
        for c in self._live():
            for m in self._check_members(c):
                in_use.add(_resolved(m.path))
        root = Path(self.studio.blob_root)
        stored = {_resolved(p) for p in root.rglob("*") if not p.is_dir()} if root.exists() else set()
        assert stored <= in_use, f"files under blob_root that no member holds: {sorted(stored - in_use)}"

    @invariant()
    def metadata_is_the_model(self):
        self._prune_meta()
        total = sum(len(m) for m in self.meta.values())
        counts = self.studio.store.metadata_counts()
        assert counts == {"rows": total, "indexed": total, "members": total, "unindexed": 0, "stray": 0}, \
            (counts, total)
        for c in self._live():
            model = self.meta.get(c, {})
            got = {sha: (m.caption, m.tags) for sha, m in self.studio.metadata(c).items()}
            assert got == model, f"{c}: engine {got} != model {model}"
            if self.colls[c]:
                for word in WORDS[:2]:
                    hits = self.studio.search_text(word, c, 1000).hits
                    want = {sha for sha, (text, tags) in model.items() if word in text.split() or word in tags}
                    assert {h.sha256 for h in hits} == want, (c, word)

    @invariant()
    def every_configuration_sees_exactly_the_members(self):
        for c in self._live():
            members = self.colls[c]
            if not members:
                self._expect_empty(lambda c=c: self.studio.search(self.probe, c, PX, PLAIN))
                continue
            for cfg, scfg in CONFIGS:
                hits = self.studio.search(self.probe, c, cfg, scfg).hits
                self._check_hits(c, hits, scfg.k)
                assert {h.sha256 for h in hits} == set(members), (c, cfg.backbone, scfg)
            for cfg in BACKBONES:  # the galleries served computed every missing vector on the way
                assert self.studio.ensure_embeddings(c, cfg) == 0, (c, cfg.backbone)

    @invariant()
    def each_member_has_the_vector_of_its_file(self):
        for c in self._live():
            members = self.studio.members(c)
            n = max(1, len(members))
            for m in members:
                for cfg in BACKBONES:
                    hits = self.studio.search(m.path, c, cfg, SearchConfig(k=n, metric="cosine", rerank="none",
                                                                           whiten="none", index="exact")).hits
                    own = [h.score for h in hits if h.sha256 == m.sha256]
                    assert own and own[0] > 0.9999, \
                        f"{c}/{cfg.backbone}: {m.name}'s own file scores {own} against it (stale vector)"

    def teardown(self):
        try:
            if self.studio is not None:
                self.studio.close()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def stateful_settings(examples: int | None = None, steps: int | None = None) -> settings:
    return settings(
        max_examples=examples or int(os.environ.get("RETRIEVAL_STATEFUL_EXAMPLES", "60")),
        stateful_step_count=steps or int(os.environ.get("RETRIEVAL_STATEFUL_STEPS", "30")),
        deadline=None,
        database=None,  # nothing written into the repository (.hypothesis/)
        derandomize=os.environ.get("RETRIEVAL_STATEFUL_DERANDOMIZE", "") not in ("", "0"),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        print_blob=True,
    )


def run(examples: int | None = None, steps: int | None = None, base: Path | None = None) -> dict:
    """Run the machine; returns programs, steps and seconds (raises on a violation, with the shrunk program)."""
    from hypothesis import configuration

    base = Path(base) if base is not None else Path(tempfile.mkdtemp(prefix="stateful-"))
    StudioMachine.base = base
    before, rules_before = dict(STATS), dict(RULES)
    # Even without a database hypothesis caches the constants it finds in local modules under
    # ./.hypothesis/constants: keep that in the run's temporary folder too, and put the setting back after.
    home = getattr(configuration, "__hypothesis_home_directory", None)
    configuration.set_hypothesis_home_dir(base / "hypothesis-home")
    started = time.perf_counter()
    try:
        run_state_machine_as_test(StudioMachine, settings=stateful_settings(examples, steps))
    finally:
        configuration.set_hypothesis_home_dir(home)
        STATS["seconds"] += time.perf_counter() - started
        done = {k: STATS[k] - before[k] for k in STATS}
        done["rules"] = {k: v - rules_before.get(k, 0) for k, v in sorted(RULES.items())}
        print(f"\nstateful: {done['programs']} programs, {done['steps']} steps in {done['seconds']:.1f} s; "
              + ", ".join(f"{k} {v}" for k, v in done["rules"].items()))
    return done


def test_studio_state_machine(tmp_path):
    run(base=tmp_path)
