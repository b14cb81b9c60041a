"""Which gallery a browser tab works on, and what it may see there.

The rules, in one place:
- the built-in demo is shared and never changed;
- a tab's first change (an upload, a removal, training) forks it into the
  tab's own copy-on-write gallery (``session-…``), visible to that tab only;
- a gallery idle past the TTL is dropped; a tab that still names it gets a
  fresh copy of the demo and a one-line note saying so;
- with ``--gallery NAME`` the shared gallery is NAME instead of the demo; one
  served from Milvus is never forked (a copy would be searched in process,
  every vector loaded): a change is refused with a one-line reason.

The service decides (``Studio.session``); this module only asks it with the
tab's identity and turns the answer into what the page keeps and shows.
"""

from __future__ import annotations

import secrets

from retrieval import ExtractorConfig, SearchConfig, ServiceError
from retrieval.service.reports import Session

DEMO = "demo"
SESSION_PREFIX = "session-"
NO_QUERIES = "none (leave-one-out)"


def owner_of(request) -> str:
    """Gradio's session hash: one per page load (and per gradio_client Client), so concurrent first
    uploads of one page end in one gallery."""
    return getattr(request, "session_hash", None) or f"anonymous-{secrets.token_hex(8)}"


def kept(s: Session) -> str | None:
    """What the page keeps in its ``session`` State: its private gallery's name, or None for the demo."""
    return s.collection if s.private else None


def with_note(s: Session, text: str) -> str:
    """A handler's message, after the session's one-line note (e.g. "your gallery expired") if any."""
    return f"**Note:** {' '.join(s.note.split())}\n\n{text}" if s.note else text


class Sessions:
    """The session rules over one Studio, and the backbones each session may pick."""

    def __init__(self, studio, base_models: list[str], template: str = DEMO, read_only: str | None = None):
        self.studio = studio
        self.base_models = base_models
        self.template = template  # the shared gallery every tab starts on
        self.read_only = read_only  # why the shared gallery is never forked (one line), or None

    def open(self, current: str | None, request, writable: bool = False) -> Session:
        if self.read_only:  # no tab ever gets a private gallery: every tab reads the shared one
            if writable:
                raise ServiceError(self.read_only)
            current = None
        return self.studio.session(owner_of(request), current, template=self.template, prefix=SESSION_PREFIX,
                                   writable=writable)

    def models(self, collection: str) -> list[str]:
        """Ready backbones, plus the models trained on this session's gallery (or on the shared one)."""
        own = {collection, self.template}
        return self.base_models + [m["name"] for m in self.studio.adapted_models() if m["collection"] in own]

    def configs(self, collection: str, backbone: str, pooling: str, metric: str, rerank: str, whiten: str,
                k: int) -> tuple[ExtractorConfig, SearchConfig]:
        """A page's menu choices as engine configs; a backbone the session may not use is refused."""
        if backbone not in self.models(collection):
            raise ServiceError(f"unknown or unavailable backbone {backbone!r}")
        return (ExtractorConfig(backbone=backbone, pooling=pooling),
                SearchConfig(metric=metric, k=int(k), rerank=rerank, whiten=whiten))

    def query_galleries(self, collection: str) -> list[str]:
        """Galleries a tab may take held-out queries from: shared ones, never another session's."""
        return [NO_QUERIES] + [c.name for c in self.studio.collections()
                               if c.labelled and c.name != collection and not c.name.startswith(SESSION_PREFIX)]

    def member(self, s: Session, path: str | None):
        """The member of the session's gallery at ``path``, or None (removed, or a gallery that is gone)."""
        if not path or s.note:
            return None
        return self.studio.resolve_member(s.collection, path)
