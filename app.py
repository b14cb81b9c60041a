"""The image retrieval studio: a Gradio app over ``retrieval.service``.

This file arranges components and calls the service layer; it holds no SQL,
no numpy math and no model code. Run ``python app.py`` and open
http://127.0.0.1:7860. Options: ``--host``, ``--port``, ``--share``,
``--data-dir`` (or ``GRADIO_SERVER_NAME``, ``GRADIO_SERVER_PORT``,
``RETRIEVAL_DATA_DIR``), ``--gallery`` (or ``RETRIEVAL_GALLERY``), the upload caps (``--max-files``,
``--max-upload-mb``, ``--max-pixels``) and the session sweep
(``--session-ttl``, ``--cleanup-every``).

Privacy on a shared server: the built-in demo gallery is shared and never
changed. A browser session that uploads or removes images gets its own
copy-on-write collection (``session-…``), visible to that session only and
dropped after ``--session-ttl`` seconds without use. Which gallery a tab
works on is the service's decision (``Studio.session``): a tab whose gallery
expired gets a fresh copy of the demo and a one-line note saying so.

``--gallery NAME`` shares a gallery of the database instead of the demo (made
with ``python -m retrieval index FOLDER --collection NAME``; the demo is then
not indexed). A gallery served from Milvus is read-only here: a private copy
would be searched in process, loading every vector, so uploads and removals
are off, Compare and Evaluate (which rank the whole gallery) are off, and searches default
to what Milvus can rank with (``Studio.search_defaults``).
"""


import argparse
import os
import sys

from ui.settings import AppSettings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Image retrieval studio: a Gradio app over retrieval.service")
    from retrieval.settings import hosting

    where = hosting()
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", where.host),
                   help="address to serve on (or GRADIO_SERVER_NAME; default: 127.0.0.1, or 0.0.0.0 on a Hugging "
                        "Face Space, whose proxy must reach the app)")
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
                   help="port (or GRADIO_SERVER_PORT; default: 7860)")
    p.add_argument("--share", action="store_true", help="also serve on a public gradio.live link")
    p.add_argument("--data-dir", default=os.environ.get("RETRIEVAL_DATA_DIR"),
                   help="SQLite file, uploads and exports (or RETRIEVAL_DATA_DIR; default: "
                        "~/.local/share/retrieval-studio, or /data/retrieval-studio on a Space with persistent "
                        "storage)")
    p.add_argument("--max-files", type=int, default=int(os.environ.get("RETRIEVAL_MAX_FILES", "2000")),
                   help="most images one upload may add (or RETRIEVAL_MAX_FILES; default: 2000)")
    p.add_argument("--max-upload-mb", type=int, default=int(os.environ.get("RETRIEVAL_MAX_UPLOAD_MB", "500")),
                   help="most megabytes one upload may bring, zips unpacked (or RETRIEVAL_MAX_UPLOAD_MB; default: 500)")
    p.add_argument("--max-pixels", type=int, default=int(os.environ.get("RETRIEVAL_MAX_PIXELS", "64000000")),
                   help="largest image in pixels; bigger ones are refused, not decoded (or RETRIEVAL_MAX_PIXELS)")
    p.add_argument("--queue-size", type=int, default=int(os.environ.get("RETRIEVAL_QUEUE_SIZE", "64")),
                   help="requests that may wait in the queue; more are refused at once with 'queue full' "
                        "(or RETRIEVAL_QUEUE_SIZE; default: 64)")
    p.add_argument("--session-ttl", type=int, default=int(os.environ.get("RETRIEVAL_SESSION_TTL_S", str(6 * 3600))),
                   help="seconds before an idle session's gallery is deleted")
    every = os.environ.get("RETRIEVAL_CLEANUP_EVERY_S")
    p.add_argument("--cleanup-every", type=float, default=float(every) if every else None, metavar="SECONDS",
                   help="seconds between sweeps for idle sessions (or RETRIEVAL_CLEANUP_EVERY_S; default: a quarter "
                        "of --session-ttl, kept within 60..600). Tests set it low, with a small --session-ttl, "
                        "to expire a session in seconds")
    from retrieval.runtime import RUNTIMES

    p.add_argument("--runtime", default=os.environ.get("RETRIEVAL_RUNTIME", "auto"), choices=RUNTIMES,
                   help="what runs the CNNs by default (or RETRIEVAL_RUNTIME): auto (the fastest that matched Keras "
                        "on the reference photos here), keras, or a named OpenVINO precision")
    p.add_argument("--gallery", default=os.environ.get("RETRIEVAL_GALLERY") or None, metavar="NAME",
                   help="serve this gallery of the database instead of the built-in demo (or RETRIEVAL_GALLERY); "
                        "it must exist (python -m retrieval index FOLDER --collection NAME). One served from "
                        "Milvus is read-only in the app. Every folder holding its images is served, so that results "
                        "show: with --share or a non-loopback --host, any other file in those folders can be "
                        "downloaded too (a warning at start says how many folders)")
    return p


def parse_args(argv: list[str] | None = None) -> AppSettings:
    from retrieval.settings import hosting

    p = build_parser()
    a = p.parse_args(argv)
    where = hosting()  # before RETRIEVAL_DATA_DIR is set below, as the parser's defaults saw it
    if a.cleanup_every is not None and a.cleanup_every <= 0:
        p.error("--cleanup-every must be a positive number of seconds")
    if a.gallery is not None and not a.gallery.strip():
        p.error("--gallery needs a gallery name")
    if a.data_dir:
        os.environ["RETRIEVAL_DATA_DIR"] = a.data_dir
    from retrieval.settings import data_dir

    return AppSettings(a.host, a.port, a.share, data_dir(), a.max_files, a.max_upload_mb, a.max_pixels, a.session_ttl,
                       a.cleanup_every, a.runtime, queue_size=a.queue_size,
                       where=_where(where, data_dir()),
                       private_host=not (where.is_space or a.share) and a.host in ("127.0.0.1", "localhost", "::1"),
                       gallery=a.gallery)


def _where(where, folder) -> str:
    """The status line's note on a Space: which one, its hardware, and whether the data survives a restart."""
    if not where.is_space:
        return ""
    if folder != where.data_dir:  # RETRIEVAL_DATA_DIR chose it: the owner knows what it is mounted on
        import dataclasses

        where = dataclasses.replace(where, data_dir=folder, data_note="set by RETRIEVAL_DATA_DIR")
    return where.describe()


def _loopback(host: str) -> bool:
    import ipaddress

    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def exposure_warning(settings: AppSettings, folders: list[str]) -> str | None:
    """One line when ``--gallery`` serves its image folders beyond this machine (``--share`` or a public host),
    since Gradio then serves any file in them, not only the gallery's images; None otherwise."""
    if not settings.gallery or not folders or not (settings.share or not _loopback(settings.host)):
        return None
    reach = "a public --share link" if settings.share else f"host {settings.host}"
    return (f"warning: --gallery {settings.gallery} serves {len(folders)} image folder"
            f"{'' if len(folders) == 1 else 's'} on {reach}: any file in them can be downloaded, not only the "
            "gallery's images")


def _prepare_environment(settings: AppSettings) -> None:
    """Before Gradio is imported: no outside calls, uploads inside the data folder.

    The Hub client stays online (no ``HF_HUB_OFFLINE``): its one use here is
    downloading a KerasHub preset someone picked (``retrieval.backbones.hub``),
    which is how a Space with network access offers DINOv2 and CLIP.
    ``RETRIEVAL_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``) turns that off too.
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ["GRADIO_TEMP_DIR"] = str(settings.data_dir / "gradio-uploads")
    # Converted weights and Keras' own files also stay in the data folder
    # unless the user pointed them elsewhere.
    os.environ.setdefault("RETRIEVAL_CACHE_DIR", str(settings.data_dir / "cache"))
    os.environ.setdefault("KERAS_HOME", str(settings.data_dir / "keras"))
    os.environ.setdefault("MPLCONFIGDIR", str(settings.data_dir / "matplotlib"))  # if Gradio pulls matplotlib in
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # Temporary files too: TensorFlow's autograph writes generated code to the
    # temp folder (tests/test_space.py watches TMPDIR). The service's own tmp.
    import tempfile

    (settings.data_dir / "tmp").mkdir(exist_ok=True)
    os.environ["TMPDIR"] = str(settings.data_dir / "tmp")
    tempfile.tempdir = None  # recomputed from TMPDIR at its next use


def main(argv: list[str] | None = None) -> None:
    settings = parse_args(argv)
    _prepare_environment(settings)
    from ui.backend import DEMO_DIR, Backend

    backend = Backend(settings)
    missing = backend.missing_gallery()
    if missing:  # one line, no traceback, before Gradio is even imported
        backend.studio.close()
        sys.exit(f"error: {missing}")
    warning = exposure_warning(settings, backend.gallery_folders())
    if warning:
        print(warning, file=sys.stderr, flush=True)
    backend.start()  # the model loads while Gradio imports: the first query after the page is up is quick
    import gradio as gr

    from ui.page import CSS, PAGE_JS, build

    ui = build(backend)
    ui.queue(default_concurrency_limit=4, max_size=settings.queue_size).launch(
        server_name=settings.host, server_port=settings.port, share=settings.share,
        allowed_paths=[str(DEMO_DIR), str(settings.data_dir / "images"), str(settings.data_dir / "exports"),
                       *backend.gallery_folders()],
        max_file_size=settings.max_upload_mb * 1024 * 1024, theme=gr.themes.Soft(), css=CSS, js=PAGE_JS,
    )


if __name__ == "__main__":
    main()
