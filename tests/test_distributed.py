"""Distributed extraction on Ray (the scale extra), with local stand-ins named as such.

A private Ray with 2 CPUs on this machine, and ``ray.cluster_utils.Cluster``
simulating two nodes with one pretend GPU each, stand in for a real
cluster; ``RAY_ADDRESS`` runs the same checks against a real one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from retrieval import shards
from retrieval.config import ExtractorConfig, SearchConfig
from retrieval.distributed import RayOptions

ray = pytest.importorskip("ray", reason="the scale extra (requirements-scale.txt) is not installed")

DEMO = Path(__file__).resolve().parents[1] / "assets" / "demo"
LOCAL = RayOptions(num_cpus=2)  # a private Ray on this machine: the local stand-in for a cluster


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> Path:
    """The demo photos, one unreadable file and one duplicate (same content, another name)."""
    root = tmp_path_factory.mktemp("ray-gallery") / "g"
    shutil.copytree(DEMO, root)
    (root / "coffee" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated, not a JPEG")
    shutil.copy(root / "cat" / "chelsea.jpg", root / "cat" / "chelsea_again.jpg")
    return root


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """This module's own in-process Studio: the session's must not hold the demo's vectors
    (other modules count what their held-out queries compute)."""
    from retrieval import Studio

    s = Studio(tmp_path_factory.mktemp("ray-baseline") / "baseline.sqlite", device="cpu")
    yield s
    s.close()


@pytest.fixture(scope="module")
def runs(gallery, tmp_path_factory, studio):
    """The same folder indexed in process and on a private local Ray."""
    from retrieval import Studio

    in_process = studio.index(gallery, collection="ray-baseline")
    on_ray = Studio(tmp_path_factory.mktemp("ray-db") / "ray.sqlite", device="cpu")
    report = on_ray.index(gallery, "g", engine="ray", ray=LOCAL)
    yield in_process, on_ray, report
    on_ray.close()
    ray.shutdown()


def _vectors(studio, collection: str) -> dict[str, np.ndarray]:
    _, _, gallery = studio.gallery(collection, ExtractorConfig())
    return {m.sha256: v for m, v in zip(gallery.members, gallery.vectors)}


def test_ray_embeds_every_image_once_and_equal_to_in_process(runs, studio):
    in_process, on_ray, report = runs
    assert report.engine == "ray" and report.distributed["actors"] >= 1
    rows = [r for batch in shards.read(report.distributed["shards"]) for r in batch]
    hashes = [r.sha256 for r in rows if r.vector is not None]
    assert len(hashes) == len(set(hashes)) == 70  # the duplicate was never sent: one model run per content
    assert sorted(report.added) == sorted(in_process.added)
    assert report.duplicates == in_process.duplicates
    assert [(s.name, s.reason) for s in report.skipped] == [(s.name, s.reason) for s in in_process.skipped]
    assert [s.name for s in report.skipped] == ["coffee/broken.jpg"]
    a, b = _vectors(studio, "ray-baseline"), _vectors(on_ray, "g")
    assert set(a) == set(b)
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 1e-6
    assert {r.runtime for r in rows if r.vector is not None} == {in_process.runtime}


def test_a_rerun_starts_nothing_and_reports_the_bad_file_again(runs, gallery):
    _, on_ray, first = runs
    before = sorted(Path(first.distributed["shards"]).parent.iterdir())
    again = on_ray.index(gallery, "g", engine="ray", ray=LOCAL)
    assert again.computed == 0 and again.added == [] and again.unchanged == 70
    assert "actors" not in again.distributed  # Ray was not asked for anything
    assert again.distributed["from_shards"] == 1  # the broken file's reason came from the shards
    assert [(s.name, s.reason) for s in again.skipped] == [(s.name, s.reason) for s in first.skipped]
    assert sorted(Path(first.distributed["shards"]).parent.iterdir()) == before  # no new shards


def test_a_new_database_is_rebuilt_from_the_shards_without_a_model(runs, gallery, tmp_path):
    """Shards are the source of truth: a lost SQLite file comes back from them, listed by a manifest."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from retrieval import Studio

    _, on_ray, first = runs
    files = sorted(p for p in gallery.rglob("*") if p.is_file() and p.name != "metadata.csv")
    manifest = tmp_path / "manifest.parquet"
    pq.write_table(pa.table({"path": [str(p) for p in files],
                             "name": [p.relative_to(gallery).as_posix() for p in files],
                             "label": [p.parent.name for p in files]}), manifest)
    rebuilt = Studio(tmp_path / "rebuilt.sqlite", device="cpu")
    try:
        report = rebuilt.index(manifest, "g", engine="ray", ray=LOCAL, shards=str(Path(first.distributed["shards"]).parents[1]))
        assert "actors" not in report.distributed and report.computed == 0
        assert report.distributed["from_shards"] == 71 and len(report.added) == 70
        a, b = _vectors(on_ray, "g"), _vectors(rebuilt, "g")
        assert set(a) == set(b) and max(float(np.abs(a[k] - b[k]).max()) for k in a) == 0.0
        labels = {m.name: m.label for m in rebuilt.members("g")}
        assert labels["cat/chelsea.jpg"] == "cat"
    finally:
        rebuilt.close()


def test_ray_shards_to_milvus_answer_as_the_sqlite_default(runs, studio, tmp_path):
    """End to end: Ray -> shards -> Milvus -> search equals in-process search from SQLite."""
    pytest.importorskip("pymilvus")
    _, on_ray, first = runs
    published = on_ray.publish("g", to=str(tmp_path / "vectors.db"), shards=first.distributed["shards"])
    assert published.total == 70 and published.from_shards == 70
    for query in ("cat/chelsea.jpg", "coffee/coffee.jpg", "astronaut/astronaut.jpg"):
        served = on_ray.search(DEMO / query, "g", scfg=on_ray.search_defaults("g"))
        exact = studio.search(DEMO / query, "ray-baseline", scfg=SearchConfig(rerank="qe", whiten="none",
                                                                               index="exact"))
        assert "Milvus Lite" in served.search["served_by"]
        assert [h.name for h in served.hits] == [h.name for h in exact.hits]
        assert np.allclose([h.score for h in served.hits], [h.score for h in exact.hits], atol=1e-5)
    on_ray.unpublish("g", drop=True)


def test_auto_keeps_small_galleries_in_process(studio, tmp_path):
    folder = tmp_path / "small"
    shutil.copytree(DEMO / "cat", folder / "cat")
    report = studio.index(folder, "ray-auto", engine="auto")
    assert report.engine == "in-process" and report.distributed is None


def test_two_simulated_nodes_get_one_model_copy_per_pretend_gpu(runs, tmp_path):
    """``ray.cluster_utils.Cluster``: a head and two nodes with one pretend GPU each, in this machine."""
    from ray.cluster_utils import Cluster

    from retrieval import Studio

    ray.shutdown()  # the module's private Ray; the simulated cluster is another one
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    for _ in range(2):
        cluster.add_node(num_cpus=1, num_gpus=1)
    cluster.wait_for_nodes()
    folder = tmp_path / "demo"
    shutil.copytree(DEMO, folder)  # enough blocks (70 files, 4 a batch) that an actor still loading gets some
    studio = Studio(tmp_path / "two-nodes.sqlite", device="cpu")
    try:
        report = studio.index(folder, "g", engine="ray",
                              ray=RayOptions(address=cluster.address, gpus_per_worker=1, batch_size=4))
        run = report.distributed
        assert run["actors"] == 2 and run["gpus_per_actor"] == 1 and run["nodes"] == 3
        nodes = {w.split(":")[0] for w in run["workers"]}
        assert len(run["workers"]) == 2 and len(nodes) == 2  # one actor, so one model copy, on each GPU node
        assert report.computed == len(report.added) == 70
    finally:
        studio.close()
        ray.shutdown()
        cluster.shutdown()


def test_the_command_line_indexes_on_ray_and_serves_from_milvus(tmp_path):
    pytest.importorskip("pymilvus")
    folder = tmp_path / "g"
    for label in ("cat", "coffee", "astronaut"):
        shutil.copytree(DEMO / label, folder / label)
    db, uri = tmp_path / "cli.sqlite", tmp_path / "vectors.db"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    index = subprocess.run([sys.executable, "-m", "retrieval", "index", str(folder), "--db", str(db), "--engine", "ray",
                            "--milvus-uri", str(uri), "--quiet"], capture_output=True, text=True, env=env, timeout=600)
    assert index.returncode == 0, index.stderr[-2000:]
    assert "embedded on 1 actor(s)" in index.stdout and "vectors in Milvus Lite file" in index.stdout
    search = subprocess.run([sys.executable, "-m", "retrieval", "search", str(DEMO / "cat" / "chelsea.jpg"), "--db", str(db),
                             "-k", "3"], capture_output=True, text=True, env=env, timeout=300)
    assert search.returncode == 0, search.stderr[-2000:]
    assert search.stdout.splitlines()[0].split()[-1].endswith("cat/chelsea.jpg")
    assert "served by Milvus Lite file" in search.stdout
    refused = subprocess.run([sys.executable, "-m", "retrieval", "search", str(DEMO / "cat" / "chelsea.jpg"), "--db",
                              str(db), "--rerank", "dba"], capture_output=True, text=True, env=env, timeout=300)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "needs the whole gallery in memory" in refused.stderr


@pytest.mark.skipif(not os.environ.get("RAY_ADDRESS"),
                    reason="opt-in: set RAY_ADDRESS to a real Ray cluster (its nodes with this project installed)")
def test_a_real_cluster_gives_the_in_process_vectors(studio, tmp_path):
    from retrieval import Studio

    folder = tmp_path / "g"
    shutil.copytree(DEMO / "coffee", folder / "coffee")
    baseline = studio.index(folder, "ray-real-baseline")
    ray.shutdown()
    remote = Studio(tmp_path / "real.sqlite", device="cpu")
    try:
        report = remote.index(folder, "g", engine="ray", ray=RayOptions(address=os.environ["RAY_ADDRESS"]),
                              shards=str(tmp_path / "shards"))
        assert sorted(report.added) == sorted(baseline.added)
        a, b = _vectors(studio, "ray-real-baseline"), _vectors(remote, "g")
        assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 1e-3  # another machine may run another runtime
    finally:
        remote.close()
        ray.shutdown()


def test_shards_of_two_models_live_apart_and_an_empty_folder_is_no_rows(tmp_path):
    """Vectors of different lengths cannot share one Parquet dataset: each configuration has its folder."""
    import pyarrow.parquet as pq

    root = tmp_path / "shards"
    for key, dim in (("small|imagenet|224|gap", 4), ("large|imagenet|240|gem3", 8)):
        folder = Path(shards.folder_for(str(root), key)) / "run-1"
        folder.mkdir(parents=True)
        rows = [shards.ShardRow(f"{dim}-a", "a.jpg", None, 1, 1, 1, key, np.full(dim, 0.5, np.float32), None, "n:1", "x"),
                shards.ShardRow(f"{dim}-b", "b.jpg", None, 0, 0, 1, key, None, "not an image", "n:1", "x")]
        pq.write_table(shards.table(rows, dim), folder / "part-0.parquet")
    small = shards.known(str(root), "small|imagenet|224|gap", {"4-a", "4-b", "8-a"})
    large = shards.known(str(root), "large|imagenet|240|gem3", {"8-a", "8-b"})
    assert set(small) == {"4-a", "4-b"} and small["4-a"][0].shape == (4,) and small["4-b"] == (None, "not an image")
    assert set(large) == {"8-a", "8-b"} and large["8-a"][0].tolist() == [0.5] * 8
    (tmp_path / "empty" / "run").mkdir(parents=True)  # a run that failed before writing
    assert shards.known(str(tmp_path / "empty"), "small|imagenet|224|gap", {"4-a"}) == {}
