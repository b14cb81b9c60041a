"""A Hugging Face Space, as near as this machine gets to one: a cold start from requirements.txt alone.

A fresh virtual environment WITHOUT the system's packages gets exactly what a
Space installs (``pip install -r requirements.txt``; pip's cache, filled by
tests/install.sh, makes it mostly unpacking), then ``python app.py`` starts
from the checkout with the variables a Space sets (``SYSTEM=spaces``,
``SPACE_ID``, ``GRADIO_SERVER_NAME=0.0.0.0``, a port), an empty HOME and a
watched TMPDIR. The test waits for the page, runs one search through the
``/search`` API with ``gradio_client``, and checks that nothing was written
outside the data folder. Once with RETRIEVAL_DATA_DIR set, once without it
(the Space default: see ``retrieval.settings.hosting``).

The cold-start figures (install, page up, first answered query) are printed
and written to ``space-smoke.json`` in the data folder; README "Run it as a
Hugging Face Space" quotes them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import stop_process

ROOT = Path(__file__).resolve().parents[1]
QUERY = ROOT / "assets" / "demo" / "cat" / "chelsea.jpg"
DROPPED = ("PYTHONPATH", "RETRIEVAL_DATA_DIR", "RETRIEVAL_CACHE_DIR", "KERAS_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME",
           "XDG_CONFIG_HOME", "GRADIO_TEMP_DIR", "MPLCONFIGDIR", "VIRTUAL_ENV", "TMPDIR", "HOME")


@pytest.fixture(scope="module")
def space_python(tmp_path_factory):
    """A virtualenv holding requirements.txt only; (python, seconds the install took)."""
    venv = tmp_path_factory.mktemp("space") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    start = time.perf_counter()
    pip = subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(ROOT / "requirements.txt")],
                         capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - start
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    leaked = subprocess.run([str(python), "-c", "import pytest"], capture_output=True).returncode == 0
    assert not leaked, "the Space's virtualenv sees the test requirements: it is not isolated"
    return python, seconds


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _git_state() -> tuple[str, list[str]] | None:
    """The checkout's status, and its ignored files other than bytecode (which Python writes on import)."""
    if not (ROOT / ".git").exists():
        return None
    status = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    ignored = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"], cwd=ROOT,
                             capture_output=True, text=True).stdout.splitlines()
    return status, sorted(line for line in ignored if line.startswith("!!") and "__pycache__" not in line)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("explicit", [True, False], ids=["RETRIEVAL_DATA_DIR", "space-default"])
def test_space_cold_start_answers_a_search(space_python, explicit, tmp_path, monkeypatch):
    from gradio_client import Client, handle_file

    from retrieval.settings import hosting

    python, install_s = space_python
    home, tmp, data = tmp_path / "home", tmp_path / "tmp", tmp_path / "data"
    home.mkdir()
    tmp.mkdir()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in DROPPED and not k.startswith("GRADIO_")}
    env.update(HOME=str(home), TMPDIR=str(tmp), SYSTEM="spaces", SPACE_ID="test/retrieval-studio",
               SPACE_HOST="test-retrieval-studio.hf.space", GRADIO_SERVER_NAME="0.0.0.0",
               GRADIO_SERVER_PORT=str(port), PYTHONUNBUFFERED="1", PATH=f"{python.parent}:{env.get('PATH', '')}")
    expected = hosting(env).data_dir  # without RETRIEVAL_DATA_DIR: /data/retrieval-studio or under HOME
    if explicit or not expected.is_relative_to(tmp_path):  # never write into a real /data from a test
        env["RETRIEVAL_DATA_DIR"] = str(data)
        expected = data
    before = _git_state()
    log_path = tmp_path / "app.log"
    started = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([str(python), "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        while True:
            try:
                if urllib.request.urlopen(url, timeout=2).status == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, f"app exited {proc.returncode}:\n{log_path.read_text()[-4000:]}"
            assert time.perf_counter() - started < 300, f"no page after 300 s:\n{log_path.read_text()[-4000:]}"
            time.sleep(0.25)
        page_s = time.perf_counter() - started
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        client = Client(url, verbose=False, download_files=False)
        results, timings = client.predict(handle_file(str(QUERY)), api_name="/search")
        first_query_s = time.perf_counter() - started
        client.close()
    finally:
        stop_process(proc, timeout=30)
    log = log_path.read_text()

    # Real results: the demo photo is its own top hit, every result has its rank and label.
    assert len(results) >= 5, log[-3000:]
    captions = [r["caption"] for r in results]
    assert captions[0].startswith("#1 ") and captions[0].endswith(" cat"), captions
    assert all(c.startswith(f"#{i} ") for i, c in enumerate(captions, 1)), captions
    assert "chelsea" in json.dumps(results[0]["image"]), results[0]
    assert "embed" in timings and "search" in timings

    # Everything went into the data folder: HOME holds at most the data folder itself, TMPDIR nothing,
    # and the checkout is as it was.
    assert (expected / "retrieval.sqlite").is_file()
    home_files = [f for f in _files(home) if not (home / f).is_relative_to(expected) and not expected.is_relative_to(
        home / f)]
    assert home_files == [], f"written into HOME: {home_files[:20]}"
    assert _files(tmp) == [], f"written into TMPDIR: {_files(tmp)[:20]}"
    if before is not None:
        assert _git_state() == before, "the app changed the checkout"
    # Gradio starts a hot-reload watcher on Spaces that needs the `spaces` package, which only a real Space
    # installs: its one traceback is expected here; any other is not.
    unexpected = [t for t in log.split("Traceback (most recent call last):")[1:]
                  if "`spaces` package is required" not in t]
    assert not unexpected, log[-4000:]

    figures = {"scenario": "RETRIEVAL_DATA_DIR" if explicit else "space-default", "data_dir": str(expected),
               "venv_install_s": round(install_s, 1), "page_s": round(page_s, 1),
               "first_query_s": round(first_query_s, 1), "cpu_count": os.cpu_count()}
    (expected / "space-smoke.json").write_text(json.dumps(figures, indent=1))
    print(f"\nSpace cold start: {json.dumps(figures)}")
