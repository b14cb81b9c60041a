"""The command-line contract, run as a user would: a subprocess per command."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "retrieval", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=False, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}: {proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def db(tmp_path_factory, photo_folder):
    path = tmp_path_factory.mktemp("cli") / "cli.sqlite"
    proc = run("index", photo_folder, "--db", path, "--quiet")
    assert "9 added, 0 duplicates, 0 already indexed, 1 skipped" in proc.stdout
    assert "space/notes.jpg: not an image" in proc.stdout
    return path


def test_models_json_lists_offline_default():
    models = {m["name"]: m for m in json.loads(run("models", "--json").stdout)}
    assert models["efficientnet-lite0"]["ready"] and models["efficientnet-lite0"]["dim"] == 1280
    assert "resnet50" in models and "colorhist" in models


def test_search_json_contract(db, photo_folder):
    out = json.loads(run("search", photo_folder / "cats" / "chelsea.jpg", "--db", db, "-k", "3", "--json").stdout)
    first = out["results"][0]
    assert first["rank"] == 1 and first["label"] == "cats" and first["path"].endswith("cats/chelsea.jpg")
    assert len(out["results"]) == 3 and "search_ms" in out["timings"] and "CPU" in out["device"]


def test_evaluate_json_contract(db):
    out = json.loads(run("evaluate", "--db", db, "--metric", "euclidean", "--json").stdout)
    for key in ("map", "p_at_1", "p_at_10", "r_at_10", "ndcg_at_10", "queries"):
        assert key in out
    assert out["queries"] == 9 and 0 < out["map"] <= 1


def test_reindex_json_computes_nothing(db, photo_folder):
    out = json.loads(run("index", photo_folder, "--db", db, "--json").stdout)
    assert out["computed"] == 0 and out["unchanged"] == 9 and out["device"].startswith("none")


@pytest.mark.parametrize("args, message", [
    (["index", "/no/such/folder", "--db", "{db}"], "no such file or folder"),
    (["search", "{photo}", "--db", "{db}", "--model", "nope"], "unknown model 'nope'"),
    (["evaluate", "--db", "{junk}"], "cannot open database"),
    (["evaluate", "--db", "{missing}"], "no database at"),
    (["search", "{photo}", "--db", "{db}", "--collection", "absent"], "no collection named 'absent'"),
    (["drop", "absent", "--db", "{db}"], "no collection named 'absent'"),
    (["drop", "photos", "--db", "{missing}"], "no database at"),
])
def test_user_errors_are_one_line_and_exit_2(db, photo_folder, tmp_path, args, message):
    junk = tmp_path / "junk.sqlite"
    junk.write_text("not a database" * 50)
    values = {"db": db, "photo": photo_folder / "cats" / "chelsea.jpg", "junk": junk, "missing": tmp_path / "m.sqlite"}
    proc = run(*[a.format(**values) for a in args], check=False)
    assert proc.returncode == 2
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr


def test_remove_by_path(tmp_path, photo_folder):
    db = tmp_path / "r.sqlite"
    run("index", photo_folder / "coffee", "--db", db, "--model", "colorhist", "--quiet")
    target = photo_folder / "coffee" / "coffee_crop.jpg"
    assert "removed 1" in run("remove", target, "--db", db).stdout
    assert run("remove", target, "--db", db, check=False).returncode == 1


def _png(path: Path, seed: int) -> Path:
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(path)
    return path


def _copies_of(root: Path, path: Path) -> list[Path]:
    """Files under ``root`` with the same content as ``path`` (uploads are stored by content)."""
    import hashlib

    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return [p for p in root.rglob("*") if p.is_file() and hashlib.sha256(p.read_bytes()).hexdigest() == digest]


def test_drop_deletes_collection_and_its_files_but_not_shared_ones(tmp_path):
    data = tmp_path / "data"
    db = data / "d.sqlite"
    src = tmp_path / "src"
    mine, shared = _png(src / "mine.png", 1), _png(src / "shared.png", 2)
    run("index", mine, shared, "--db", db, "--collection", "session-a", "--model", "colorhist", "--quiet")
    run("index", shared, "--db", db, "--collection", "other", "--model", "colorhist", "--quiet")
    assert len(_copies_of(data, mine)) == 1 and len(_copies_of(data, shared)) == 1  # stored uploads

    proc = run("drop", "session-a", "--db", db)
    assert "session-a" in proc.stdout
    collections = {c["name"]: c["images"] for c in json.loads(run("collections", "--db", db, "--json").stdout)}
    assert collections == {"other": 1}
    assert _copies_of(data, mine) == []  # its image no other collection held: stored file deleted
    assert len(_copies_of(data, shared)) == 1  # the image "other" holds keeps its file
    out = json.loads(run("search", shared, "--db", db, "--collection", "other", "--model", "colorhist", "--json").stdout)
    assert [r["name"] for r in out["results"]] == ["shared.png"]

    again = run("drop", "session-a", "--db", db, check=False)
    assert again.returncode == 2 and again.stdout == ""
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no collection named 'session-a'"), lines
    models = {m["name"] for m in json.loads(run("models", "--db", db, "--json").stdout)}
    assert {"colorhist", "pixels", "efficientnet-lite0"} <= models


def test_every_argument_has_help():
    import argparse

    from retrieval.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert "drop" in subparsers.choices
    missing = [f"{name} {action.dest}" for name, sub in subparsers.choices.items() for action in sub._actions
               if not isinstance(action, argparse._HelpAction) and not action.help]
    assert not missing
