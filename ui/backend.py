"""The app's one Studio: start-up (the demo gallery, indexed in the background), its status line, the session sweep.

With ``--gallery NAME`` the shared gallery is NAME, a gallery of the database
(never indexed here): start-up only checks it exists, warms the model up on
one of its images and, for a Milvus-served one, says where it is served from.

Why in the background: the page should answer within seconds of ``python app.py``
while the demo is embedded (about a minute on a 2-core CPU the first time,
from the cache later). The user can stop that first indexing and keep what
is done, or resume it; a search waits only while it actually runs.
"""

from __future__ import annotations

import os
import shlex
import threading
import time
from pathlib import Path

from retrieval import ServiceError
from retrieval.adapt import Cancelled

from .formatting import code
from .sessions import DEMO, SESSION_PREFIX
from .settings import AppSettings

HERE = Path(__file__).resolve().parents[1]
DEMO_DIR = HERE / "assets" / "demo"
DEMO_EXAMPLES = ("cat/chelsea_crop.jpg", "coffee/coffee_flipped.jpg", "rocket/rocket_faded.jpg",
                 "texture/gravel_crop.jpg", "fashion-sneaker/fmnist-test-0009.png")
EXAMPLES = 5  # a named gallery's examples: its first readable images, one per label first
EXAMPLE_POOL = EXAMPLES * 40  # ...picked among its first this many members: a huge gallery is not walked whole


class Backend:
    """The one Studio of this process, the demo's start-up state, and cleanup."""

    def __init__(self, settings: AppSettings):
        from retrieval import Studio
        from retrieval.settings import Limits

        self.settings = settings
        limits = Limits(max_pixels=settings.max_pixels, max_files=settings.max_files,
                        max_total_bytes=settings.max_upload_mb * 1024 * 1024,
                        max_file_bytes=min(100, settings.max_upload_mb) * 1024 * 1024)
        self.studio = Studio(settings.data_dir / "retrieval.sqlite", device="auto", limits=limits,
                             runtime=settings.runtime)
        self.ready = threading.Event()
        self.progress = (0, 0)
        self.error: str | None = None
        self.stopped = False  # the user stopped the demo's first indexing; what was done is kept
        self.gpus: list[str] | None = None  # None until TensorFlow has looked
        self.detected = threading.Event()  # set once ``gpus`` is known
        self.device_note = "detecting device…"
        self.runtime_note = ""
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.template = settings.gallery or DEMO  # the shared gallery every tab starts on
        self.named = settings.gallery is not None
        self.served: dict | None = None  # {kind, uri, name} when the template is served from Milvus
        self._folders: list[str] = []
        self._examples: list[str] = [str(DEMO_DIR / p) for p in DEMO_EXAMPLES if (DEMO_DIR / p).exists()]

    # -- the shared gallery -----------------------------------------------------------------
    def missing_gallery(self) -> str | None:
        """Why ``--gallery`` cannot be served (one line), or None; reads what the page needs of it once."""
        if not self.named:
            return None
        name = self.template
        if name not in {c.name for c in self.studio.collections()}:
            db = self.studio.store.path
            return (f"no gallery named {name!r} in {db}: create it with "
                    f"python -m retrieval index FOLDER --collection {shlex.quote(name)} --db {shlex.quote(str(db))}")
        self.served = self.studio.served_by(name)
        # Examples come from the first few members only: a gallery served from Milvus may hold millions.
        self._examples = _examples([m for m in self.studio.members(name, limit=EXAMPLE_POOL) if m.path])
        # The folders must cover every member, or results from the others would not show; read once, at start-up.
        # (The engine has no folders-only query yet: this still reads every member's row, once.)
        self._folders = _folders(m.path for m in self.studio.members(name) if m.path)
        return None

    @property
    def read_only(self) -> bool:
        """A Milvus-served template is never forked: a private copy would be searched in process, every
        vector loaded here."""
        return self.served is not None

    @property
    def served_from(self) -> str | None:
        """Where the template is served from, in words ("Milvus Lite file …"), or None (in process)."""
        if self.served is None:
            return None
        from retrieval.milvus import describe

        return describe(self.served["uri"])

    @property
    def gallery_label(self) -> str:
        return f"the gallery {code(self.template)}" if self.named else "the demo gallery"

    def examples(self) -> list[str]:
        """Example queries: the demo's, or a few of the named gallery's own readable images (or none)."""
        return list(self._examples)

    def gallery_folders(self) -> list[str]:
        """Folders the named gallery's images live in: the page may show files from there."""
        return list(self._folders)

    def search_defaults(self):
        """The template's default search (a Milvus-served one ranks without what needs the whole gallery)."""
        from retrieval import SearchConfig

        return self.studio.search_defaults(self.template) if self.named else SearchConfig()

    def start(self) -> None:
        self._start_indexing()
        threading.Thread(target=self._cleanup_loop, name="session-cleanup", daemon=True).start()

    def _start_indexing(self) -> None:
        self._stop.clear()
        self.stopped, self.error = False, None
        self.ready.clear()
        threading.Thread(target=self._warm_up, name="demo-index", daemon=True).start()

    def _detect_gpus(self) -> None:
        """What TensorFlow sees, said once on the status line; the page waits on ``detected``."""
        from retrieval.device import gpu_names

        try:
            self.gpus = gpu_names()
        finally:
            self.detected.set()
        self.device_note = (f"GPU available: {self.gpus[0]}." if self.gpus else
                            "No GPU visible to TensorFlow here: everything runs on the CPU.")

    def _warm_up(self) -> None:
        """Index the demo (cached after the first start), then compile the model once."""
        if self.named:
            return self._warm_up_named()
        try:
            self._detect_gpus()

            def progress(done: int, total: int, _message: str) -> None:
                self.progress = (done, total)
                if self._stop.is_set():
                    raise Cancelled("demo indexing stopped")

            self.studio.index(DEMO_DIR, DEMO, progress=progress)
            first = next(iter(sorted(DEMO_DIR.rglob("*.jpg"))))
            result = self.studio.search(first, DEMO)
            from retrieval import ExtractorConfig

            note = self.studio.backbone(ExtractorConfig()).runtime_note
            self.runtime_note = f"Inference: **{result.runtime}** ({note})."
        except Cancelled:
            self.stopped = True
            self._describe_demo()
        except Exception as exc:  # shown in the page instead of a dead app
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.ready.set()

    def _warm_up_named(self) -> None:
        """A named gallery is indexed already: compile the model once on one of its images (the first search
        of a Milvus-served one also brings Milvus up to date)."""
        try:
            from retrieval import ExtractorConfig

            self._detect_gpus()
            if self._examples:
                result = self.studio.search(self._examples[0], self.template, ExtractorConfig(),
                                            self.search_defaults())
                runtime = result.runtime
            else:
                runtime = self.studio.backbone(ExtractorConfig()).runtime
            note = self.studio.backbone(ExtractorConfig()).runtime_note
            self.runtime_note = f"Inference: **{runtime}** ({note})."
        except Exception as exc:  # shown in the page instead of a dead app
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.ready.set()

    def _describe_demo(self) -> None:
        """Captions and tags for the demo images indexed so far (a full index applies them on its own)."""
        sidecar = DEMO_DIR / "metadata.csv"
        if sidecar.exists():
            try:
                self.studio.import_metadata(sidecar, DEMO)
            except Exception:
                pass  # text search then finds nothing in the partial demo; image search is unaffected

    def stop_indexing(self) -> bool:
        """Stop the demo's first indexing after the current batch; False if it is not running."""
        with self._lock:
            if self.ready.is_set() or not self.settings.private_host or self.named:  # a shared demo: by nobody
                return False
            self._stop.set()
            return True

    def resume_indexing(self) -> bool:
        """Index the rest of the demo (what is stored is skipped); False unless it was stopped."""
        with self._lock:
            if not (self.ready.is_set() and self.stopped):
                return False
            self._start_indexing()
            return True

    def cleanup_interval(self) -> float:
        every = self.settings.cleanup_every_s
        return every if every is not None else max(60, min(600, self.settings.session_ttl_s // 4))

    def _cleanup_loop(self) -> None:
        while True:
            try:
                self.studio.cleanup(SESSION_PREFIX, self.settings.session_ttl_s)
            except Exception:
                pass  # a busy database is retried next round
            time.sleep(self.cleanup_interval())

    def wait(self) -> None:
        self.ready.wait(timeout=600)
        if self.error:
            raise ServiceError(f"{self.gallery_label} could not be prepared: {self.error}")

    def devices(self) -> list[str]:
        """Device choices for the menus: "gpu" only where TensorFlow sees one.

        Without an NVIDIA (or WSL) device node TensorFlow cannot see a GPU,
        which answers at once on most machines; otherwise this waits for the
        start-up thread to ask TensorFlow (seconds), so an API call with
        ``device="gpu"`` is accepted wherever one works.
        """
        if self.gpus is None and not any(Path("/dev").glob("nvidia[0-9]*")) and not Path("/dev/dxg").exists():
            return ["auto", "cpu"]
        self.detected.wait(timeout=120)
        return ["auto", "cpu", "gpu"] if self.gpus else ["auto", "cpu"]

    def status(self) -> str:
        where = f" {self.settings.where}" if self.settings.where else ""
        if self.named:
            served = self.served_from
            name = code(self.template)
            where = (f" Gallery {name}: served from **{served}** (read-only here).{where}" if served
                     else f" Gallery {name}.{where}")
        if not self.ready.is_set():
            if self.named:
                return f"**Preparing {self.gallery_label}…** loading the model.{where}"
            done, total = self.progress
            verb = "Stopping" if self._stop.is_set() else "Preparing"
            return f"**{verb} the demo gallery…** {done}/{total or '?'} images indexed.{where}"
        if self.error:
            return f"**Not ready:** {self.error}{where if self.named else ''}"
        if self.stopped:
            done, total = self.progress
            return (f"**Demo indexing stopped** at {done}/{total or '?'} images: the demo gallery has the images "
                    f"indexed so far. Resume to index the rest.{where}")
        return f"**Ready.** {self.device_note} {self.runtime_note}{where}"


def _folders(paths) -> list[str]:
    """The folders holding these files, none listed inside another one listed."""
    parents = sorted({os.path.dirname(os.path.abspath(p)) for p in paths})
    kept: list[str] = []
    for folder in parents:  # sorted: a folder comes before the folders inside it
        if not kept or os.path.commonpath([kept[-1], folder]) != kept[-1]:
            kept.append(folder)
    return kept


def _examples(members) -> list[str]:
    """Up to ``EXAMPLES`` readable images of the gallery, one per label before a second of any."""
    first, rest, seen = [], [], set()
    for m in members[:EXAMPLE_POOL]:  # a huge gallery is not walked file by file
        if len(first) >= EXAMPLES:
            break
        if not os.access(m.path, os.R_OK) or not os.path.isfile(m.path):
            continue
        (rest if m.label in seen else first).append(m.path)
        seen.add(m.label)
    return (first + rest)[:EXAMPLES]
