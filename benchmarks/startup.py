"""App start-up and query latency, measured from outside as a user sees it.

For a fresh data folder (cold: the demo gallery is indexed) and then the same
folder again (warm: everything cached), measure from process start to
(1) the page answering HTTP 200 and (2) the first answered ``/search`` call
through gradio_client; then the latency of ``--queries`` more searches on the
demo gallery (client round trip, and the server's own stage timings, among them the
query's embedding), and the same warm start with ``--runtime keras`` beside it.

    python -m benchmarks.startup [--queries 30] [--out docs/startup.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "assets" / "demo"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_once(data: Path, queries: int, runtime: str = "auto") -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gradio_client import Client, handle_file

    port = _port()
    url = f"http://127.0.0.1:{port}/"
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--data-dir", str(data), "--runtime", runtime],
                            cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                if urllib.request.urlopen(url, timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.05)
        page_s = time.perf_counter() - started
        client = Client(url, verbose=False)
        client.predict(handle_file(str(DEMO / "cat" / "chelsea.jpg")), api_name="/search")
        first_s = time.perf_counter() - started
        files = sorted(DEMO.rglob("*.jpg"))[:queries]
        round_trips, server, embed = [], [], []
        for f in files:
            t = time.perf_counter()
            _, timing = client.predict(handle_file(str(f)), api_name="/search")
            round_trips.append(1000 * (time.perf_counter() - t))
            server.append(float(re.search(r"total \*\*([\d.]+) ms", timing).group(1)))
            embed.append(float(re.search(r"embed \*\*([\d.]+) ms", timing).group(1)))
        q = statistics.quantiles
        return {"runtime": re.search(r"· \*\*([^*]+)\*\*$", timing).group(1),
                "page_s": round(page_s, 2), "first_query_s": round(first_s, 2),
                "first_query_after_page_s": round(first_s - page_s, 2), "queries": len(files),
                "embed_ms_p50": round(statistics.median(embed), 1), "embed_ms_p95": round(q(embed, n=20)[18], 1),
                "round_trip_ms_p50": round(statistics.median(round_trips), 1), "round_trip_ms_p95": round(q(round_trips, n=20)[18], 1),
                "server_ms_p50": round(statistics.median(server), 1), "server_ms_p95": round(q(server, n=20)[18], 1)}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--out", default="docs/startup.json")
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    result = {"command": f"python -m benchmarks.startup --queries {args.queries}",
              "cold": run_once(data, args.queries), "warm": run_once(data, args.queries),
              "warm, --runtime keras": run_once(data, args.queries, "keras")}
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
