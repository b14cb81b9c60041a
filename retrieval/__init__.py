"""Content-based image retrieval with CNN features: the engine.

The data path, one module per stage::

    files -> decode -> backbones -> pooling -> store -> ranking -> evaluation

``Studio`` (in ``service``) is the API the CLI and the app share::

    from retrieval import Studio, ExtractorConfig, SearchConfig
    studio = Studio("gallery.sqlite")
    studio.index("photos/", collection="holiday")
    result = studio.search("query.jpg", collection="holiday")
    # with an image-text backbone (CLIP, SigLIP), words rank the images too
    words = studio.search(TextQuery("a dog on a beach"), collection="holiday",
                          cfg=ExtractorConfig(backbone="clip-vit-b32"))
    report = studio.evaluate(collection="holiday")
"""

import os as _os

# The version, written here only: pyproject.toml reads it at build time and
# `retrieval --version` prints it (cli.version).
__version__ = "0.1.0"

# TensorFlow's C++ start-up chatter hides our own messages; users can still
# turn it back on by setting the variable themselves.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from .config import ExtractorConfig, SearchConfig  # noqa: E402
from .service import IndexReport, SearchResult, ServiceError, Studio, TextQuery  # noqa: E402

__all__ = ["ExtractorConfig", "IndexReport", "SearchConfig", "SearchResult", "ServiceError", "Studio", "TextQuery"]
