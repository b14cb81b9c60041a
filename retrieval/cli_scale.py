"""The command line's large-gallery options: Ray extraction on ``index``, and ``publish`` to Milvus.

Why apart from ``cli.py``: these options belong to the optional ``scale``
extra (Ray, Milvus), and keeping them together keeps each file one idea.
Like every command, each is one ``Studio`` call plus printing.
"""

from __future__ import annotations

import argparse
import os

from .distributed import AUTO_THRESHOLD, ENGINES, RayOptions


def add_index_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("large galleries (the scale extra: pip install -r requirements-scale.txt)")
    g.add_argument("--engine", default="auto", choices=ENGINES,
                   help=f"where embeddings are computed: in-process, ray (Ray Data actors, one model copy each; "
                        f"vectors also kept as Parquet shards), or auto (default: ray only for a cluster, "
                        f"--ray-address or $RAY_ADDRESS, from {AUTO_THRESHOLD:,} files on; else in-process)")
    g.add_argument("--ray-address", default=os.environ.get("RAY_ADDRESS") or None, metavar="auto|ray://HOST:PORT",
                   help="the Ray cluster to run on: 'auto' (the one this machine belongs to) or ray://HOST:10001 "
                        "(default: $RAY_ADDRESS, else a private Ray on this machine); its nodes need this project "
                        "installed")
    g.add_argument("--gpus-per-worker", type=float, default=0.0, metavar="N",
                   help="GPUs per Ray actor (one model copy each), e.g. 1 for one copy per GPU "
                        "(default: 0, CPU actors)")
    g.add_argument("--cpus-per-worker", type=float, default=1.0, metavar="N",
                   help="CPUs per CPU actor; one CPU of the cluster is left to Ray's own tasks (default: 1)")
    g.add_argument("--ray-workers", type=int, default=None, metavar="N",
                   help="number of Ray actors (default: every GPU group, or as many CPU actors as fit)")
    g.add_argument("--shards", default=None, metavar="DIR_OR_URI",
                   help="where a Ray run writes its Parquet shards (sha256, name, label, size, config, vector), "
                        "and where earlier runs' vectors are looked up first (default: DB.shards/ beside the "
                        "database); any index can be rebuilt from them")
    g.add_argument("--index", default="auto", choices=("auto", "milvus"),
                   help="milvus: serve this collection's searches from Milvus (published after indexing; "
                        "--milvus-uri the first time); auto: leave it as it is (default)")
    g.add_argument("--milvus-uri", default=None, metavar="URI",
                   help="also publish the collection to Milvus and serve its searches from there: a Milvus Lite "
                        "file (*.db), http://HOST:19530 (a Lite server or a cluster); see 'publish'")


def ray_options(args) -> RayOptions:
    return RayOptions(address=args.ray_address, gpus_per_worker=args.gpus_per_worker,
                      workers=args.ray_workers, cpus_per_worker=args.cpus_per_worker,
                      batch_size=args.batch_size or 32, device=args.device, runtime=args.runtime)


def add_publish(sub, add_db, add_model) -> None:
    p = sub.add_parser("publish", help="load a collection's vectors into Milvus and serve its searches from there "
                       "(adds and removes then reach Milvus on the next search)")
    add_db(p)
    add_model(p)
    p.add_argument("--to", metavar="URI", default=None,
                   help="a Milvus Lite file (*.db), http://HOST:19530 (a Milvus Lite server, Standalone or a "
                        "cluster); stored with the collection (default: the URI it was published to before). "
                        "Credentials: $RETRIEVAL_MILVUS_TOKEN ('user:password' or an API key), never stored")
    p.add_argument("--shards", metavar="DIR_OR_URI", default=None,
                   help="read the vectors from these Parquet shards (from 'index --engine ray') instead of SQLite")
    p.add_argument("--json", action="store_true", help="machine-readable report")

    p = sub.add_parser("unpublish", help="search a published collection in process again (from SQLite)")
    add_db(p)
    p.add_argument("--drop", action="store_true", help="also delete its collections in Milvus")


def print_published(report, as_json: bool) -> None:
    if as_json:
        import json

        print(json.dumps(report.to_json(), indent=2))
        return
    print(f"{report.collection}: {report.total} vectors in {report.where} as {report.milvus_collection} "
          f"({report.added} added, {report.removed} removed"
          + (f", {report.from_shards} read from shards" if report.from_shards else "") + f", {report.seconds:.1f} s)")


def describe_run(report) -> list[str]:
    """Lines on a Ray run for ``index``'s summary."""
    run = report.distributed
    if not run:
        return []
    if "actors" not in run:
        return [f"  ray: not started (nothing to embed; {run.get('from_shards', 0)} read from earlier shards)"]
    lines = [f"  ray: {run.get('embedded', 0)} embedded on {run.get('actors', 0)} actor(s) over "
             f"{run.get('nodes', 0)} node(s) at {run.get('address', '-')}, {run.get('from_shards', 0)} read from "
             f"earlier shards"]
    if run.get("shards"):
        lines.append(f"  shards: {run['shards']}")
    return lines
