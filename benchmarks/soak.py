"""Crash and load soak: SIGKILL during indexing, then 8 concurrent clients on the app.

The same two procedures run, shorter, in ``tests/test_reliability.py``; here
they run long enough to mean something and their figures go to
``docs/reliability.json`` and ``docs/reliability.md``.

    python -m benchmarks.soak [--kills 20] [--images 500] [--model efficientnet-lite1]
                              [--clients 8] [--seconds 120]
    python -m benchmarks.soak --stateful 1500 [--stateful-steps 40]

Kill cycle: a fresh database, ``python -m retrieval index`` on N images,
SIGKILL after a random delay drawn from the length of an uninterrupted run,
then checks: ``PRAGMA integrity_check``; every committed image has its
membership and a vector equal to the uninterrupted run's; a re-run computes
exactly the missing embeddings and ends in the same state.

Load: each client is its own gradio_client session, looping over a random
mix of searches (70 %), uploads of a freshly drawn image (20 %) and
evaluations (10 %). Afterwards every client's uploads must all be in its own
gallery and nobody else's, and the SQLite file must pass its integrity check.

Stateful (``--stateful N``, run on its own; the other parts of ``--out`` are
kept): the model-based state machine of ``tests/test_state_machine.py`` (one
Studio, numpy backbones, random programs of index / upload / remove / fork /
session / drop / cleanup / search / evaluate / reopen, invariants after every
step) for N programs of up to ``--stateful-steps`` steps, instead of the CI
budget. Programs, steps, seconds and any violation (with hypothesis' shrunk
program) are recorded.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "assets" / "demo"


# -- crash safety ---------------------------------------------------------------
def make_images(folder: Path, n: int) -> Path:
    """N labelled Fashion-MNIST PNGs (real, distinct images; Debian's dataset-fashion-mnist)."""
    from . import fashion_mnist

    images, labels = fashion_mnist.load("t10k", n)
    return fashion_mnist.write_folder(folder, images, labels)


def _index_cmd(folder: Path, db: Path, model: str) -> list[str]:
    return [sys.executable, "-m", "retrieval", "index", str(folder), "--db", str(db), "--model", model,
            "--collection", "soak", "--json"]


def _env() -> dict:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def read_state(db: Path) -> dict:
    """What a database holds, read through a separate read-only connection."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        images = dict(conn.execute("SELECT id, sha256 FROM images").fetchall())
        members = {r[0] for r in conn.execute("SELECT image_id FROM members")}
        vectors = {images.get(iid): (dim, blob) for iid, dim, blob in
                   conn.execute("SELECT image_id, dim, vector FROM embeddings")}
    finally:
        conn.close()
    return {"integrity": integrity, "images": set(images.values()), "members": {images[i] for i in members},
            "vectors": vectors}


@dataclass
class KillResult:
    delay_s: float
    finished_before_kill: bool
    committed: int  # images with a vector after the kill
    integrity: str
    intact: bool  # every committed vector equals the uninterrupted run's
    orphans: int  # images without membership or vector (must be 0)
    recomputed: int  # embeddings the re-run computed
    complete_after_rerun: bool

    @property
    def ok(self) -> bool:
        return (self.integrity == "ok" and self.intact and self.orphans == 0 and self.complete_after_rerun
                and self.recomputed == self.expected_recompute)

    expected_recompute: int = 0


def _same_vector(a: tuple[int, bytes], b: tuple[int, bytes]) -> bool:
    """Equal up to float noise: a resumed run batches images differently."""
    if a[0] != b[0] or len(a[1]) != len(b[1]):
        return False
    x, y = np.frombuffer(a[1], np.float32), np.frombuffer(b[1], np.float32)
    return bool(np.all(np.isfinite(x)) and float(x @ y) > 0.9999 * float(np.linalg.norm(x) * np.linalg.norm(y)))


def reference_run(folder: Path, work: Path, model: str) -> tuple[dict, float]:
    db = work / "reference.sqlite"
    started = time.perf_counter()
    subprocess.run(_index_cmd(folder, db, model), check=True, capture_output=True, env=_env())
    return read_state(db), time.perf_counter() - started


def _committed(db: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1)
        try:
            return conn.execute("SELECT count(*) FROM embeddings").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:  # not created yet, or its schema not yet committed
        return 0


def kill_cycle(folder: Path, work: Path, model: str, reference: dict, n: int, delay_s: float | None = None,
               after_committed: int | None = None) -> KillResult:
    """SIGKILL the indexer after ``delay_s`` seconds, or once ``after_committed`` vectors are committed."""
    db = work / f"kill-{time.monotonic_ns()}.sqlite"
    started = time.perf_counter()
    proc = subprocess.Popen(_index_cmd(folder, db, model), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=_env())
    if after_committed is None:
        time.sleep(delay_s)
    else:
        while proc.poll() is None and _committed(db) < after_committed:
            time.sleep(0.005)
    delay_s = time.perf_counter() - started
    finished = proc.poll() is not None
    if not finished:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if not db.exists():  # killed before the database was created: nothing to check but the re-run
        state = {"integrity": "ok", "images": set(), "members": set(), "vectors": {}}
    else:
        state = read_state(db)
    intact = all(_same_vector(v, reference["vectors"][sha]) for sha, v in state["vectors"].items())
    orphans = len(state["images"] - state["members"]) + len(state["images"] - set(state["vectors"]))
    rerun = subprocess.run(_index_cmd(folder, db, model), capture_output=True, text=True, env=_env(), check=True)
    report = json.loads(rerun.stdout)
    after = read_state(db)
    complete = (after["integrity"] == "ok" and after["images"] == reference["images"]
                and all(_same_vector(after["vectors"][sha], v) for sha, v in reference["vectors"].items()))
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    return KillResult(round(delay_s, 2), finished, len(state["vectors"]), state["integrity"], intact, orphans,
                      report["computed"], complete, expected_recompute=n - len(state["vectors"]))


def kill_soak(kills: int, n: int, model: str, seed: int = 0, work: Path | None = None) -> dict:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        tmp = Path(tmp)
        folder = make_images(tmp / "images", n)
        reference, full_s = reference_run(folder, tmp, model)
        results = [kill_cycle(folder, tmp, model, reference, n, delay_s=rng.uniform(0.0, full_s)) for _ in range(kills)]
    return {"model": model, "images": n, "uninterrupted_s": round(full_s, 1), "kills": len(results),
            "survived": sum(r.ok for r in results),
            "killed_mid_index": sum(0 < r.committed < n and not r.finished_before_kill for r in results),
            "results": [{**asdict(r), "ok": r.ok} for r in results]}


# -- load -------------------------------------------------------------------------
def fresh_image(seed: int) -> bytes:
    """A distinct small PNG per upload, so every upload is new content."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:96, 0:96]
    a, b, c = rng.uniform(0.02, 0.3, 3)
    img = np.stack([np.sin(a * x + seed), np.cos(b * y + seed), np.sin(c * (x + y))], -1)
    buf = io.BytesIO()
    Image.fromarray(((img + 1) * 127.5).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@dataclass
class ClientLog:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"search": [], "upload": [], "evaluate": []})
    errors: list[str] = field(default_factory=list)
    uploaded: dict[str, Path] = field(default_factory=dict)  # sha256 -> the file this client uploaded
    client: object = None


def _client_loop(url: str, index: int, seconds: float, workdir: Path, log: ClientLog, mix: tuple[float, float]) -> None:
    from gradio_client import Client, handle_file

    rng = random.Random(index)
    queries = sorted(DEMO.rglob("*.jpg"))
    # Output files are not fetched: a browser loads result thumbnails lazily and in
    # parallel from the static route, and fetching all ~70 gallery images after
    # every upload, one by one, measured the client, not the server.
    client = Client(url, verbose=False, download_files=False)
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        r = rng.random()
        kind = "search" if r < mix[0] else "upload" if r < mix[0] + mix[1] else "evaluate"
        started = time.perf_counter()
        try:
            if kind == "search":
                client.predict(handle_file(str(rng.choice(queries))), api_name="/search")
            elif kind == "upload":
                data = fresh_image(index * 100_000 + n)
                path = workdir / f"client{index}-{n}.png"
                path.write_bytes(data)
                summary, _, _ = client.predict([handle_file(str(path))], api_name="/add_images")
                if "**1 added**" not in summary:
                    raise RuntimeError(f"upload not added: {summary[:200]}")
                log.uploaded[hashlib.sha256(data).hexdigest()] = path
            else:
                client.predict(["efficientnet-lite1"], api_name="/evaluate")
            log.latencies[kind].append(time.perf_counter() - started)
        except Exception as exc:  # every failure is counted and reported, never swallowed
            log.errors.append(f"{kind}: {type(exc).__name__}: {str(exc)[:200]}")
        n += 1
    log.client = client


def _top_sha(client, path: Path) -> str | None:
    """sha256 of the first result for this query in the client's own session (fetched by its URL)."""
    import httpx
    from gradio_client import handle_file

    found, _ = client.predict(handle_file(str(path)), k=1, api_name="/search")
    if not found:
        return None
    image = found[0]["image"]
    url = image["url"] if isinstance(image, dict) else None
    data = httpx.get(url, timeout=30).content if url else Path(image).read_bytes()
    return hashlib.sha256(data).hexdigest()


def _verify(logs: list["ClientLog"]) -> tuple[int, int]:
    """After the run: each upload is the top hit of itself in its own session, and never in another's."""
    lost = foreign = 0
    for i, log in enumerate(logs):
        for sha, path in log.uploaded.items():
            lost += _top_sha(log.client, path) != sha
        other = logs[(i + 1) % len(logs)]
        for sha, path in list(other.uploaded.items())[:3] if other is not log else []:
            foreign += _top_sha(log.client, path) == sha
    return lost, foreign


def load_test(url: str, clients: int = 8, seconds: float = 60.0, mix: tuple[float, float] = (0.7, 0.2)) -> dict:
    logs = [ClientLog() for _ in range(clients)]
    with tempfile.TemporaryDirectory() as tmp:
        threads = [threading.Thread(target=_client_loop, args=(url, i, seconds, Path(tmp), logs[i], mix))
                   for i in range(clients)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
        lost, foreign = _verify(logs)
    out = {"clients": clients, "seconds": round(wall, 1), "errors": [e for log in logs for e in log.errors],
           "uploads": sum(len(log.uploaded) for log in logs), "lost_uploads": lost, "foreign_results": foreign}
    every = []
    for kind in ("search", "upload", "evaluate"):
        values = sorted(v for log in logs for v in log.latencies[kind])
        every += values
        out[kind] = _summary(values)
    out["all"] = _summary(sorted(every))
    out["requests_per_s"] = round(len(every) / wall, 2)
    return out


def _summary(values: list[float]) -> dict:
    if not values:
        return {"requests": 0}
    return {"requests": len(values), "p50_ms": round(1000 * statistics.median(values), 1),
            "p95_ms": round(1000 * values[min(len(values) - 1, int(0.95 * len(values)))], 1),
            "max_ms": round(1000 * values[-1], 1)}


def start_app(data: Path) -> tuple[subprocess.Popen, str]:
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**_env(), "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--data-dir", str(data)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    while True:
        try:
            if urllib.request.urlopen(url, timeout=1).status == 200:
                return proc, url
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("app exited during start-up")
            time.sleep(0.2)


def bad_input_table(work: Path) -> list[dict]:
    """The bad-input corpus (tests/badinputs.py) through the engine: outcome and peak memory per channel."""
    sys.path.insert(0, str(ROOT / "tests"))
    import badinputs as B

    from retrieval import Studio
    from retrieval.config import ExtractorConfig

    B.make_folder(work / "corpus", work / "outside" / "secret.png")
    zips = B.make_zips(work / "zips")
    studio = Studio(work / "data" / "db.sqlite", device="cpu")
    cfg = ExtractorConfig(backbone="pixels")
    started = time.perf_counter()
    report = studio.index(work / "corpus", "bad", cfg)
    report.merge(studio.upload([(z, z.name, None) for z in zips], "bad", cfg))
    seconds = time.perf_counter() - started
    studio.close()
    got = B.outcomes(report.added, [(s.name, s.reason) for s in report.skipped])
    rows = [{"input": name, "expected": expected, "outcome": got.get(name, "MISSING"),
             "as_expected": (got.get(name) == "ok") if expected == "ok"
             else (name in got and got[name] != "ok" and expected.lower() in got[name].lower())}
            for name, expected in B.EXPECTED.items()]
    return [{"seconds": round(seconds, 2)}, *rows]


# -- model-based stateful run ------------------------------------------------------
def _describe(exc: BaseException) -> list[str]:
    """One entry per distinct failure: type, message and hypothesis' shrunk program (its notes)."""
    if getattr(exc, "exceptions", None):  # hypothesis found several distinct failures
        return [line for sub in exc.exceptions for line in _describe(sub)]
    notes = "\n".join(getattr(exc, "__notes__", []))
    return [f"{type(exc).__name__}: {str(exc)[:2000]}\n{notes[:20000]}".strip()]


def stateful_soak(programs: int, steps: int) -> dict:
    """The state machine of tests/test_state_machine.py with a long budget."""
    sys.path.insert(0, str(ROOT / "tests"))
    import test_state_machine as machine

    violations: list[str] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            done = machine.run(programs, steps, base=Path(tmp))
        except Exception as exc:  # a violation: recorded with its shrunk program, never swallowed silently
            violations = _describe(exc)
            done = {k: machine.STATS[k] for k in ("programs", "steps")} | {"rules": dict(machine.RULES)}
    return {"max_examples": programs, "max_steps": steps, "programs": done["programs"], "steps": done["steps"],
            "seconds": round(time.perf_counter() - started, 1), "rules": done["rules"], "violations": violations}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--model", default="efficientnet-lite1")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--out", default="docs/reliability.json")
    parser.add_argument("--only-load", action="store_true", help="re-run the load part; keep the rest of --out")
    parser.add_argument("--stateful", type=int, default=0, metavar="N",
                        help="run only the model-based state machine for N programs; keep the rest of --out")
    parser.add_argument("--stateful-steps", type=int, default=40, help="steps per program at most (with --stateful)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.exists() else {}

    if args.stateful:
        stateful = stateful_soak(args.stateful, args.stateful_steps)
        stateful["command"] = f"python -m benchmarks.soak --stateful {args.stateful} --stateful-steps {args.stateful_steps}"
        print(f"stateful: {stateful['programs']} programs, {stateful['steps']} steps in {stateful['seconds']} s, "
              f"{len(stateful['violations'])} violation(s)", flush=True)
        for v in stateful["violations"]:
            print(v, flush=True)
        result = {**previous, "stateful": stateful}
        out.write_text(json.dumps(result, indent=2))
        out.with_suffix(".md").write_text(render(result))
        if stateful["violations"]:
            sys.exit(1)
        return

    if args.only_load:
        timing, bad, kills = {"seconds": previous["bad_inputs"]["seconds"]}, previous["bad_inputs"]["rows"], previous["kills"]
    else:
        with tempfile.TemporaryDirectory() as tmp:
            timing, *bad = bad_input_table(Path(tmp))
        print(f"bad inputs: {sum(r['as_expected'] for r in bad)}/{len(bad)} as expected", flush=True)
        kills = kill_soak(args.kills, args.images, args.model)
    print(f"kills: {kills['survived']}/{kills['kills']} survived ({kills['killed_mid_index']} mid-index)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        proc, url = start_app(data)
        try:
            from gradio_client import Client, handle_file

            Client(url, verbose=False).predict(handle_file(str(DEMO / "cat" / "chelsea.jpg")), api_name="/search")
            load = load_test(url, args.clients, args.seconds)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        conn = sqlite3.connect(f"file:{data / 'retrieval.sqlite'}?mode=ro", uri=True)
        load["integrity_after"] = conn.execute("PRAGMA integrity_check").fetchone()[0]
        conn.close()
    print(f"load: {load['all']} errors {len(load['errors'])} lost {load['lost_uploads']}", flush=True)
    command = (f"python -m benchmarks.soak --kills {args.kills} --images {args.images} --model {args.model} "
               f"--clients {args.clients} --seconds {args.seconds:g}")
    result = {"command": command, "bad_inputs": {"seconds": timing["seconds"], "rows": bad}, "kills": kills, "load": load}
    if "stateful" in previous:  # run on its own (--stateful); kept
        result["stateful"] = previous["stateful"]
    Path(args.out).write_text(json.dumps(result, indent=2))
    Path(args.out).with_suffix(".md").write_text(render(result))


def render(result: dict) -> str:
    if "kills" not in result:  # only the stateful run so far
        return "# Reliability soak\n\n" + render_stateful(result["stateful"])
    k, l = result["kills"], result["load"]
    lines = [
        "# Reliability soak",
        "",
        f"Made by `{result['command']}` on 2 CPU cores; raw figures in `docs/reliability.json`.",
        "",
        "## Bad inputs",
        "",
        f"{len(result['bad_inputs']['rows'])} hostile or awkward inputs in one batch through the engine "
        f"({result['bad_inputs']['seconds']} s for the whole batch); the same table runs through the CLI and the "
        "app API in `tests/test_bad_inputs.py`.",
        "",
        "| input | expected | outcome | as expected |",
        "| --- | --- | --- | --- |",
        *[f"| `{r['input']}` | {r['expected']} | {r['outcome']} | {'yes' if r['as_expected'] else '**NO**'} |"
          for r in result["bad_inputs"]["rows"]],
        "",
        "## SIGKILL during indexing",
        "",
        f"{k['kills']} kills of `python -m retrieval index` on {k['images']} Fashion-MNIST PNGs with `{k['model']}` "
        f"(an uninterrupted run takes {k['uninterrupted_s']} s; each kill at a random moment within that time).",
        "",
        f"- survived: **{k['survived']} / {k['kills']}** (integrity ok, committed vectors intact, no orphans, "
        "re-run computed exactly the missing ones and ended identical to the uninterrupted run)",
        f"- killed with part of the gallery committed: {k['killed_mid_index']}",
        "",
        "| delay s | committed before kill | integrity | intact | re-run computed | expected | ok |",
        "| ---: | ---: | --- | --- | ---: | ---: | --- |",
    ]
    for r in k["results"]:
        lines.append(f"| {r['delay_s']} | {r['committed']} | {r['integrity']} | {r['intact']} | {r['recomputed']} | "
                     f"{r['expected_recompute']} | {r['ok']} |")
    lines += [
        "",
        f"## {l['clients']} concurrent clients for {l['seconds']} s",
        "",
        f"- requests served: **{l['all'].get('requests', 0)}** ({l['requests_per_s']} per second), "
        f"errors: **{len(l['errors'])}**",
        f"- uploads: {l['uploads']}, lost: **{l['lost_uploads']}**, seen by another client: **{l['foreign_results']}**",
        f"- SQLite integrity afterwards: **{l['integrity_after']}**",
        "",
        "| request | count | p50 ms | p95 ms | max ms |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for kind in ("search", "upload", "evaluate", "all"):
        s = l[kind]
        lines.append(f"| {kind} | {s.get('requests', 0)} | {s.get('p50_ms', '')} | {s.get('p95_ms', '')} | "
                     f"{s.get('max_ms', '')} |")
    text = "\n".join(lines) + "\n"
    if "stateful" in result:
        text += "\n" + render_stateful(result["stateful"])
    return text


def render_stateful(s: dict) -> str:
    lines = [
        "## Model-based stateful run",
        "",
        (f"Made by `{s['command']}`: the state machine of `tests/test_state_machine.py` (one Studio on a temporary "
         "SQLite file, numpy backbones; random programs of index, edit-and-reindex, upload, remove, fork, session, "
         "drop, cleanup, search, evaluate and reopen; every invariant checked against a plain-Python model after "
         "every step)."),
        "",
        f"- programs: **{s['programs']}**, steps: **{s['steps']}**, in {s['seconds']} s",
        f"- violations: **{len(s['violations'])}**",
        "",
        "| rule | steps |",
        "| --- | ---: |",
        *[f"| {name} | {n} |" for name, n in s["rules"].items()],
    ]
    for v in s["violations"]:
        lines += ["", "```", v, "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
