"""Several sessions at once against one ``Studio`` (issue 10): a threaded stress test.

Four threads play four app sessions. Each loops, for a bounded time and a
bounded number of steps, over what a user of the app does: upload files (its
own, some every session shares, a copy of a template image, a non-image),
upload a small zip, remove an image, reset (drop its gallery and fork the
template under a new name), search with two backbones, and meanwhile make
and clean up idle scratch galleries. Every session keeps a plain model of
what its gallery holds; it checks each search against it while running, and
every invariant is checked again at the end:

- no exception other than a ``ServiceError`` with a one-line message escaped;
- each session's gallery holds exactly what the session put there (its own
  uploads and the template's images), and a dropped gallery never comes back;
- every member's file exists and holds its content; every file under
  ``blob_root`` belongs to a member (no upload is in flight at the end);
- SQLite's integrity check passes, and a reopened ``Studio`` answers the same;
- nothing was written outside the data folder (HOME, the temp folder and
  the caches point into an empty folder that must stay empty).
"""

from __future__ import annotations

import hashlib
import io
import random
import tempfile
import threading
import time
import traceback
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from retrieval import ExtractorConfig, SearchConfig, ServiceError, Studio

CH = ExtractorConfig(backbone="colorhist")
PX = ExtractorConfig(backbone="pixels")
SESSIONS = 4
SECONDS = 12.0  # wall time of the whole run, at most
STEPS = 1500  # per session, at most
K = 5


def png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=3)
    arr = np.clip(base + rng.integers(-40, 41, size=(16, 16, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def snapshot(root: Path, skip: Path) -> dict[str, tuple[bool, int, int]]:
    """Every file and folder under ``root`` except ``skip``: (is a folder, size, mtime)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p == skip or skip in p.parents:
            continue
        st = p.lstat()
        out[str(p.relative_to(root))] = (p.is_dir(), 0 if p.is_dir() else st.st_size, 0 if p.is_dir() else st.st_mtime_ns)
    return out


def clear(message: str) -> bool:
    return bool(message.strip()) and "\n" not in message and "Traceback" not in message and "sqlite" not in message.lower()


class Session(threading.Thread):
    """One user: uploads, removes, resets and searches in a loop; checks every answer."""

    def __init__(self, i: int, st: Studio, src: Path, template: dict[str, Path], common: list[Path],
                 deadline: float, violations: list[str], service_errors: list[str]):
        super().__init__(name=f"session-{i}")
        self.i, self.st, self.template, self.deadline = i, st, template, deadline
        self.violations, self.service_errors = violations, service_errors
        self.rng = random.Random(1000 + i)
        folder = src / f"s{i}"
        folder.mkdir()
        self.files: dict[str, Path] = dict(template)  # sha -> a file with that content
        self.pool: list[Path] = []
        for n in range(16):
            p = folder / f"s{i}-{n}.png"
            p.write_bytes(png(10_000 * (i + 1) + n))
            self.pool.append(p)
        self.pool += common
        copy = folder / f"s{i}-copy-of-demo.png"  # same content as a template image, another name
        copy.write_bytes(next(iter(template.values())).read_bytes())
        self.pool.append(copy)
        self.zips: list[tuple[Path, list[bytes]]] = []
        for z in range(3):
            contents = [png(10_000 * (i + 1) + 100 + 2 * z + e) for e in range(2)]
            path = folder / f"s{i}-batch{z}.zip"
            with zipfile.ZipFile(path, "w") as zf:
                for e, data in enumerate(contents):
                    zf.writestr(f"album/s{i}-z{z}-{e}.png", data)
            self.zips.append((path, contents))
            for data in contents:
                extracted = folder / f"s{i}-z{z}-{len(self.files)}.png"
                extracted.write_bytes(data)
                self.files[sha(data)] = extracted  # a query file for this content
        self.junk = folder / f"s{i}-notes.png"
        self.junk.write_text("a text file with an image's name")
        for p in self.pool:
            self.files.setdefault(sha(p.read_bytes()), p)
        self.allowed = set(self.files)  # everything this session may ever hold
        self.generation = 0
        self.collection = self._gallery_name()
        self.model: set[str] = set(template)  # what the gallery holds
        self.dropped: list[str] = []
        self.scratch = 0
        self.steps = 0

    def _gallery_name(self) -> str:
        return f"session-{self.i}-{self.generation}"

    def violation(self, text: str) -> None:
        self.violations.append(f"{self.name} step {self.steps}: {text}")

    # -- the actions -------------------------------------------------------
    def upload(self) -> None:
        chosen = self.rng.sample(self.pool, self.rng.randint(1, 3))
        junk = self.rng.random() < 0.25
        items = [(p, p.name, None) for p in chosen] + ([(self.junk, self.junk.name, None)] if junk else [])
        report = self.st.upload(items, self.collection, CH)
        bad = [(s.name, s.reason) for s in report.skipped if s.name != self.junk.name]
        if bad:
            self.violation(f"upload skipped images: {bad}")
        self.model |= {sha(p.read_bytes()) for p in chosen}

    def upload_zip(self) -> None:
        path, contents = self.rng.choice(self.zips)
        report = self.st.upload([(path, path.name, None)], self.collection, CH)
        if report.skipped:
            self.violation(f"zip upload skipped images: {[(s.name, s.reason) for s in report.skipped]}")
        self.model |= {sha(d) for d in contents}

    def remove(self) -> None:
        if not self.model:
            return
        digest = self.rng.choice(sorted(self.model))
        removed = self.st.remove(digest, self.collection)
        if len(removed) != 1:
            self.violation(f"remove of a member removed {removed}")
        self.model.discard(digest)

    def reset(self) -> None:
        self.st.drop_collection(self.collection)
        self.dropped.append(self.collection)
        self.generation += 1
        self.collection = self._gallery_name()
        self.st.fork("demo", self.collection)
        self.model = set(self.template)

    def search(self) -> None:
        cfg = self.rng.choice([CH, PX])
        if not self.model:
            try:
                self.st.search(next(iter(self.files.values())), self.collection, cfg, SearchConfig(k=K))
                self.violation("search of an empty gallery did not say so")
            except ServiceError as exc:
                if "no images" not in str(exc):
                    self.violation(f"empty gallery: {exc}")
            return
        digest = self.rng.choice(sorted(self.model))
        hits = self.st.search(self.files[digest], self.collection, cfg, SearchConfig(k=K, rerank="none")).hits
        got = [h.sha256 for h in hits]
        if not set(got) <= self.model:
            self.violation(f"search with {cfg.backbone} returned non-members {sorted(set(got) - self.model)}")
        if len(got) != min(K, len(self.model)):
            self.violation(f"search with {cfg.backbone}: {len(got)} hits for {len(self.model)} members")
        for h in hits:
            if not (h.path and Path(h.path).is_file()):
                self.violation(f"hit {h.name} has no file")

    def scratch_gallery(self) -> None:
        """An idle gallery of this session's own, which any session's cleanup may drop at any time."""
        self.scratch += 1
        p = self.rng.choice(self.pool)
        self.st.upload([(p, p.name, None)], f"idle-{self.i}-{self.scratch}", CH)

    def cleanup(self) -> None:
        for name in self.st.cleanup("idle-", -3600):
            if not name.startswith("idle-"):
                self.violation(f"cleanup dropped {name}")

    ACTIONS = (("upload", 5), ("upload_zip", 2), ("remove", 3), ("reset", 1), ("search", 5),
               ("scratch_gallery", 1), ("cleanup", 1))

    def run(self) -> None:
        try:
            self.st.fork("demo", self.collection)
        except Exception as exc:  # noqa: BLE001
            self.violation(f"fork: {type(exc).__name__}: {exc}")
            return
        names, weights = zip(*self.ACTIONS)
        while self.steps < STEPS and time.monotonic() < self.deadline:
            self.steps += 1
            action = self.rng.choices(names, weights)[0]
            try:
                getattr(self, action)()
            except ServiceError as exc:
                self.service_errors.append(f"{self.name} {action}: {exc}")
                if not clear(str(exc)):
                    self.violation(f"{action}: unclear ServiceError {exc!r}")
                # only a scratch gallery may vanish under its upload (another session's cleanup)
                if action != "scratch_gallery":
                    self.violation(f"{action} on its own gallery failed: {exc}")
            except Exception as exc:  # noqa: BLE001 - every other exception is a failure
                self.violation(f"{action}: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}")


def test_sessions_upload_remove_reset_and_search_at_once(tmp_path, monkeypatch):
    home = tmp_path / "home"  # must stay empty: HOME, caches and temp files point here
    for sub in ("", "tmp", "xdg-data", "xdg-cache", "xdg-config", "cache", "keras", "default-data"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TMPDIR", str(home / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(home / "tmp"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "xdg-data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "xdg-cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "xdg-config"))
    monkeypatch.setenv("RETRIEVAL_CACHE_DIR", str(home / "cache"))
    monkeypatch.setenv("RETRIEVAL_DATA_DIR", str(home / "default-data"))
    monkeypatch.setenv("KERAS_HOME", str(home / "keras"))

    src = tmp_path / "src"
    (src / "template").mkdir(parents=True)
    template = {}
    for n in range(4):
        p = src / "template" / f"demo{n}.png"
        p.write_bytes(png(n))
        template[sha(p.read_bytes())] = p
    common = []
    for n in range(3):  # every session may upload these: the same content at once, shared stored files
        p = src / f"common{n}.png"
        p.write_bytes(png(500 + n))
        common.append(p)

    data = tmp_path / "data"
    st = Studio(data / "studio.sqlite", device="cpu", batch_size=2, workers=1)
    st.index(src / "template", "demo", CH)
    violations: list[str] = []
    service_errors: list[str] = []
    deadline = time.monotonic() + SECONDS
    sessions = [Session(i, st, src, template, common, deadline, violations, service_errors) for i in range(SESSIONS)]
    before = snapshot(tmp_path, data)
    for s in sessions:
        s.start()
    for s in sessions:
        s.join(timeout=SECONDS + 60)
        assert not s.is_alive(), f"{s.name} hangs"
    assert not violations, "\n".join(violations[:10])
    assert sum(s.steps for s in sessions) >= SESSIONS * 10, [s.steps for s in sessions]

    live = {c.name for c in st.collections()}
    for s in sessions:
        assert s.collection in live
        got = {m.sha256 for m in st.members(s.collection)}
        assert got <= s.allowed, f"{s.name} holds images it never uploaded"
        assert got == s.model, f"{s.name}: missing {len(s.model - got)}, unexpected {len(got - s.model)}"
        assert not set(s.dropped) & live, f"{s.name}: a dropped gallery came back"
    for name in live:
        if name.startswith("idle-"):
            owner = sessions[int(name.split("-")[1])]
            assert {m.sha256 for m in st.members(name)} <= owner.allowed
    assert live <= {"demo"} | {s.collection for s in sessions} | {n for n in live if n.startswith("idle-")}
    assert {m.sha256 for m in st.members("demo")} == set(template)

    referenced = set()
    members = {}
    for name in sorted(live):
        members[name] = sorted((m.sha256, m.name) for m in st.members(name))
        for m in st.members(name):
            assert m.path and Path(m.path).is_file(), f"{name}/{m.name}: its file {m.path} is gone"
            assert sha(Path(m.path).read_bytes()) == m.sha256, f"{name}/{m.name}: its file holds other content"
            referenced.add(Path(m.path).resolve())
    stored = {p.resolve() for p in st.blob_root.rglob("*") if p.is_file()} if st.blob_root.is_dir() else set()
    assert stored <= referenced, f"files no member holds: {sorted(p.name for p in stored - referenced)[:5]}"
    assert st.store.integrity_ok()

    reopened = Studio(data / "studio.sqlite", device="cpu", batch_size=2, workers=1)
    try:
        assert {c.name for c in reopened.collections()} == live
        for name in live:
            assert sorted((m.sha256, m.name) for m in reopened.members(name)) == members[name]
        s = sessions[0]
        if s.model:
            digest = min(s.model)
            hits = reopened.search(s.files[digest], s.collection, PX, SearchConfig(k=50, rerank="none")).hits
            assert {h.sha256 for h in hits} == s.model
    finally:
        reopened.close()
        st.close()

    after = snapshot(tmp_path, data)
    assert after == before, {
        "new": sorted(set(after) - set(before))[:10],
        "gone": sorted(set(before) - set(after))[:10],
        "changed": sorted(k for k in set(after) & set(before) if after[k] != before[k])[:10],
    }
