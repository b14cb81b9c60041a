"""Every hostile or awkward input, through the engine, the CLI and the app API: one table.

For each channel the whole corpus goes in as one batch. Each file must be
indexed or skipped with its reason (the table in ``badinputs.EXPECTED``),
the good files must be searchable afterwards, nothing may appear outside the
data folder, and the peak memory of the work stays bounded (a decoded
50000 x 50000 bomb would need 7.5 GB, the zip bomb 2 GB).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import badinputs as B
import pytest
from conftest import APP

ROOT = Path(__file__).resolve().parents[1]
PEAK_GROWTH_LIMIT = 1 << 30  # bytes of resident memory the bad batch may add
ESCAPED = Path("/tmp") / B.ESCAPE_NAME


def _snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for path in root.rglob("*"):
        if skip in path.parents or path == skip:
            continue
        st = path.lstat()
        out[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def _peak_rss(pid: int | str = "self") -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1)) * 1024


def _reset_peak(pid: int | str = "self") -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """corpus/ (loose files + a symlink out), zips/, outside/ and an empty data/."""
    root = tmp_path_factory.mktemp("sandbox")
    B.make_folder(root / "corpus", root / "outside" / "secret.png")
    zips = B.make_zips(root / "zips")
    return root, zips


def _check_nothing_escaped(root: Path, before: dict, data: Path) -> None:
    assert _snapshot(root, data) == before, "something was written outside the data folder"
    assert not ESCAPED.exists()
    assert not any(p.name == "escaped.png" for p in root.rglob("*"))


@pytest.fixture(scope="module")
def engine_outcomes(sandbox):
    from retrieval import Studio
    from retrieval.config import ExtractorConfig

    root, zips = sandbox
    data = root / "data-engine"
    before = _snapshot(root, data)
    studio = Studio(data / "db.sqlite", device="cpu")
    cfg = ExtractorConfig(backbone="pixels")
    _reset_peak()
    baseline = _peak_rss()
    started = time.monotonic()
    report = studio.index(root / "corpus", "bad", cfg)
    report.merge(studio.upload([(z, z.name, None) for z in zips], "bad", cfg))
    elapsed = time.monotonic() - started
    growth = _peak_rss() - baseline
    _check_nothing_escaped(root, before, data)
    yield B.outcomes(report.added, [(s.name, s.reason) for s in report.skipped]), studio, growth, elapsed
    studio.close()


@pytest.fixture(scope="module")
def cli_outcomes(sandbox):
    root, zips = sandbox
    data, home = root / "data-cli", root / "home-cli"
    home.mkdir()
    before = _snapshot(root, data)
    argv = ["index", str(root / "corpus"), *map(str, zips), "--db", str(data / "db.sqlite"),
            "--model", "pixels", "--collection", "bad", "--json"]
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child of
    # this (large) test process would report the parent's peak
    wrapper = ("import re, runpy, sys; sys.argv = ['retrieval', *sys.argv[1:]]\n"
               "try:\n    runpy.run_module('retrieval', run_name='__main__')\n"
               "finally:\n    kb = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
               "    print('PEAK', int(kb) * 1024, file=sys.stderr)")
    env = {**os.environ, "HOME": str(home), "RETRIEVAL_DATA_DIR": str(data), "TMPDIR": str(data / "tmp")}
    (data / "tmp").mkdir(parents=True)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", wrapper, *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak = int(re.search(r"PEAK (\d+)", proc.stderr).group(1))
    after_home = list(home.rglob("*"))
    assert after_home == [], f"the CLI wrote into HOME: {after_home}"
    _check_nothing_escaped(root, before, data)
    report = json.loads(proc.stdout)
    return B.outcomes(report["added"], [(s["name"], s["reason"]) for s in report["skipped"]]), peak, elapsed


@pytest.fixture(scope="module")
def app_outcomes(sandbox, app_url):
    from gradio_client import Client, handle_file

    root, zips = sandbox
    files = [p for p in sorted((root / "corpus").iterdir()) if p.name in B.LOOSE] + list(zips)
    before = _snapshot(root, root / "no-data-here")
    _reset_peak(APP["pid"])
    baseline = _peak_rss(APP["pid"])
    started = time.monotonic()
    summary, _, _ = Client(app_url, verbose=False).predict([handle_file(str(p)) for p in files],
                                                          api_name="/add_images")
    elapsed = time.monotonic() - started
    growth = _peak_rss(APP["pid"]) - baseline
    assert _snapshot(root, root / "no-data-here") == before
    assert not ESCAPED.exists()
    assert not any(p.name == "escaped.png" for p in APP["data"].parent.rglob("*"))
    added = int(re.search(r"\*\*(\d+) added\*\*", summary).group(1))
    skipped = dict(re.findall(r"^- skipped: `(.+?)`: (.+)$", summary, re.M))
    return added, skipped, growth, elapsed


@pytest.mark.parametrize("name", sorted(B.EXPECTED))
def test_engine_outcome(engine_outcomes, name):
    outcomes = engine_outcomes[0]
    assert name in outcomes, f"{name} was neither indexed nor reported"
    _assert_outcome(outcomes[name], B.EXPECTED[name])


@pytest.mark.parametrize("name", sorted(B.EXPECTED))
def test_cli_outcome(cli_outcomes, name):
    outcomes = cli_outcomes[0]
    assert name in outcomes, f"{name} was neither indexed nor reported"
    _assert_outcome(outcomes[name], B.EXPECTED[name])


def _assert_outcome(got: str, expected: str) -> None:
    if expected == "ok":
        assert got == "ok"
    else:
        assert got != "ok" and expected.lower() in got.lower(), got


def test_app_outcomes(app_outcomes):
    """Through the API every expected skip is reported with its reason, and every good file is added."""
    added, skipped, _, _ = app_outcomes
    expected = {k: v for k, v in B.EXPECTED.items() if k not in B.FOLDER_ONLY}
    assert added == sum(v == "ok" for v in expected.values())
    for name, reason in expected.items():
        if reason == "ok":
            assert name not in skipped
        else:
            assert name in skipped, f"{name} not reported; skipped: {sorted(skipped)}"
            assert reason.lower() in skipped[name].lower()


def test_work_stays_bounded(engine_outcomes, cli_outcomes, app_outcomes):
    """Peak memory and time of the whole bad batch, per channel (a hang guard, not a speed claim)."""
    _, _, engine_growth, engine_s = engine_outcomes
    _, cli_peak, cli_s = cli_outcomes
    _, _, app_growth, app_s = app_outcomes
    assert engine_growth < PEAK_GROWTH_LIMIT and app_growth < PEAK_GROWTH_LIMIT
    assert cli_peak < PEAK_GROWTH_LIMIT  # the whole CLI process
    assert max(engine_s, cli_s, app_s) < 240


def test_good_files_are_searchable_and_upright(engine_outcomes, sandbox):
    """Accepted files are really in the gallery: found first by their own pixels, EXIF applied, names kept."""
    _, studio, _, _ = engine_outcomes
    root, _ = sandbox
    from retrieval.config import ExtractorConfig, SearchConfig

    cfg = ExtractorConfig(backbone="pixels")
    for name in ("ünïcødé 写真.png", "x'; DROP TABLE images; --.png", "cmyk.jpg", "deep_16bit.png"):
        hit = studio.search(root / "corpus" / name, "bad", cfg, SearchConfig(k=1)).hits[0]
        assert hit.name == name
    members = {m.name: m for m in studio.members("bad")}
    rotated = members["exif_rotated.jpg"]
    assert (rotated.width, rotated.height) == (20, 40)  # stored 40 x 20, Orientation=6
    assert members["escape.zip/" + B.SQL_LABEL + "/sql_label.png"].label == B.SQL_LABEL  # stored, not executed
    assert studio.store.db.execute("SELECT count(*) FROM images").fetchone()[0] == len(members)
