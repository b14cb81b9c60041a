"""User model files under a state machine and a deterministic race (issue: bring your own model).

A hypothesis ``RuleBasedStateMachine`` drives a real ``Studio`` (``runtime="keras"``,
``device="cpu"``) on a temporary SQLite file, and at times a SECOND ``Studio`` on the
same file (what another process of the app sees), through random programs of:
add a model name -> file, replace it (another file or another preprocess), remove
it, reopen the ``Studio``, open or close the second one, index part of a small
gallery with a name, search with a name. The files are three tiny saved Keras
models made here: two 3-conv CNNs of different seeds (an 8×8×16 feature map) and a
2-D embedding (12-d).

The model: ``name -> (file, preprocess)``. After every step, for each open Studio:

- ``user_models()`` and ``models()`` list exactly the model's names, ``models()``
  describing each by its current file and preprocess;
- for every registered name, the configuration's weights id, the query vector,
  every gallery vector and every search score equal (within 1e-5) those of a
  network built afresh from the CURRENT file and preprocess (a reference Studio
  on a throwaway database): no vector of a replaced or removed file is served;
- a name not registered is refused in one line (``resolve`` and ``search``);
- the store holds configurations of registered files only (each with the
  current content id), and no vector whose configuration is gone;
- ``<data folder>/models`` holds exactly the copies of the distinct registered
  files (no orphan, no temporary), and the folder the files came from is untouched.

Budget: ``RETRIEVAL_STATEFUL_EXAMPLES`` programs (default 15 here: each step runs
real networks) of at most ``RETRIEVAL_USER_MODEL_STEPS`` steps (default 10);
``RETRIEVAL_STATEFUL_DERANDOMIZE=1`` makes a run reproducible.

The race tests block a search at one of four real seams with a ``threading.Event``
(inside the query's embed, inside the gallery's embed, between reading the gallery
and embedding the query, between resolving the configuration and looking its row
up) and remove or replace the model from the test's thread meanwhile. Allowed: the
old file's vectors throughout, the new file's throughout, or a one-line error;
afterwards nothing of the old file is served or stored.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
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

from retrieval import ExtractorConfig, SearchConfig, ServiceError, Studio
from retrieval.backbones import BackboneUnavailable
from retrieval.store import StoreError

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "assets" / "demo"
PHOTOS = ("cat/chelsea.jpg", "cat/chelsea_crop.jpg", "cat/chelsea_flipped.jpg",
          "coffee/coffee.jpg", "coffee/coffee_crop.jpg", "coffee/coffee_flipped.jpg")
ERRORS = (BackboneUnavailable, ServiceError, StoreError)  # the one-line errors a user may see
FILES = ("cnn1", "cnn2", "emb")
PREPROCESS = ("none", "unit")
NAMES = ("m1", "m2", "m3")
POOLINGS = ("gap", "mac")
PLAIN = SearchConfig(k=100, metric="cosine", rerank="none", whiten="none", index="exact")
BUILTIN = "colorhist"  # the collection is started with it: no network
TOL = {"rtol": 1e-5, "atol": 1e-5}

STATS = {"programs": 0, "steps": 0, "seconds": 0.0}
RULES: dict[str, int] = {}


# -- the model files and the gallery, made once per process ----------------------------------------
class Fixtures:
    """Model files, photo folders and the reference Studio, under one temporary folder."""

    def __init__(self, base: Path):
        from retrieval.device import import_keras

        keras = import_keras()
        self.base = base
        self.files_dir = base / "user-files"
        self.files_dir.mkdir(parents=True)
        self.files: dict[str, Path] = {}
        for key, seed in (("cnn1", 11), ("cnn2", 12)):
            keras.utils.set_random_seed(seed)
            inp = keras.Input((32, 32, 3))
            x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inp)
            x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="c2")(x)
            x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="c3")(x)
            self._save(key, keras.Model(inp, x))
        keras.utils.set_random_seed(13)
        inp = keras.Input((32, 32, 3))
        x = keras.layers.Conv2D(8, 3, activation="relu")(inp)
        self._save("emb", keras.Model(inp, keras.layers.Dense(12, name="embed")(keras.layers.GlobalAveragePooling2D()(x))))
        self.sha = {k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in self.files.items()}
        assert len(set(self.sha.values())) == len(FILES)
        self.listing = sorted(p.name for p in self.files_dir.iterdir())

        self.photos = base / "photos"
        self.subsets: list[Path] = []
        for i in range(3):  # three folders of two photos: what ``index`` adds
            folder = self.photos / f"s{i}"
            folder.mkdir(parents=True)
            for rel in PHOTOS[2 * i:2 * i + 2]:
                shutil.copyfile(DEMO / rel, folder / rel.replace("/", "_"))
            self.subsets.append(folder)
        self.query = DEMO / "cat" / "chelsea_faded.jpg"
        self.ref = Studio(base / "reference" / "ref.sqlite", device="cpu", runtime="keras")
        self._expected: dict[tuple, tuple] = {}

    def _save(self, key: str, model) -> None:
        self.files[key] = self.files_dir / f"{key}.keras"
        model.save(self.files[key])

    def expected(self, file: str, preprocess: str, pooling: str) -> tuple[str, np.ndarray, dict[str, np.ndarray]]:
        """(weights id, query vector, sha256 -> gallery vector) from a network built afresh from the file."""
        key = (file, preprocess, pooling)
        if key not in self._expected:
            name = f"ref-{file}-{preprocess}"
            if name not in {m["name"] for m in self.ref.user_models()}:
                self.ref.add_model(name, self.files[file], preprocess=preprocess)
            cfg = ExtractorConfig(name, pooling)
            for folder in self.subsets:
                self.ref.index(folder, collection="all", cfg=cfg)
            _, _, gallery = self.ref.gallery("all", cfg)
            vectors = {m.sha256: np.array(v) for m, v in zip(gallery.members, gallery.vectors)}
            assert len(vectors) == len(PHOTOS)
            self._expected[key] = (self.ref.resolve(cfg).weights, self.ref.embed_query(self.query, cfg)[0], vectors)
        return self._expected[key]

    def close(self) -> None:
        self.ref.close()


_FIXTURES: Fixtures | None = None


def fixtures() -> Fixtures:
    global _FIXTURES
    if _FIXTURES is None:
        _FIXTURES = Fixtures(Path(tempfile.mkdtemp(prefix="user-models-state-")))
    return _FIXTURES


@pytest.fixture(scope="module", autouse=True)
def _cleanup_fixtures():
    yield
    global _FIXTURES
    if _FIXTURES is not None:
        _FIXTURES.close()
        shutil.rmtree(_FIXTURES.base, ignore_errors=True)
        _FIXTURES = None


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text, repr(text)
    return text


def check_served(st_: Studio, name: str, entry: tuple[str, str], pooling: str, fx: Fixtures, who: str) -> None:
    """What ``st_`` serves for ``name`` is what the current file and preprocess give, vector for vector."""
    file, preprocess = entry
    weights, query, gallery_vectors = fx.expected(file, preprocess, pooling)
    cfg = ExtractorConfig(name, pooling)
    resolved = st_.resolve(cfg)
    assert resolved.weights == weights, f"{who}: {name} resolves to {resolved.weights}, the current file is {weights}"
    got = st_.embed_query(fx.query, cfg)[0]
    np.testing.assert_allclose(got, query, **TOL, err_msg=f"{who}: {name}'s query vector is not {file}/{preprocess}'s")
    _, _, gallery = st_.gallery("g", cfg)
    for m, v in zip(gallery.members, gallery.vectors):
        np.testing.assert_allclose(v, gallery_vectors[m.sha256], **TOL,
                                   err_msg=f"{who}: {name}'s vector of {m.name} is not {file}/{preprocess}'s")
    result = st_.search(fx.query, "g", cfg, PLAIN)
    assert result.config == resolved.key
    assert len(result.hits) == len(gallery.members)
    for hit in result.hits:
        want = float(query @ gallery_vectors[hit.sha256])
        assert abs(hit.score - want) < 1e-5, f"{who}: {name} scores {hit.name} {hit.score}, {file}/{preprocess} gives {want}"


# -- the machine --------------------------------------------------------------------------------------
class UserModelMachine(RuleBasedStateMachine):
    base: Path = Path(tempfile.gettempdir())
    second_studio = True  # False: one Studio only (reopened), no other process

    def __init__(self):
        super().__init__()
        STATS["programs"] += 1
        self.fx = fixtures()
        self.root = Path(tempfile.mkdtemp(prefix="program-", dir=self.base))
        self.db = self.root / "data" / "gallery.sqlite"
        self.db.parent.mkdir(parents=True)
        self.a: Studio | None = None
        self.b: Studio | None = None
        self.model: dict[str, tuple[str, str]] = {}

    # -- helpers --
    def _count(self, rule: str) -> None:
        STATS["steps"] += 1
        RULES[rule] = RULES.get(rule, 0) + 1

    def studios(self) -> list[tuple[str, Studio]]:
        return [("A", self.a)] + ([("B", self.b)] if self.b is not None else [])

    def via(self, second: bool) -> tuple[str, Studio]:
        return ("B", self.b) if second and self.b is not None else ("A", self.a)

    @property
    def models_dir(self) -> Path:
        return self.db.parent / getattr(self.a._models.user, "folder", "models")

    # -- rules --
    @initialize()
    def start(self):
        self.a = Studio(self.db, device="cpu", runtime="keras")
        self.a.index(self.fx.subsets[0], collection="g", cfg=ExtractorConfig(BUILTIN))

    @rule(name=st.sampled_from(NAMES), file=st.sampled_from(FILES), preprocess=st.sampled_from(PREPROCESS),
          second=st.booleans())
    def add(self, name, file, preprocess, second):
        self._count("add")
        who, s = self.via(second)
        if name in self.model:
            with pytest.raises(ERRORS) as err:
                s.add_model(name, self.fx.files[file], preprocess=preprocess)
            assert "exists already" in one_line(err.value), who
            return
        row = s.add_model(name, self.fx.files[file], preprocess=preprocess)
        assert row["sha256"] == self.fx.sha[file] and row["preprocess"] == preprocess, who
        self.model[name] = (file, preprocess)

    @rule(name=st.sampled_from(NAMES), file=st.sampled_from(FILES), preprocess=st.sampled_from(PREPROCESS),
          second=st.booleans())
    def replace(self, name, file, preprocess, second):
        self._count("replace")
        who, s = self.via(second)
        row = s.add_model(name, self.fx.files[file], preprocess=preprocess, replace=True)
        assert row["sha256"] == self.fx.sha[file] and row["preprocess"] == preprocess, who
        self.model[name] = (file, preprocess)

    @rule(name=st.sampled_from(NAMES), second=st.booleans())
    def remove(self, name, second):
        self._count("remove")
        who, s = self.via(second)
        assert s.remove_model(name) == (name in self.model), f"{who}: remove_model({name!r})"
        self.model.pop(name, None)

    @rule()
    def reopen(self):
        self._count("reopen")
        self.a.close()
        self.a = Studio(self.db, device="cpu", runtime="keras")

    @precondition(lambda self: self.second_studio and self.b is None)
    @rule()
    def open_second(self):
        self._count("open_second")
        self.b = Studio(self.db, device="cpu", runtime="keras")

    @precondition(lambda self: self.b is not None)
    @rule()
    def close_second(self):
        self._count("close_second")
        self.b.close()
        self.b = None

    @rule(name=st.sampled_from(NAMES), subset=st.integers(0, 2), pooling=st.sampled_from(POOLINGS),
          second=st.booleans())
    def index(self, name, subset, pooling, second):
        self._count("index")
        who, s = self.via(second)
        cfg = ExtractorConfig(name, pooling)
        if name not in self.model:
            with pytest.raises(ERRORS) as err:
                s.index(self.fx.subsets[subset], collection="g", cfg=cfg)
            assert name in one_line(err.value), who
            return
        s.index(self.fx.subsets[subset], collection="g", cfg=cfg)

    @rule(name=st.sampled_from(NAMES), pooling=st.sampled_from(POOLINGS), second=st.booleans())
    def search(self, name, pooling, second):
        self._count("search")
        who, s = self.via(second)
        if name not in self.model:
            with pytest.raises(ERRORS) as err:
                s.search(self.fx.query, "g", ExtractorConfig(name, pooling), PLAIN)
            assert name in one_line(err.value)
            return
        check_served(s, name, self.model[name], pooling, self.fx, who)

    # -- invariants --
    @invariant()
    def names_are_the_models(self):
        if self.a is None:
            return
        for who, s in self.studios():
            assert {m["name"] for m in s.user_models()} == set(self.model), f"{who}.user_models()"
            listing = {m["name"]: m for m in s.models() if m["family"] == "file"}
            assert set(listing) == set(self.model), \
                f"{who}.models() lists {sorted(listing)}, registered: {sorted(self.model)}"
            for name, (file, preprocess) in self.model.items():
                user = listing[name]["user"]
                assert (user["sha256"], user["preprocess"]) == (self.fx.sha[file], preprocess), \
                    f"{who}.models() describes {name} as {user['sha256'][:16]}/{user['preprocess']}, it is {file}/{preprocess}"

    @invariant()
    def removed_names_are_refused(self):
        if self.a is None:
            return
        for name in set(NAMES) - set(self.model):
            for who, s in self.studios():
                with pytest.raises(ERRORS) as err:
                    s.resolve(ExtractorConfig(name))
                assert name in one_line(err.value), f"{who}"

    @invariant()
    def every_registered_name_serves_its_current_file(self):
        if self.a is None:
            return
        for name, entry in sorted(self.model.items()):
            for who, s in self.studios():
                check_served(s, name, entry, "gap", self.fx, who)

    @invariant()
    def the_store_holds_vectors_of_registered_files_only(self):
        if self.a is None:
            return
        store = self.a.store
        for config_id, backbone, weights in store._read("SELECT id, backbone, weights FROM configs"):
            if backbone == BUILTIN:
                continue
            assert backbone in self.model, f"configuration {config_id} of {backbone} ({weights}) outlived its model"
            file, preprocess = self.model[backbone]
            want = self.fx.expected(file, preprocess, "gap")[0]
            assert weights == want, f"configuration {config_id} of {backbone} is {weights}, the file is {want}"
        for table in ("embeddings", "query_vectors", "transforms"):
            orphans = store._read(f"SELECT COUNT(*) FROM {table} WHERE config_id NOT IN (SELECT id FROM configs)")[0][0]
            assert orphans == 0, f"{orphans} rows of {table} belong to no configuration"

    @invariant()
    def the_models_folder_holds_the_registered_copies_only(self):
        held = sorted(p.name for p in self.models_dir.iterdir()) if self.models_dir.exists() else []
        want = sorted({f"{self.fx.sha[file]}.keras" for file, _ in self.model.values()})
        assert held == want, f"models/ holds {held}, registered copies: {want}"
        assert sorted(p.name for p in self.fx.files_dir.iterdir()) == self.fx.listing  # nothing written beside them
        for p in self.models_dir.iterdir() if self.models_dir.exists() else ():
            assert p.resolve().is_relative_to(self.db.parent.resolve())

    def teardown(self):
        try:
            for s in (self.b, self.a):
                if s is not None:
                    s.close()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


class OneStudioMachine(UserModelMachine):
    second_studio = False


def stateful_settings() -> settings:
    return settings(
        max_examples=int(os.environ.get("RETRIEVAL_STATEFUL_EXAMPLES", "15")),
        stateful_step_count=int(os.environ.get("RETRIEVAL_USER_MODEL_STEPS", "10")),
        deadline=None,
        database=None,
        derandomize=os.environ.get("RETRIEVAL_STATEFUL_DERANDOMIZE", "") not in ("", "0"),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        print_blob=True,
    )


def run(machine: type[UserModelMachine], base: Path) -> dict:
    from hypothesis import configuration

    machine.base = base
    before, rules_before = dict(STATS), dict(RULES)
    home = getattr(configuration, "__hypothesis_home_directory", None)
    configuration.set_hypothesis_home_dir(base / "hypothesis-home")
    started = time.perf_counter()
    try:
        run_state_machine_as_test(machine, settings=stateful_settings())
    finally:
        configuration.set_hypothesis_home_dir(home)
        STATS["seconds"] += time.perf_counter() - started
        done = {k: STATS[k] - before[k] for k in STATS}
        rules = {k: v - rules_before.get(k, 0) for k, v in sorted(RULES.items())}
        print(f"\n{machine.__name__}: {done['programs']} programs, {done['steps']} steps in {done['seconds']:.1f} s; "
              + ", ".join(f"{k} {v}" for k, v in rules.items()))
    return done


def test_one_studio_user_models_state_machine(tmp_path):
    run(OneStudioMachine, tmp_path)


def test_two_studios_user_models_state_machine(tmp_path):
    run(UserModelMachine, tmp_path)


# -- deterministic interleavings: a search with X in flight while another thread removes or replaces X --------
class _Blocking:
    """A loaded backbone whose ``embed`` stops, in one thread, until released (everything else delegated)."""

    def __init__(self, inner, gate: _Gate):
        self._inner, self._gate = inner, gate

    def embed(self, *args, **kwargs):
        self._gate.stop()
        return self._inner.embed(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._inner, name)


class _Gate:
    """Stops the search thread once at the seam; the test then acts and releases it."""

    def __init__(self):
        self.reached, self.released = threading.Event(), threading.Event()
        self.thread: int | None = None
        self.passed = False

    def stop(self) -> None:
        if threading.get_ident() != self.thread or self.passed:
            return
        self.passed = True
        self.reached.set()
        assert self.released.wait(60), "the test never released the search"


def _install(s: Studio, seam: str, gate: _Gate) -> None:
    """Put the gate at one real seam of ``s`` (instance attributes shadow the methods; dropped with ``s``)."""
    models, searcher, store = s._models, s._searcher, s.store
    if seam in ("query-embed", "ensure-embed"):  # inside the loaded network's embed
        backbone = models.backbone

        def blocking_backbone(*args, **kwargs):
            return _Blocking(backbone(*args, **kwargs), gate)

        models.backbone = blocking_backbone
    elif seam == "after-gallery":  # the gallery's vectors are read; the query is not embedded yet
        ranker = searcher.ranker

        def blocking_ranker(*args, **kwargs):
            out = ranker(*args, **kwargs)
            gate.stop()
            return out

        searcher.ranker = blocking_ranker
    elif seam == "before-config-row":  # the configuration is resolved; its row is not looked up yet
        config_id = store.config_id

        def blocking_config_id(*args, **kwargs):
            gate.stop()
            return config_id(*args, **kwargs)

        store.config_id = blocking_config_id
    else:
        raise AssertionError(seam)


def _matches(result, expected) -> bool:
    _, query, vectors = expected
    return all(abs(h.score - float(query @ vectors[h.sha256])) < 1e-5 for h in result.hits)


@pytest.mark.parametrize("action", ["remove", "replace"])
@pytest.mark.parametrize("seam", ["query-embed", "ensure-embed", "after-gallery", "before-config-row"])
def test_a_search_in_flight_never_mixes_files_and_leaves_no_orphans(tmp_path, seam, action):
    fx = fixtures()
    old, new = fx.expected("cnn1", "none", "gap"), fx.expected("cnn2", "none", "gap")
    s = Studio(tmp_path / "data" / "gallery.sqlite", device="cpu", runtime="keras")
    try:
        s.add_model("x", fx.files["cnn1"])
        cfg = ExtractorConfig("x", "gap")
        s.index(fx.subsets[0], collection="g", cfg=cfg)
        # ensure-embed: the search itself computes the missing vectors of these two
        s.index(fx.subsets[1], collection="g", cfg=ExtractorConfig(BUILTIN) if seam == "ensure-embed" else cfg)
        if seam != "ensure-embed":
            check_served(s, "x", ("cnn1", "none"), "gap", fx, "before")  # the old gallery is complete and cached
        old_ids = [r[0] for r in s.store._read("SELECT id FROM configs WHERE backbone = 'x'")]

        gate, outcome = _Gate(), {}
        _install(s, seam, gate)

        def searching():
            gate.thread = threading.get_ident()
            try:
                outcome["result"] = s.search(fx.query, "g", cfg, PLAIN)
            except Exception as exc:  # noqa: BLE001 - the outcome is judged below
                outcome["error"] = exc

        thread = threading.Thread(target=searching, daemon=True)
        thread.start()
        assert gate.reached.wait(60), f"the search never reached {seam}: {outcome}"
        if action == "remove":
            assert s.remove_model("x")
        else:
            s.add_model("x", fx.files["cnn2"], replace=True)
        gate.released.set()
        thread.join(60)
        assert not thread.is_alive()

        # the search in flight: the old file's vectors throughout, the new one's throughout, or one line
        print(f"\n{seam}/{action}: " + (f"error: {outcome['error']}" if "error" in outcome else
                                       "old" if _matches(outcome["result"], old) else
                                       "new" if _matches(outcome["result"], new) else "MIXED"))
        if "error" in outcome:
            assert isinstance(outcome["error"], ERRORS), repr(outcome["error"])
            one_line(outcome["error"])
        else:
            result = outcome["result"]
            assert result.hits
            assert _matches(result, old) or (action == "replace" and _matches(result, new)), (
                f"{seam}/{action}: the search mixed files: config {result.config}, scores "
                f"{[(h.name, round(h.score, 6)) for h in result.hits]}; old file gives "
                f"{[(h.name, round(float(old[1] @ old[2][h.sha256]), 6)) for h in result.hits]}, new file gives "
                f"{[(h.name, round(float(new[1] @ new[2][h.sha256]), 6)) for h in result.hits]}")

        # afterwards: nothing of the old file is served or kept
        for part, attr in ((s._models, "backbone"), (s._searcher, "ranker"), (s.store, "config_id")):
            part.__dict__.pop(attr, None)
        store = s.store
        for table in ("embeddings", "query_vectors", "transforms"):
            assert store._read(f"SELECT COUNT(*) FROM {table} WHERE config_id NOT IN (SELECT id FROM configs)")[0][0] == 0
            left = store._read(f"SELECT COUNT(*) FROM {table} WHERE config_id IN ({','.join('?' * len(old_ids))})",
                               old_ids)[0][0]
            assert left == 0, f"{seam}/{action}: {left} rows of {table} of the old file's configuration remain"
        if action == "remove":
            rows = store._read("SELECT id, key FROM configs WHERE backbone = 'x'")
            assert rows == [], f"{seam}/remove: configurations of the removed model remain: {rows}"
            with pytest.raises(ERRORS) as err:
                s.search(fx.query, "g", cfg, PLAIN)
            assert "x" in one_line(err.value)
            assert not any((s.store.path.parent / getattr(s._models.user, "folder", "models")).glob("*.keras"))
        else:
            check_served(s, "x", ("cnn2", "none"), "gap", fx, "after")
            rows = store._read("SELECT id, weights FROM configs WHERE backbone = 'x'")
            assert {w for _, w in rows} == {new[0]}, f"{seam}/replace: configurations of x: {rows}, current {new[0]}"
            held = sorted(p.name for p in (s.store.path.parent / getattr(s._models.user, "folder", "models")).iterdir())
            assert held == [f"{fx.sha['cnn2']}.keras"]
    finally:
        s.close()


def test_another_studio_lists_the_models_the_database_holds(tmp_path):
    """The shrunk program the two-Studio machine found: B lists a model A removed (or describes A's old file)."""
    fx = fixtures()
    db = tmp_path / "data" / "gallery.sqlite"
    a = Studio(db, device="cpu", runtime="keras")
    b = Studio(db, device="cpu", runtime="keras")
    try:
        a.add_model("m1", fx.files["cnn1"])
        assert b.resolve(ExtractorConfig("m1")).weights == fx.expected("cnn1", "none", "gap")[0]  # B has seen m1
        a.add_model("m1", fx.files["cnn2"], replace=True)
        described = {m["name"]: m["user"]["sha256"] for m in b.models() if m["family"] == "file"}
        assert described == {"m1": fx.sha["cnn2"]}, f"B.models() describes {described}, A replaced m1 by cnn2"
        assert a.remove_model("m1")
        listed = [m["name"] for m in b.models() if m["family"] == "file"]
        assert listed == [], f"B.models() still lists {listed} after A removed it"
    finally:
        b.close()
        a.close()
