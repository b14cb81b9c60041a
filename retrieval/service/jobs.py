"""Long operations run in a thread that a caller can watch and cancel.

Why a thread and not the caller's own: a UI handler must keep answering (a
progress line, a loss curve, a Cancel button) while training or an evaluation
runs, and the CLI wants the same cancel-between-steps semantics on Ctrl-C.
Cancellation is cooperative: the work calls ``progress`` between steps and
that call raises ``Cancelled`` once ``cancel()`` was asked for, so nothing is
interrupted halfway through a write.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..adapt import Cancelled
from .reports import ServiceError

__all__ = ["Cancelled", "Job", "Jobs", "Snapshot"]


@dataclass(frozen=True)
class Snapshot:
    """What a watcher may show while the job runs."""

    done: int
    total: int
    message: str
    seconds: float
    running: bool
    cancelling: bool


@dataclass
class Job:
    """One call of ``work(job)`` in a daemon thread; ``work`` reports through ``job.progress``."""

    work: Callable[["Job"], Any]
    name: str = "job"
    history: list[dict] = field(default_factory=list)  # free-form records the work appends (e.g. epochs)
    result: Any = None
    error: BaseException | None = None
    _cancel: threading.Event = field(default_factory=threading.Event)
    _position: tuple[int, int, str] = (0, 0, "starting…")
    _started: float = 0.0
    _thread: threading.Thread | None = None

    def start(self) -> "Job":
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.result = self.work(self)
        except BaseException as exc:  # handed to whoever waits on the job
            self.error = exc

    @property
    def cancel_event(self) -> threading.Event:
        """For engine calls that take an Event (training checks it between batches)."""
        return self._cancel

    def note(self, done: int, total: int, message: str = "") -> None:
        """Record where the work is (for code that checks ``cancel_event`` itself, like training)."""
        self._position = (int(done), int(total), message)

    def progress(self, done: int, total: int, message: str = "") -> None:
        """Record where the work is; raise ``Cancelled`` if the user asked to stop."""
        self.note(done, total, message)
        if self._cancel.is_set():
            raise Cancelled(f"{self.name} cancelled")

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return isinstance(self.error, Cancelled)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """True once the work has finished (successfully or not)."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.alive()

    def snapshot(self) -> Snapshot:
        done, total, message = self._position
        return Snapshot(done, total, message, time.monotonic() - self._started, self.alive(), self._cancel.is_set())


class Jobs:
    """The running job of each owner and kind (a browser tab's training, its evaluation).

    Why keyed by owner: a Cancel button must reach the job its own tab
    started and never another tab's; a finished job is forgotten by the one
    that waited on it (``finish``), so a later Cancel says nothing is running.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._jobs: dict[tuple[str, str], Job] = {}

    def start(self, owner: str, kind: str, job: Job) -> Job:
        with self._lock:  # started inside the lock: a second start can never see it registered but not alive
            running = self._jobs.get((owner, kind))
            if running is not None and running.alive():
                raise ServiceError(f"a {kind} is already running for this page: wait for it or cancel it")
            self._jobs[(owner, kind)] = job
            return job.start()

    def cancel(self, owner: str, kind: str) -> bool:
        with self._lock:
            job = self._jobs.get((owner, kind))
        if job is None or not job.alive():
            return False
        job.cancel()
        return True

    def finish(self, owner: str, kind: str, job: Job) -> None:
        """The watcher is done with ``job``; a job still running (its page went away) is cancelled, so it
        neither saves a result nobody asked for any more nor runs beside the next one."""
        if job.alive():
            job.cancel()
        with self._lock:
            if self._jobs.get((owner, kind)) is job:
                del self._jobs[(owner, kind)]
