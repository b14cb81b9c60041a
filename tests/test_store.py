import sqlite3

import numpy as np
import pytest

from retrieval.backbones import resolve
from retrieval.config import ExtractorConfig
from retrieval.store import NewMember, Store, StoreError

CFG = resolve(ExtractorConfig("pixels"))


def _member(i: int, label="a", vector=True) -> NewMember:
    v = np.full(4, float(i), np.float32) if vector else None
    return NewMember(f"{i:064x}", f"img{i}.jpg", f"/photos/img{i}.jpg", label, 10, 20, 100, v)


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "s.sqlite") as s:
        yield s


def test_schema_and_wal(store):
    assert {"images", "configs", "embeddings", "collections", "members", "transforms"} <= set(store.db.table_names())
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_content_is_stored_once_across_collections(store):
    a, b = store.collection_id("a", create=True), store.collection_id("b", create=True)
    cfg = store.config_id(CFG, 4)
    store.write_batch(a, cfg, [_member(1), _member(2)])
    store.write_batch(b, cfg, [_member(1, label="other")])
    assert store.db["images"].count == 2 and store.db["embeddings"].count == 2
    assert [m.label for m in store.members(b)] == ["other"]
    assert store.embedded_hashes(cfg) == {f"{1:064x}", f"{2:064x}"}


def test_gallery_matrix_and_generation(store):
    cid = store.collection_id("g", create=True)
    cfg = store.config_id(CFG, 4)
    store.write_batch(cid, cfg, [_member(i) for i in range(5)])
    g = store.gallery(cid, cfg)
    assert g.vectors.shape == (5, 4) and g.vectors.dtype == np.float32
    np.testing.assert_array_equal(g.vectors[:, 0], [0, 1, 2, 3, 4])
    store.remove("img3.jpg")
    g2 = store.gallery(cid, cfg)
    assert g2.generation > g.generation and g2.vectors[:, 0].tolist() == [0, 1, 2, 4]


def test_cache_sees_changes_from_another_connection(tmp_path):
    path = tmp_path / "shared.sqlite"
    first, second = Store(path), Store(path)
    cid = first.collection_id("g", create=True)
    cfg = first.config_id(CFG, 4)
    first.write_batch(cid, cfg, [_member(1)])
    assert len(second.gallery(cid, cfg).members) == 1
    first.write_batch(cid, cfg, [_member(2)])
    assert len(second.gallery(cid, cfg).members) == 2


def test_remove_by_hash_and_path_deletes_orphans(store):
    a, b = store.collection_id("a", create=True), store.collection_id("b", create=True)
    cfg = store.config_id(CFG, 4)
    store.write_batch(a, cfg, [_member(1), _member(2)])
    store.write_batch(b, cfg, [_member(2)])
    assert [m.name for m in store.remove(f"{1:064x}")] == ["img1.jpg"]
    assert store.image(f"{1:064x}") is None and store.db["embeddings"].count == 1
    assert [m.name for m in store.remove("/photos/img2.jpg", collection_id=a)] == ["img2.jpg"]
    assert store.image(f"{2:064x}") is not None  # still in collection b
    assert [m.name for m in store.drop_collection(b)] == ["img2.jpg"] and store.db["images"].count == 0
    assert store.drop_collection(b) is None  # gone already


def test_a_failed_batch_writes_nothing(store):
    cid = store.collection_id("g", create=True)
    cfg = store.config_id(CFG, 4)
    store.write_batch(cid, cfg, [_member(1)])
    broken = NewMember("f" * 64, "bad.jpg", None, None, 1, 1, 1, "not an array")
    with pytest.raises(Exception):
        store.write_batch(cid, cfg, [_member(2), broken])
    assert [m.name for m in store.members(cid)] == ["img1.jpg"]
    assert store.integrity_ok()


def test_transforms_are_tied_to_a_generation(store):
    cid = store.collection_id("g", create=True)
    cfg = store.config_id(CFG, 4)
    store.save_transform(cid, cfg, "whiten", 3, {"mean": np.ones(4, np.float32)})
    assert store.load_transform(cid, cfg, "whiten", 3)["mean"].tolist() == [1, 1, 1, 1]
    assert store.load_transform(cid, cfg, "whiten", 4) is None


def test_not_a_database(tmp_path):
    path = tmp_path / "junk.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot open database"):
        Store(path)


def test_labels_and_names_are_data_not_sql(store):
    cid = store.collection_id("x'; DROP TABLE images; --", create=True)
    cfg = store.config_id(CFG, 4)
    m = NewMember("e" * 64, "a'b\"; DROP TABLE members; --.jpg", None, "l'; --", 1, 1, 1, np.zeros(4, np.float32))
    store.write_batch(cid, cfg, [m])
    assert store.members(cid)[0].label == "l'; --"
    assert sqlite3.connect(store.path).execute("SELECT COUNT(*) FROM images").fetchone()[0] == 1
