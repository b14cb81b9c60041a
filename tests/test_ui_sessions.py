"""The session rules of the page, against a real Studio: which gallery a tab sees and what it may pick."""

from types import SimpleNamespace

import pytest

from retrieval import ServiceError
from ui.sessions import DEMO, NO_QUERIES, SESSION_PREFIX, Sessions, kept, with_note


@pytest.fixture
def sessions(studio, indexed):
    studio.fork("photos", DEMO)  # the page's shared template
    yield Sessions(studio, ["efficientnet-lite1", "colorhist"])
    for c in studio.collections():
        if c.name == DEMO or c.name.startswith(SESSION_PREFIX):
            studio.drop_collection(c.name)


def tab(name):
    return SimpleNamespace(session_hash=name)


def test_a_tab_reads_the_shared_demo_until_it_changes_something(sessions):
    s = sessions.open(None, tab("t1"))
    assert s.collection == DEMO and not s.private and kept(s) is None
    mine = sessions.open(None, tab("t1"), writable=True)
    assert mine.private and mine.collection.startswith(SESSION_PREFIX) and kept(mine) == mine.collection
    assert sessions.open(None, tab("t1")).collection == mine.collection  # its own copy from now on, even
    # when a request carries no State yet (a read racing its first upload)
    other = sessions.open(None, tab("t2"))
    assert other.collection == DEMO  # another tab never sees the first one's copy
    # (``current`` comes from the page's gr.State, held on the server: a client cannot set it)


def test_menus_and_held_out_sources_never_offer_another_tabs_gallery(sessions):
    mine = sessions.open(None, tab("t1"), writable=True)
    theirs = sessions.open(None, tab("t2"), writable=True)
    sources = sessions.query_galleries(mine.collection)
    assert sources[0] == NO_QUERIES and theirs.collection not in sources and mine.collection not in sources
    with pytest.raises(ServiceError, match="unknown or unavailable backbone"):
        sessions.configs(mine.collection, "someone-elses-model", "gem", "cosine", "none", "none", 5)
    cfg, scfg = sessions.configs(mine.collection, "colorhist", "gem", "euclidean", "none", "none", 5)
    assert cfg.backbone == "colorhist" and scfg.metric == "euclidean" and scfg.k == 5


def test_a_clicked_result_is_trusted_only_if_it_is_in_the_tabs_gallery(sessions, studio):
    s = sessions.open(None, tab("t1"))
    member = studio.members(s.collection)[0]
    assert sessions.member(s, member.path).sha256 == member.sha256
    assert sessions.member(s, "/etc/passwd") is None
    assert sessions.member(s, None) is None
    gone = s.__class__(s.collection, "your gallery expired", s.private)
    assert sessions.member(gone, member.path) is None  # results of a gallery that is gone are not acted on
    assert with_note(gone, "text").startswith("**Note:** your gallery expired")
