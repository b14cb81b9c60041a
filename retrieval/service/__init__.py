"""The service layer: what the CLI, the app and Python users call.

- ``studio``: the ``Studio`` facade, which passes each call on to
- ``models`` (the backbones of one Studio), ``indexing`` (files -> vectors),
  ``searching`` (complete galleries, rankers, the IVF index, search,
  compare), ``evaluating`` (leave-one-out, held-out queries), ``galleries`` (uploads, forks, removal, drops,
  cleanup, sessions; ``blobs`` holds uploaded files), ``training`` (adapt),
  ``insight`` (explain, embedding map), ``captions`` (captions and tags: CSV,
  zip sidecars, edits) and ``textsearch`` (BM25 search, filter and fuse with
  an image, the metadata evaluation row);
- ``caches``: every in-memory cache, keyed by never-reused identities;
- ``reports``: the values handed back.
"""

from .reports import AdaptReport, Comparison, Hit, IndexReport, SearchResult, ServiceError, Session, TextQuery
from .studio import Studio

__all__ = ["AdaptReport", "Comparison", "Hit", "IndexReport", "SearchResult", "ServiceError", "Session", "Studio",
           "TextQuery"]
