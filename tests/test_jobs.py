"""Long operations in a thread: progress, cancellation between steps, one job per owner and kind.

Interleavings are forced with events, never with sleeps: each test decides
exactly where the worker stands when the watcher acts.
"""

import threading

import pytest

from retrieval.service.jobs import Cancelled, Job, Jobs
from retrieval.service.reports import ServiceError


def stepping(steps: int, gate: threading.Event, reached: threading.Event):
    """Work that reports each step and, after the first, waits at ``gate`` until the test lets it go."""
    def work(job: Job):
        for i in range(steps):
            job.progress(i, steps, f"step {i}")
            if i == 0:
                reached.set()
                gate.wait(10)
        return "done"
    return work


def test_a_job_reports_where_it_is_and_returns_its_result():
    gate, reached = threading.Event(), threading.Event()
    job = Job(stepping(3, gate, reached), name="demo").start()
    assert reached.wait(10)
    snap = job.snapshot()
    assert (snap.done, snap.total, snap.message, snap.running, snap.cancelling) == (0, 3, "step 0", True, False)
    gate.set()
    assert job.wait(10)
    assert job.result == "done" and job.error is None and not job.cancelled
    assert not job.snapshot().running


def test_cancel_stops_at_the_next_step_and_keeps_no_result():
    gate, reached = threading.Event(), threading.Event()
    job = Job(stepping(5, gate, reached)).start()
    assert reached.wait(10)
    job.cancel()  # while the worker is between step 0 and step 1
    assert job.snapshot().cancelling
    gate.set()
    assert job.wait(10)
    assert job.cancelled and isinstance(job.error, Cancelled) and job.result is None
    assert job.snapshot().message == "step 1"  # it got exactly one step further: the check is in progress()


def test_note_records_without_cancelling_for_code_that_checks_the_event_itself():
    seen = []

    def work(job: Job):
        job.cancel()
        job.note(1, 2, "still here")  # training checks cancel_event between batches itself
        seen.append(job.cancel_event.is_set())
        return 42

    job = Job(work).start()
    assert job.wait(10) and job.result == 42 and seen == [True]


def test_an_error_in_the_work_is_handed_to_the_watcher():
    def work(job: Job):
        raise ValueError("unreadable gallery")

    job = Job(work).start()
    assert job.wait(10)
    assert isinstance(job.error, ValueError) and not job.cancelled


def test_one_running_job_per_owner_and_kind_and_cancel_reaches_only_ones_own():
    jobs = Jobs()
    gates = {owner: (threading.Event(), threading.Event()) for owner in ("tab-a", "tab-b")}
    running = {owner: jobs.start(owner, "training", Job(stepping(3, *gates[owner]))) for owner in gates}
    assert all(reached.wait(10) for _, reached in gates.values())
    with pytest.raises(ServiceError, match="already running"):
        jobs.start("tab-a", "training", Job(stepping(1, threading.Event(), threading.Event())))
    other_kind = jobs.start("tab-a", "evaluation", Job(lambda job: "ok"))  # another kind may run beside it
    assert other_kind.wait(10) and other_kind.result == "ok"

    assert jobs.cancel("tab-a", "training")
    for gate, _ in gates.values():
        gate.set()
    assert running["tab-a"].wait(10) and running["tab-a"].cancelled
    assert running["tab-b"].wait(10) and running["tab-b"].result == "done"  # the other tab's job was untouched

    assert not jobs.cancel("tab-a", "training")  # finished: nothing to cancel
    jobs.finish("tab-a", "training", running["tab-a"])
    again = jobs.start("tab-a", "training", Job(lambda job: "again"))  # the slot is free again
    assert again.wait(10) and again.result == "again"


def test_finish_forgets_only_the_job_it_is_given():
    """A watcher that finishes late must not forget a newer job of the same owner (its Cancel must still work)."""
    jobs = Jobs()
    old = jobs.start("tab", "evaluation", Job(lambda job: 1))
    assert old.wait(10)
    gate, reached = threading.Event(), threading.Event()
    new = jobs.start("tab", "evaluation", Job(stepping(3, gate, reached)))
    assert reached.wait(10)
    jobs.finish("tab", "evaluation", old)  # the old watcher's cleanup comes after the new job started
    assert jobs.cancel("tab", "evaluation")  # the new job is still reachable
    gate.set()
    assert new.wait(10) and new.cancelled


def test_a_job_whose_watcher_goes_away_is_cancelled():
    """A closed page's handler finishes its job while it still runs: it stops instead of saving a result."""
    jobs = Jobs()
    gate, reached = threading.Event(), threading.Event()
    job = jobs.start("tab", "training", Job(stepping(3, gate, reached)))
    assert reached.wait(10)
    jobs.finish("tab", "training", job)  # the generator's ``finally`` on disconnect
    gate.set()
    assert job.wait(10) and job.cancelled
