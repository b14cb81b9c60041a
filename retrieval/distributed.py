"""Distributed extraction on Ray Data: file list -> actors (one model copy each) -> Parquet shards.

Why Ray Data and actors: a model is expensive to load and cheap to reuse,
so each actor loads one copy (on its GPU, or on a group of CPUs) and keeps
it for every batch; Ray Data streams the file list through them with back
pressure and writes each output block as a Parquet shard, on whichever
node made it. The actors run exactly the in-process code: ``extract.prepare``
(read, hash, decode) and the backbone a ``Models`` registry builds, with the
same runtime choice, so their vectors equal ``Studio.index``'s.

Only the driver talks to SQLite (``service/bulk.py``): workers never see the
database, which keeps one writer and lets them run on machines that cannot
reach the driver's disk. Ray is imported only here, and only when asked for.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .config import ExtractorConfig
from .settings import Limits

# ``--engine auto`` takes Ray only for a cluster (``--ray-address`` or
# $RAY_ADDRESS) and from this many files on. Measured on 2 cores with real
# photos (benchmarks/distributed.py, docs/distributed.md): a private Ray costs
# 11 s more than in process to start (Ray, actors, a model load each) and then
# runs at the same ~80 img/s, so on one machine it never wins; with N such
# nodes it wins from n > extra start-up / (1/rate - 1/(N rate)): ~1,800
# files for 2 nodes, ~1,000 for 8. A real cluster starts slower (remote nodes,
# cold caches), hence about three times the 2-node figure.
AUTO_THRESHOLD = 5_000
ENGINES = ("in-process", "ray", "auto")  # auto: Ray for a cluster, from AUTO_THRESHOLD files on

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def ray_module():
    try:
        import ray
    except ImportError:
        from .milvus import INSTALL

        raise RuntimeError(f"distributed extraction needs Ray: {INSTALL}") from None
    return ray


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide to run. ``address`` None starts a private Ray on this machine."""

    address: str | None = None  # "auto" (the running cluster), "ray://host:10001", or None
    gpus_per_worker: float = 0.0  # > 0: one actor (one model copy) per that many GPUs
    workers: int | None = None  # actors; default: every GPU group, or the CPUs one worker each leaves room for
    cpus_per_worker: float = 1.0
    batch_size: int = 32
    device: str = "auto"
    runtime: str = "auto"
    num_cpus: int | None = None  # a private Ray's CPUs (default: this machine's)


def start(options: RayOptions):
    """Connect to (or start) Ray once per process. Workers must import this project: a
    checkout's path is passed on PYTHONPATH (enough on this machine); a cluster's nodes need it installed."""
    ray = ray_module()
    if ray.is_initialized():
        return ray
    env = {}
    if not _installed():  # a checkout: local workers import it from here (a cluster's nodes have it installed)
        env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH"))
                                                         if p)}}
    import logging

    for name in ("ray", "ray.data"):  # the driver reports progress itself
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        # "local": a private Ray even where $RAY_ADDRESS names a cluster (which ray.init would join)
        ray.init(address=options.address or "local", num_cpus=options.num_cpus if options.address is None else None,
                 runtime_env=env or None, include_dashboard=False, log_to_driver=False, logging_level="error",
                 configure_logging=True)
        import ray.data

        for name in ("ray", "ray.data"):  # again: importing Ray Data configures its loggers
            logging.getLogger(name).setLevel(logging.WARNING)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
    except Exception as exc:  # ConnectionError, ray's own: one line, never a hang
        where = options.address or "a local Ray"
        raise RuntimeError(f"cannot start or reach {where}: {_first_line(exc)}") from None
    return ray


def _installed() -> bool:
    """True when ``retrieval`` comes from site-packages (workers import it anyway)."""
    return "site-packages" in str(PROJECT_ROOT) or "dist-packages" in str(PROJECT_ROOT)


def plan(ray, options: RayOptions) -> tuple[int, float, float]:
    """(actors, CPUs each, GPUs each) for the cluster Ray sees now.

    CPU actors leave one CPU free: Ray Data's own tasks (splitting the list,
    writing shards) need one, and actors holding every CPU starve them.
    """
    resources = ray.cluster_resources()
    if options.gpus_per_worker > 0:
        gpus = resources.get("GPU", 0)
        if gpus < options.gpus_per_worker:
            raise RuntimeError(f"the Ray cluster has {gpus:g} GPUs; --gpus-per-worker asks {options.gpus_per_worker:g}")
        actors = options.workers or int(gpus // options.gpus_per_worker)
        return max(1, actors), min(options.cpus_per_worker, 1.0), options.gpus_per_worker
    cpus = resources.get("CPU", 1)
    actors = options.workers or int(max(1, (cpus - 1) // options.cpus_per_worker))
    return max(1, actors), options.cpus_per_worker, 0.0


class Embedder:
    """A Ray Data actor: one model copy, loaded once, for every batch it is given."""

    def __init__(self, cfg: dict, dim: int, options: dict, limits: dict):
        from .service.caches import Caches
        from .service.models import Models

        opts = RayOptions(**options)
        self.cfg, self.dim, self.limits = ExtractorConfig(**cfg), dim, Limits(**limits)
        self.models = Models(None, Caches(), opts.device, opts.batch_size, opts.runtime)
        self.backbone = None
        try:
            import ray

            node = ray.get_runtime_context().get_node_id()[:12]
        except Exception:  # noqa: BLE001 - provenance only
            node = "local"
        self.worker = f"{node}:{os.getpid()}"

    def __call__(self, batch):
        from . import shards
        from .extract import ordered_map, prepare
        from .files import SourceFile
        from .pooling import l2_normalize

        data = batch.to_pydict()
        sources = [SourceFile(Path(p), n, lab) for p, n, lab in zip(data["path"], data["name"], data["label"])]
        if self.backbone is None:
            self.backbone = self.models.backbone(self.cfg)
        size = self.backbone.input_size
        prepared = list(ordered_map(lambda s: prepare(s, size, lambda _: True, self.limits), sources, 2, 64))
        with_pixels = [i for i, p in enumerate(prepared) if p.pixels is not None]
        vectors: dict[int, np.ndarray] = {}
        if with_pixels:
            out = l2_normalize(self.backbone.embed(np.stack([prepared[i].pixels for i in with_pixels])))
            vectors = dict(zip(with_pixels, out))
        rows = [shards.ShardRow(p.sha256, p.source.name, p.source.label, p.width, p.height, p.nbytes, self.cfg.key,
                                vectors.get(i), p.error if i not in vectors else None, self.worker,
                                self.backbone.runtime)
                for i, p in enumerate(prepared)]
        return shards.table(rows, self.dim)


def extract(items: list[dict], cfg: ExtractorConfig, dim: int, out: str, options: RayOptions,
            limits: Limits = Limits()) -> dict:
    """Embed ``items`` ({path, name, label}) on Ray into Parquet shards under ``out``; returns the plan used."""
    ray = start(options)
    actors, cpus, gpus = plan(ray, options)
    dataset = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // options.batch_size,
                                                                          actors * 8)))
    embedded = dataset.map_batches(
        Embedder, batch_size=options.batch_size, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus,
        num_gpus=gpus or None,
        fn_constructor_kwargs={"cfg": asdict(cfg), "dim": dim, "options": asdict(options), "limits": asdict(limits)})
    try:
        embedded.write_parquet(out)
    except ray.exceptions.RayError as exc:  # a worker without this project, a model failure, out of memory
        cause = getattr(exc, "cause", None) or exc
        raise RuntimeError(f"the Ray job failed: {type(cause).__name__}: {_first_line(cause)}") from None
    return {"actors": actors, "cpus_per_actor": cpus, "gpus_per_actor": gpus,
            "address": options.address or "local", "nodes": len([n for n in ray.nodes() if n.get("Alive")])}


def cluster_address(options: RayOptions | None) -> str | None:
    """The cluster ``auto`` may use: the one asked for, else $RAY_ADDRESS; None on a lone machine."""
    return (options.address if options is not None else None) or os.environ.get("RAY_ADDRESS") or None


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(exc).__name__
