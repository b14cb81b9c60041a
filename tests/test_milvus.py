"""Galleries served from Milvus, against real Milvus Lite (no mocks).

Two local stand-ins for a deployment, each a backend in the test ids:
``lite-file`` (a Milvus Lite ``.db`` file, in process) and ``lite-server``
(``python -m milvus_lite server`` on a free port, started once per module,
with a Milvus server's keepalive policy: see ``PING_POLICY``).
A real cluster joins the ``MilvusIndex`` contract tests only when
``RETRIEVAL_MILVUS_URI`` is set (its token, if any, from
``RETRIEVAL_MILVUS_TOKEN``); they use a collection of their own and drop it.

- the contract of ``MilvusIndex``: exact inner-product top k, the stored
  vectors come back bit for bit, removes and upserts, dimension checks;
- the Studio on the demo photos: a Milvus-served ranking equals the exact
  in-process one (cosine, euclidean, manhattan; no re-ranking and aQE),
  removes and re-adds reach Milvus, what needs the whole gallery is refused
  in one line, ``drop_collection`` and ``unpublish`` clean up;
- an unreachable server and a Lite path without ``.db`` are refused quickly,
  in one line;
- a hypothesis state machine over a small real gallery (colour histograms:
  no model to load): adds, removes, publish and unpublish on either backend,
  reopening the Studio, and searches whose hits are exactly the exact
  search's, from a Milvus collection holding exactly the embedded members.
  Budget: ``RETRIEVAL_STATEFUL_EXAMPLES`` programs (default 15) of 12 steps;
- two engine bugs this file found, kept as regression tests: a gallery moved
  to another Milvus by another Studio, and an emptied published gallery.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from conftest import stop_process
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from PIL import Image

from retrieval import ExtractorConfig, SearchConfig, ServiceError, Studio, milvus
from retrieval.files import SourceFile
from retrieval.milvus import MilvusIndex, MilvusUnavailable

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "assets" / "demo"
CLUSTER_URI = os.environ.get("RETRIEVAL_MILVUS_URI", "")
LITE = ("lite-file", "lite-server")
CONTRACT_BACKENDS = [
    pytest.param("lite-file", id="lite-file"),
    pytest.param("lite-server", id="lite-server"),
    pytest.param("cluster", id="cluster", marks=pytest.mark.skipif(
        not CLUSTER_URI, reason="set RETRIEVAL_MILVUS_URI to run the Milvus contract against a real cluster")),
]


# -- the backends --------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# pymilvus keeps its channels alive with a ping every 10 s, even between calls. A Milvus server permits that
# (its gRPC enforcement policy: pings every 5 s, without calls too); the Lite server keeps gRPC's defaults
# (one ping per 5 minutes without data), so it answers an idle client with GOAWAY "too_many_pings", and a new
# MilvusClient made while the shared connection reconnects fails at once. The stand-in server is the Lite one,
# ``python -m milvus_lite server``, with the real server's ping policy.
PING_POLICY = ("import sys, grpc; _server = grpc.server; "
               "grpc.server = lambda *a, options=(), **k: _server(*a, options=[*options, "
               "('grpc.http2.min_ping_interval_without_data_ms', 5000), ('grpc.keepalive_permit_without_calls', 1), "
               "('grpc.http2.max_ping_strikes', 0)], **k); "
               "from milvus_lite.cmdline import main; sys.exit(main())")


def start_lite_server(data: Path, timeout: float = 60.0):
    """``milvus_lite server`` on a free port; (process, uri) once it accepts connections."""
    port = _free_port()
    with open(data.parent / f"{data.name}.log", "w") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen([sys.executable, "-c", PING_POLICY, "server", "--data-dir", str(data),
                                 "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            raise RuntimeError(f"the Milvus Lite server did not start: {(data.parent / f'{data.name}.log').read_text()[-3000:]}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def lite_server(tmp_path_factory):
    """One local Milvus Lite gRPC server for the module, its data in a temporary folder."""
    proc, uri = start_lite_server(tmp_path_factory.mktemp("milvus-server") / "data")
    yield uri
    stop_process(proc)


def uri_of(backend: str, request, tmp_path: Path) -> str:
    if backend == "lite-file":
        return str(tmp_path / "m.db")
    if backend == "lite-server":
        return request.getfixturevalue("lite_server")
    return CLUSTER_URI


def _one_line(message: str) -> None:
    assert message.strip() and "\n" not in message.strip(), repr(message)
    assert "Traceback" not in message and "File \"" not in message, message


# -- 1. the MilvusIndex contract --------------------------------------------------------------------------------
@pytest.fixture(params=CONTRACT_BACKENDS)
def contract(request, tmp_path):
    """(client, a collection name of its own) on each backend; the collection is dropped after."""
    client = milvus.connect(uri_of(request.param, request, tmp_path), os.environ.get("RETRIEVAL_MILVUS_TOKEN"))
    name = f"contract_{uuid.uuid4().hex[:12]}"
    yield client, name
    if client.has_collection(name):
        client.drop_collection(name)


@pytest.fixture(scope="module")
def vectors():
    """3000 random L2-normalised 64-d vectors under sparse, shuffled ids, and 40 queries near some of them."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3000, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = rng.permutation(np.arange(5, 5 + 3 * len(x), 3)).astype(np.int64)
    q = x[rng.integers(0, len(x), 40)] + 0.3 * rng.standard_normal((40, 64)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return ids, x, q


def _exact_top(ids, x, q, k):
    order = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :k]
    return ids[order]


def _assert_proposes(found, expected, by_id, queries, k):
    """The contract the exact re-score relies on: stored vectors, best inner product first, near-exact recall.

    Milvus' AUTOINDEX is approximate (Lite builds an HNSW per segment in the background after a flush), so a
    candidate may be missed now and then; the product asks for max(200, 10 x k) candidates to absorb that. Here,
    at k=20 on 3,000 vectors, at least 97% of the exact top-k must come back.
    """
    found = list(found)
    assert len(found) == len(queries)
    hit = 0
    for (got, got_vectors), want, q in zip(found, expected, queries):
        assert got_vectors.dtype == np.float32 and got_vectors.shape == (k, 64)
        np.testing.assert_array_equal(got_vectors, np.stack([by_id[int(i)] for i in got]))
        scores = got_vectors @ q
        assert np.all(np.diff(scores) <= 1e-5), "candidates are not best-first"
        hit += len(set(got.tolist()) & set(want.tolist()))
    assert hit / expected.size >= 0.97, f"recall@{k} {hit / expected.size:.3f}"


def test_search_proposes_the_inner_product_top_k_with_the_stored_vectors(contract, vectors):
    client, name = contract
    ids, x, q = vectors
    index = MilvusIndex.open(client, name, 64)
    index.add(ids, x)
    assert index.count() == len(ids)
    assert index.ids() == set(ids.tolist())
    by_id = dict(zip(ids.tolist(), x))
    _assert_proposes(index.search(q, 20), _exact_top(ids, x, q, 20), by_id, q, 20)


def test_removed_ids_are_never_proposed_again(contract, vectors):
    client, name = contract
    ids, x, q = vectors
    index = MilvusIndex.open(client, name, 64)
    index.add(ids, x)
    gone = ids[::3]
    index.remove(gone)
    index.remove([])  # nothing to do, no error
    kept = np.setdiff1d(ids, gone)
    assert index.ids() == set(kept.tolist())
    assert index.count() == len(kept)
    # each removed vector asks for itself: it would be its own best match
    removed_rows = np.isin(ids, gone)
    for got, _ in index.search(x[removed_rows][:30], 50):
        assert not set(got.tolist()) & set(gone.tolist())
    keep_rows = ~removed_rows
    by_id = dict(zip(ids[keep_rows].tolist(), x[keep_rows]))
    _assert_proposes(index.search(q, 20), _exact_top(ids[keep_rows], x[keep_rows], q, 20), by_id, q, 20)


def test_adding_again_is_an_upsert(contract, vectors):
    client, name = contract
    ids, x, _ = vectors
    index = MilvusIndex.open(client, name, 64)
    index.add(ids, x)
    first = ids[:100]
    moved = -x[:100]  # the same ids with other vectors: replaced, not duplicated
    index.add(first, moved)
    index.add(ids[100:200], x[100:200])  # the same rows again: nothing changes
    assert index.count() == len(ids)
    assert index.ids() == set(ids.tolist())
    for row in (0, 57, 99):
        got, got_vectors = next(index.search(moved[row:row + 1], 1))
        assert got.tolist() == [ids[row]]
        np.testing.assert_array_equal(got_vectors[0], moved[row])


def test_reopening_checks_the_dimension(contract):
    client, name = contract
    index = MilvusIndex.open(client, name, 64)
    index.add(np.array([1, 2]), np.eye(64, dtype=np.float32)[:2])
    again = MilvusIndex.open(client, name, 64, create=False)
    assert again.ids() == {1, 2}
    with pytest.raises(MilvusUnavailable) as info:
        MilvusIndex.open(client, name, 32)
    _one_line(str(info.value))
    assert "64" in str(info.value) and "32" in str(info.value)
    with pytest.raises(MilvusUnavailable) as info:
        MilvusIndex.open(client, f"{name}_missing", 64, create=False)
    _one_line(str(info.value))
    index.drop()
    assert not client.has_collection(name)
    index.drop()  # dropping what is gone is no error


def test_uris_and_their_descriptions(tmp_path):
    assert milvus.normalize_uri("http://10.0.0.5:19530") == "http://10.0.0.5:19530"
    assert milvus.normalize_uri(str(tmp_path / "x" / ".." / "g.db")) == str((tmp_path / "g.db").resolve())
    with pytest.raises(MilvusUnavailable, match=r"\.db"):
        milvus.normalize_uri(str(tmp_path / "g.sqlite"))
    assert milvus.describe("http://127.0.0.1:19530") == "Milvus server at 127.0.0.1:19530 (local)"
    assert milvus.describe("https://milvus.example.org:443") == "Milvus server at milvus.example.org:443"
    assert milvus.describe("/data/g.db") == "Milvus Lite file /data/g.db"
    name = milvus.base_name("my gallery/ü-1", "abcd1234")
    assert name.startswith("rs_") and all(c.isalnum() or c == "_" for c in name) and name.isascii()


# -- 2. the Studio on the demo photos ------------------------------------------------------------------------------
DEFAULT = ExtractorConfig()
QUERIES = [DEMO / "cat" / "chelsea.jpg", DEMO / "coffee" / "coffee_crop.jpg", DEMO / "texture" / "gravel.jpg",
           DEMO / "fashion-sneaker" / min(os.listdir(DEMO / "fashion-sneaker"))]


def _outside_query() -> np.ndarray:
    """A photo no member is: the demo's coffee cup turned on its side."""
    return np.ascontiguousarray(np.rot90(np.asarray(Image.open(DEMO / "coffee" / "coffee.jpg").convert("RGB"))))


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """This module's own Studio: the session's must not hold the demo's vectors (other modules
    count what their held-out queries compute), nor this module's Milvus clients."""
    s = Studio(tmp_path_factory.mktemp("milvus-db") / "gallery.sqlite", device="cpu")
    yield s
    s.close()


@pytest.fixture(scope="module")
def demo(studio):
    """The 70 demo photos, indexed once with the default model (in process)."""
    studio.index(DEMO, collection="milvus-demo")
    assert len(studio.members("milvus-demo")) == 70
    return "milvus-demo"


@pytest.fixture(params=LITE)
def served(request, studio, demo, tmp_path):
    """A fork of the demo and the URI of the backend to publish it to; dropped after (Milvus collections too)."""
    name = f"milvus-{request.param}-{uuid.uuid4().hex[:8]}"
    studio.fork(demo, name)
    yield name, uri_of(request.param, request, tmp_path)
    studio.drop_collection(name)


def _milvus_collections(studio, collection: str) -> tuple[object, list[str]]:
    setting = studio.served_by(collection)
    client = milvus.connect(setting["uri"])
    return client, [n for n in client.list_collections() if n.startswith(f"{setting['name']}_k")]


def _served_ids(studio, collection: str, cfg: ExtractorConfig) -> set[int]:
    """The image ids the gallery's Milvus collection for ``cfg`` holds (read with a client of our own)."""
    setting = studio.served_by(collection)
    cfg = studio.resolve(cfg)
    config_id = studio.store.find_config(cfg)
    dim = next(m["dim"] for m in studio.models() if m["name"] == cfg.backbone)
    index = MilvusIndex.open(milvus.connect(setting["uri"]), milvus.collection_name(setting["name"], config_id), dim,
                             create=False)
    return index.ids()


def _embedded(studio, collection: str, cfg: ExtractorConfig) -> set[int]:
    cid = studio.store.collection_id(collection)
    return set(studio.store.embedded_ids(cid, studio.store.find_config(studio.resolve(cfg))).tolist())


def _same_ranking(a, b) -> None:
    assert [h.name for h in a.hits] == [h.name for h in b.hits]
    np.testing.assert_allclose([h.score for h in a.hits], [h.score for h in b.hits], rtol=0, atol=1e-5)


def test_a_published_gallery_ranks_as_the_exact_search(studio, served):
    collection, uri = served
    assert studio.served_by(collection) is None
    assert studio.search_defaults(collection) == SearchConfig()
    published = studio.publish(collection, to=uri)
    assert (published.added, published.removed, published.total) == (70, 0, 70)
    setting = studio.served_by(collection)
    assert (setting["kind"], setting["uri"]) == ("milvus", milvus.normalize_uri(uri))
    assert setting["name"].startswith("rs_milvus_") and published.milvus_collection.startswith(setting["name"])
    assert _served_ids(studio, collection, DEFAULT) == _embedded(studio, collection, DEFAULT)
    again = studio.publish(collection)  # nothing changed: nothing to send
    assert (again.added, again.removed, again.total) == (0, 0, 70)

    defaults = studio.search_defaults(collection)
    assert (defaults.rerank, defaults.whiten, defaults.metric, defaults.index) == ("qe", "none", "cosine", "auto")
    assert studio.search_defaults(collection, index="exact") == SearchConfig(index="exact")
    for query in [*QUERIES, _outside_query()]:
        for metric in ("cosine", "euclidean", "manhattan"):
            for rerank in ("none", "qe"):
                scfg = studio.search_defaults(collection, metric=metric, rerank=rerank, k=10)
                got = studio.search(query, collection, scfg=scfg)
                assert "Milvus" in got.search["served_by"] and "milvus_ms" in got.timings
                assert got.timings["candidates"] == 70
                exact = studio.search(query, collection, scfg=SearchConfig(
                    k=10, metric=metric, rerank=rerank, whiten="none", index="exact"))
                assert "served_by" not in exact.search
                _same_ranking(got, exact)
    # the whole gallery, and the explicit index name
    full = studio.search(QUERIES[0], collection, scfg=studio.search_defaults(collection, k=70, index="milvus"))
    exact = studio.search(QUERIES[0], collection, scfg=SearchConfig(k=70, rerank="qe", whiten="none", index="exact"))
    assert len(full.hits) == 70
    _same_ranking(full, exact)
    assert full.hits[0].name == "cat/chelsea.jpg"


def test_removes_and_adds_reach_milvus(studio, served):
    collection, uri = served
    studio.publish(collection, to=uri)
    plain = studio.search_defaults(collection, rerank="none", k=100)
    assert studio.search(QUERIES[0], collection, scfg=plain).hits[0].name == "cat/chelsea.jpg"
    assert studio.remove("cat/chelsea.jpg", collection) == ["cat/chelsea.jpg"]
    assert "cat/chelsea.jpg" in {m.name for m in studio.members("milvus-demo")}  # the source keeps it
    for query in (QUERIES[0], DEMO / "cat" / "chelsea_flipped.jpg"):
        hits = studio.search(query, collection, scfg=plain).hits
        assert len(hits) == 69 and "cat/chelsea.jpg" not in {h.name for h in hits}
        _same_ranking(studio.search(query, collection, scfg=plain),
                      studio.search(query, collection, scfg=SearchConfig(k=100, rerank="none", whiten="none",
                                                                          index="exact")))
    assert _served_ids(studio, collection, DEFAULT) == _embedded(studio, collection, DEFAULT)
    assert len(_served_ids(studio, collection, DEFAULT)) == 69

    report = studio.index(DEMO, collection)  # the folder again: the removed photo comes back
    assert len(studio.members(collection)) == 70, report
    hits = studio.search(QUERIES[0], collection, scfg=plain).hits
    assert len(hits) == 70 and hits[0].name == "cat/chelsea.jpg" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert _served_ids(studio, collection, DEFAULT) == _embedded(studio, collection, DEFAULT)
    assert len(_served_ids(studio, collection, DEFAULT)) == 70
    synced = studio.publish(collection)
    assert (synced.added, synced.removed, synced.total) == (0, 0, 70)


REFUSED = [
    ("dba", {"rerank": "dba", "whiten": "none"}),
    ("diffusion", {"rerank": "diffusion", "whiten": "none"}),
    ("kreciprocal", {"rerank": "kreciprocal", "whiten": "none"}),
    ("pca", {"rerank": "none", "whiten": "pca"}),
    ("center", {"rerank": "qe", "whiten": "center"}),
    ("mahalanobis", {"rerank": "none", "whiten": "none", "metric": "mahalanobis"}),
]


def test_what_needs_the_whole_gallery_is_refused_in_one_line(studio, served):
    collection, uri = served
    studio.publish(collection, to=uri)
    query = QUERIES[1]
    for word, chosen in REFUSED:
        for index in ("auto", "milvus"):
            with pytest.raises(ServiceError) as info:
                studio.search(query, collection, scfg=SearchConfig(k=5, index=index, **chosen))
            message = str(info.value)
            _one_line(message)
            assert word in message and "exact" in message, message
        # the same ranking in process is still offered
        exact = studio.search(query, collection, scfg=SearchConfig(k=5, index="exact", **chosen))
        assert len(exact.hits) == 5
    for a, b in [((DEFAULT, studio.search_defaults(collection)), (DEFAULT, SearchConfig(index="exact"))),
                 ((DEFAULT, SearchConfig(index="exact")), (DEFAULT, SearchConfig(index="milvus", rerank="none")))]:
        with pytest.raises(ServiceError) as info:
            studio.compare(query, collection, a, b)
        _one_line(str(info.value))
        assert "exact" in str(info.value)
    both_exact = studio.compare(query, collection, (DEFAULT, SearchConfig(index="exact")),
                                (DEFAULT, SearchConfig(index="exact", rerank="qe", whiten="none")))
    assert len(both_exact.a.hits) == len(both_exact.b.hits) == 10


def test_dropping_the_gallery_drops_its_milvus_collections(studio, served):
    collection, uri = served
    studio.publish(collection, to=uri)
    studio.search(QUERIES[2], collection, scfg=studio.search_defaults(collection, k=3))
    client, names = _milvus_collections(studio, collection)
    prefix = studio.served_by(collection)["name"]
    assert names == [f"{prefix}_k{studio.store.find_config(studio.resolve(DEFAULT))}"]
    assert studio.drop_collection(collection)
    assert not [n for n in client.list_collections() if n.startswith(prefix)]
    assert "milvus-demo" in {c.name for c in studio.collections()}  # the source is untouched


def test_unpublishing_searches_in_process_again(studio, served):
    collection, uri = served
    studio.publish(collection, to=uri)
    client, names = _milvus_collections(studio, collection)
    assert len(names) == 1
    assert studio.unpublish(collection) is True
    assert studio.served_by(collection) is None
    assert studio.unpublish(collection) is False
    assert studio.search_defaults(collection) == SearchConfig()
    result = studio.search(QUERIES[0], collection, scfg=SearchConfig(k=5))  # dba + centring, in process
    assert "served_by" not in result.search and "milvus_ms" not in result.timings
    assert result.hits[0].name == "cat/chelsea.jpg"
    with pytest.raises(ServiceError) as info:
        studio.search(QUERIES[0], collection, scfg=SearchConfig(k=5, index="milvus", rerank="none", whiten="none"))
    _one_line(str(info.value))
    assert "publish" in str(info.value)
    assert names[0] in client.list_collections()  # kept: not asked to drop
    client.drop_collection(names[0])

    studio.publish(collection, to=uri)  # again, then away for good
    client, names = _milvus_collections(studio, collection)
    assert len(names) == 1
    assert studio.unpublish(collection, drop=True) is True
    assert names[0] not in client.list_collections()
    assert studio.search(QUERIES[0], collection, scfg=SearchConfig(k=3, index="auto")).hits[0].name == "cat/chelsea.jpg"


# -- 3. unreachable Milvus ----------------------------------------------------------------------------------------
def test_an_unreachable_server_is_refused_quickly_in_one_line(studio, demo):
    collection = f"milvus-unreachable-{uuid.uuid4().hex[:8]}"
    studio.fork(demo, collection)
    try:
        port = _free_port()  # closed again: nothing listens there
        started = time.monotonic()
        with pytest.raises(ServiceError) as info:
            studio.publish(collection, to=f"http://127.0.0.1:{port}")
        assert time.monotonic() - started < 30
        message = str(info.value)
        _one_line(message)
        assert f"127.0.0.1:{port}" in message
        assert studio.served_by(collection) is None  # nothing half-attached
        with pytest.raises(ServiceError) as info:
            studio.search(QUERIES[0], collection, scfg=SearchConfig(index="milvus", rerank="none", whiten="none"))
        _one_line(str(info.value))
    finally:
        studio.drop_collection(collection)


def test_a_lite_path_without_db_is_refused(studio, demo, tmp_path):
    collection = f"milvus-nodb-{uuid.uuid4().hex[:8]}"
    studio.fork(demo, collection)
    try:
        with pytest.raises(ServiceError) as info:
            studio.publish(collection, to=str(tmp_path / "vectors.sqlite"))
        message = str(info.value)
        _one_line(message)
        assert ".db" in message and "vectors.sqlite" in message
        assert studio.served_by(collection) is None
        assert not (tmp_path / "vectors.sqlite").exists()
    finally:
        studio.drop_collection(collection)


def test_a_server_that_goes_away_gives_a_one_line_error(studio, demo, tmp_path):
    collection = f"milvus-gone-{uuid.uuid4().hex[:8]}"
    studio.fork(demo, collection)
    proc, uri = start_lite_server(tmp_path / "gone")
    try:
        studio.publish(collection, to=uri)
        scfg = studio.search_defaults(collection, k=3)
        assert studio.search(QUERIES[0], collection, scfg=scfg).hits[0].name == "cat/chelsea.jpg"
        stop_process(proc)
        started = time.monotonic()
        with pytest.raises(ServiceError) as info:
            studio.search(QUERIES[0], collection, scfg=scfg)
        assert time.monotonic() - started < 30
        _one_line(str(info.value))
        assert uri.split("://")[1] in str(info.value)
        # searching it in process still works
        exact = studio.search(QUERIES[0], collection, scfg=SearchConfig(k=3, index="exact"))
        assert exact.hits[0].name == "cat/chelsea.jpg"
    finally:
        stop_process(proc)
        studio.drop_collection(collection)  # best effort on Milvus: the server is gone


# -- 4. a state machine over a small real gallery ---------------------------------------------------------------------
CH = ExtractorConfig(backbone="colorhist")  # numpy colour histograms: no model to load
GALLERY = "g"
# 12 demo photos with distinct colour histograms (no mirror images: a flip has the same histogram)
PHOTOS = ["astronaut/astronaut.jpg", "astronaut/astronaut_crop.jpg", "astronaut/astronaut_faded.jpg",
          "cat/chelsea.jpg", "cat/chelsea_crop.jpg", "coffee/coffee.jpg", "coffee/coffee_crop.jpg",
          "microscopy/immunohistochemistry.jpg", "microscopy/retina.jpg", "rocket/rocket.jpg",
          "space/hubble.jpg", "texture/brick.jpg"]


RULES: dict[str, int] = {}  # steps per rule (a search counts as "search-milvus" when Milvus served it)


def _count(rule_name: str) -> None:
    RULES[rule_name] = RULES.get(rule_name, 0) + 1


class MilvusMachine(RuleBasedStateMachine):
    """One gallery, a model of its members and of where it is served; see the module docstring."""

    base: Path | None = None
    server_uri: str | None = None

    def __init__(self):
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="milvus-machine-", dir=self.base))
        self.photos = self.root / "photos"
        self.photos.mkdir()
        for i, rel in enumerate(PHOTOS):
            shutil.copyfile(DEMO / rel, self.photos / f"p{i:02d}.jpg")
        self.uris = {"lite-file": str(self.root / "g.db"), "lite-server": self.server_uri}
        self.studio: Studio | None = None
        self.members: set[str] = set()  # names
        self.published: str | None = None  # the URI the gallery is served from

    def _open(self) -> None:
        self.studio = Studio(self.root / "studio.sqlite", device="cpu", batch_size=4, workers=1)

    def _add(self, picks: list[int]) -> None:
        sources = [SourceFile(self.photos / f"p{i:02d}.jpg", f"p{i:02d}.jpg", None) for i in picks]
        self.studio.add_files(sources, GALLERY, CH)
        self.members.update(s.name for s in sources)

    @initialize(picks=st.lists(st.integers(0, 11), min_size=1, max_size=5, unique=True))
    def start(self, picks):
        self._open()
        self._add(picks)

    @rule(picks=st.lists(st.integers(0, 11), min_size=1, max_size=3, unique=True))
    def add(self, picks):
        _count("add")
        self._add(picks)

    @precondition(lambda self: len(self.members) > 1)
    @rule(which=st.integers(0, 99))
    def remove(self, which):
        _count("remove")
        name = sorted(self.members)[which % len(self.members)]
        assert self.studio.remove(name, GALLERY) == [name]
        self.members.discard(name)

    @rule(where=st.sampled_from(LITE))
    def publish(self, where):
        _count("publish")
        published = self.studio.publish(GALLERY, CH, to=self.uris[where])
        self.published = milvus.normalize_uri(self.uris[where])
        assert published.total == len(self.members), (published, sorted(self.members))

    @precondition(lambda self: self.published is not None)
    @rule()
    def sync(self):
        """Publish again to the stored URI: Milvus holds the members afterwards, whatever changed before."""
        _count("sync")
        published = self.studio.publish(GALLERY, CH)
        assert published.total == len(self.members), published
        assert _served_ids(self.studio, GALLERY, CH) == _embedded(self.studio, GALLERY, CH)

    @rule(drop=st.booleans())
    def unpublish(self, drop):
        _count("unpublish")
        setting = self.studio.served_by(GALLERY)
        assert self.studio.unpublish(GALLERY, drop=drop) == (self.published is not None)
        self.published = None
        if setting is not None and drop:
            client = milvus.connect(setting["uri"])
            assert not [n for n in client.list_collections() if n.startswith(setting["name"])]

    @rule()
    def reopen(self):
        _count("reopen")
        self.studio.close()
        self._open()

    @rule(query=st.integers(0, 11), metric=st.sampled_from(["cosine", "euclidean", "manhattan"]),
          rerank=st.sampled_from(["none", "qe"]), k=st.sampled_from([1, 3, 100]))
    def search(self, query, metric, rerank, k):
        image = self.photos / f"p{query:02d}.jpg"
        scfg = self.studio.search_defaults(GALLERY, metric=metric, rerank=rerank, k=k)
        got = self.studio.search(image, GALLERY, CH, scfg)
        assert len(got.hits) == min(k, len(self.members))
        assert {h.name for h in got.hits} <= self.members, ({h.name for h in got.hits}, self.members)
        _count("search-milvus" if self.published else "search-in-process")
        if self.published is None:
            assert "served_by" not in got.search
            return
        self._check_served(image, got, scfg)

    def _check_served(self, image, got, scfg) -> None:
        """A Milvus-served result: Milvus holds exactly the embedded members, and ranks as the exact search."""
        assert "Milvus" in got.search["served_by"]
        assert _served_ids(self.studio, GALLERY, CH) == _embedded(self.studio, GALLERY, CH)
        assert len(_embedded(self.studio, GALLERY, CH)) == len(self.members)
        exact = self.studio.search(image, GALLERY, CH, SearchConfig(k=scfg.k, metric=scfg.metric, rerank=scfg.rerank,
                                                                    whiten="none", index="exact"))
        _same_ranking(got, exact)

    @invariant()
    def a_published_gallery_serves_the_exact_ranking(self):
        """After every step, a fixed query on a published gallery (the search rule varies it)."""
        if self.studio is None or self.published is None:
            return
        image = self.photos / "p03.jpg"
        scfg = self.studio.search_defaults(GALLERY, rerank="none", k=100)
        got = self.studio.search(image, GALLERY, CH, scfg)
        assert {h.name for h in got.hits} == self.members
        self._check_served(image, got, scfg)

    @invariant()
    def served_where_the_model_says(self):
        if self.studio is None:
            return
        setting = self.studio.served_by(GALLERY)
        assert (setting["uri"] if setting else None) == self.published
        assert {m.name for m in self.studio.members(GALLERY)} == self.members

    def teardown(self):
        try:
            if self.studio is not None:
                if self.published is not None:
                    self.studio.unpublish(GALLERY, drop=True)  # the shared server keeps nothing of ours
                self.studio.close()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def test_milvus_state_machine(tmp_path, lite_server):
    from hypothesis import configuration

    MilvusMachine.base, MilvusMachine.server_uri = tmp_path, lite_server
    home = getattr(configuration, "__hypothesis_home_directory", None)
    configuration.set_hypothesis_home_dir(tmp_path / "hypothesis-home")  # nothing written into the repository
    try:
        run_state_machine_as_test(MilvusMachine, settings=settings(
            max_examples=int(os.environ.get("RETRIEVAL_STATEFUL_EXAMPLES", "15")), stateful_step_count=12,
            deadline=None, database=None,
            derandomize=os.environ.get("RETRIEVAL_STATEFUL_DERANDOMIZE", "") not in ("", "0"),
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], print_blob=True))
    finally:
        configuration.set_hypothesis_home_dir(home)
        print("\nmilvus machine: " + ", ".join(f"{k} {v}" for k, v in sorted(RULES.items())))


# -- regressions: engine bugs these tests found ---------------------------------------------------------------------
PX = ExtractorConfig(backbone="pixels")


def test_another_studio_moving_the_gallery_is_seen(tmp_path):
    """Another Studio re-publishing the gallery elsewhere (a new Milvus collection, the same generation)
    must not leave this one searching a collection it never synced."""
    db = tmp_path / "s.sqlite"
    a = Studio(db, device="cpu", workers=1)
    b = None
    try:
        a.add_files([SourceFile(DEMO / rel, Path(rel).name, None) for rel in PHOTOS[:4]], GALLERY, PX)
        a.ensure_embeddings(GALLERY, CH)
        a.publish(GALLERY, PX, to=str(tmp_path / "x.db"))
        a.publish(GALLERY, CH)
        query = DEMO / PHOTOS[0]
        assert len(a.search(query, GALLERY, PX, a.search_defaults(GALLERY, k=5)).hits) == 4
        b = Studio(db, device="cpu", workers=1)  # another process, say the CLI beside the app
        b.publish(GALLERY, CH, to=str(tmp_path / "y.db"))
        assert len(a.search(query, GALLERY, PX, a.search_defaults(GALLERY, k=5)).hits) == 4
    finally:
        for s in (a, b):
            if s is not None:
                s.close()


def test_an_emptied_published_gallery_says_so(tmp_path):
    """Milvus proposing nothing reads as the in-process search does: 'has no images yet'."""
    studio = Studio(tmp_path / "s.sqlite", device="cpu", workers=1)
    try:
        studio.add_files([SourceFile(DEMO / PHOTOS[0], "only.jpg", None)], GALLERY, CH)
        studio.publish(GALLERY, CH, to=str(tmp_path / "g.db"))
        studio.remove("only.jpg", GALLERY)
        with pytest.raises(ServiceError, match="no images"):
            studio.search(DEMO / PHOTOS[0], GALLERY, CH, SearchConfig(k=3, index="exact"))
        with pytest.raises(ServiceError, match="no images"):
            studio.search(DEMO / PHOTOS[0], GALLERY, CH, studio.search_defaults(GALLERY, k=3))
    finally:
        studio.close()
