"""The app's one Studio: start-up (the demo gallery, indexed in the background), its status line, the session sweep.

Why in the background: the page should answer within seconds of ``python app.py``
while the demo is embedded (about a minute on a 2-core CPU the first time,
from the cache later). The user can stop that first indexing and keep what
is done, or resume it; a search waits only while it actually runs.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from retrieval import ServiceError
from retrieval.adapt import Cancelled

from .sessions import DEMO, SESSION_PREFIX
from .settings import AppSettings

HERE = Path(__file__).resolve().parents[1]
DEMO_DIR = HERE / "assets" / "demo"


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

    def start(self) -> None:
        self._start_indexing()
        threading.Thread(target=self._cleanup_loop, name="session-cleanup", daemon=True).start()

    def _start_indexing(self) -> None:
        self._stop.clear()
        self.stopped, self.error = False, None
        self.ready.clear()
        threading.Thread(target=self._warm_up, name="demo-index", daemon=True).start()

    def _warm_up(self) -> None:
        """Index the demo (cached after the first start), then compile the model once."""
        try:
            from retrieval.device import gpu_names

            try:
                self.gpus = gpu_names()
            finally:
                self.detected.set()
            self.device_note = (f"GPU available: {self.gpus[0]}." if self.gpus else
                                "No GPU visible to TensorFlow here: everything runs on the CPU.")

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
            if self.ready.is_set() or not self.settings.private_host:  # a shared demo is stopped by nobody
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
            raise ServiceError(f"the demo gallery could not be prepared: {self.error}")

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
        if not self.ready.is_set():
            done, total = self.progress
            verb = "Stopping" if self._stop.is_set() else "Preparing"
            return f"**{verb} the demo gallery…** {done}/{total or '?'} images indexed.{where}"
        if self.error:
            return f"**Not ready:** {self.error}"
        if self.stopped:
            done, total = self.progress
            return (f"**Demo indexing stopped** at {done}/{total or '?'} images: the demo gallery has the images "
                    f"indexed so far. Resume to index the rest.{where}")
        return f"**Ready.** {self.device_note} {self.runtime_note}{where}"
