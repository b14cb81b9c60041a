"""Crash safety and load on the real CLI and the real app (the soak script runs these longer).

Kills are placed by progress (after a given number of committed vectors), so
every run of this test interrupts the index mid-way; ``benchmarks.soak``
also kills at random times.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from conftest import APP

from benchmarks import soak

IMAGES = 500


@pytest.fixture(scope="module")
def kill_setup(tmp_path_factory):
    work = tmp_path_factory.mktemp("kills")
    folder = soak.make_images(work / "images", IMAGES)
    reference, _ = soak.reference_run(folder, work, "pixels")
    assert len(reference["vectors"]) == IMAGES
    return folder, work, reference


@pytest.mark.parametrize("after", [1, 120, 250, 380])
def test_sigkill_mid_index_loses_nothing_committed(kill_setup, after):
    folder, work, reference = kill_setup
    result = soak.kill_cycle(folder, work, "pixels", reference, IMAGES, after_committed=after)
    assert not result.finished_before_kill and 0 < result.committed < IMAGES, result
    assert result.integrity == "ok"
    assert result.intact and result.orphans == 0  # every committed batch whole, equal to the clean run
    assert result.recomputed == IMAGES - result.committed  # the re-run did only what was missing
    assert result.complete_after_rerun


def test_eight_clients_for_a_minute(app_url):
    """Searches, uploads and evaluations from 8 sessions at once: no errors, nothing lost, nothing shared."""
    report = soak.load_test(app_url, clients=8, seconds=60)
    assert report["errors"] == [], report["errors"][:5]
    assert report["search"]["requests"] > 0 and report["upload"]["requests"] > 0 and report["evaluate"]["requests"] > 0
    assert report["uploads"] == report["upload"]["requests"]
    assert report["lost_uploads"] == 0 and report["foreign_results"] == 0
    conn = sqlite3.connect(f"file:{Path(APP['data']) / 'retrieval.sqlite'}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
