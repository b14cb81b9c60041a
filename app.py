"""The image retrieval studio: a Gradio app over ``retrieval.service``.

This file arranges components and calls the service layer; it holds no SQL,
no numpy math and no model code. Run ``python app.py`` and open
http://127.0.0.1:7860. Options: ``--host``, ``--port``, ``--share``,
``--data-dir`` (or ``GRADIO_SERVER_NAME``, ``GRADIO_SERVER_PORT``,
``RETRIEVAL_DATA_DIR``), the upload caps (``--max-files``,
``--max-upload-mb``, ``--max-pixels``) and the session sweep
(``--session-ttl``, ``--cleanup-every``).

Privacy on a shared server: the built-in demo gallery is shared and never
changed. A browser session that uploads or removes images gets its own
copy-on-write collection (``session-…``), visible to that session only and
dropped after ``--session-ttl`` seconds without use. Which gallery a tab
works on is the service's decision (``Studio.session``): a tab whose gallery
expired gets a fresh copy of the demo and a one-line note saying so.
"""


import argparse
import functools
import json
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEMO_DIR = HERE / "assets" / "demo"
DEMO = "demo"
SESSION_PREFIX = "session-"
NO_QUERIES = "none (leave-one-out)"
# Browsers know each file's path inside an uploaded folder (webkitRelativePath)
# but Gradio keeps only the base name, which would lose the labels that
# subfolders carry. This listener records the paths as the files are chosen;
# the folder-upload event sends them along (FOLDER_JS).
PAGE_JS = """() => {
  document.addEventListener('change', (event) => {
    const input = event.target;
    if (input && input.matches && input.matches('#gallery-folder input[type=file]') && input.files) {
      window.__retrievalFolder = Array.from(input.files).map(f => [f.webkitRelativePath || f.name, f.name, f.size]);
    }
  }, true);
}"""
FOLDER_JS = "(files, paths, session) => [files, JSON.stringify(window.__retrievalFolder || []), session]"
CSS = """
#results-gallery, #compare-a, #compare-b {min-height: 320px}
.timing {font-size: 0.9em; opacity: 0.85}
"""


@dataclass(frozen=True)
class AppSettings:
    host: str
    port: int
    share: bool
    data_dir: Path
    max_files: int
    max_upload_mb: int
    max_pixels: int
    session_ttl_s: int
    cleanup_every_s: float | None = None  # None: a quarter of the TTL, within 60..600 s
    runtime: str = "auto"  # what runs the CNNs by default (the Search tab can override it per query)


def parse_args(argv: list[str] | None = None) -> AppSettings:
    p = argparse.ArgumentParser(description="Image retrieval studio")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    p.add_argument("--share", action="store_true", help="also serve on a public gradio.live link")
    p.add_argument("--data-dir", default=os.environ.get("RETRIEVAL_DATA_DIR"),
                   help="SQLite file, uploads and exports (default: ~/.local/share/retrieval-studio)")
    p.add_argument("--max-files", type=int, default=int(os.environ.get("RETRIEVAL_MAX_FILES", "2000")))
    p.add_argument("--max-upload-mb", type=int, default=int(os.environ.get("RETRIEVAL_MAX_UPLOAD_MB", "500")))
    p.add_argument("--max-pixels", type=int, default=int(os.environ.get("RETRIEVAL_MAX_PIXELS", "64000000")))
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
    a = p.parse_args(argv)
    if a.cleanup_every is not None and a.cleanup_every <= 0:
        p.error("--cleanup-every must be a positive number of seconds")
    if a.data_dir:
        os.environ["RETRIEVAL_DATA_DIR"] = a.data_dir
    from retrieval.settings import data_dir

    return AppSettings(a.host, a.port, a.share, data_dir(), a.max_files, a.max_upload_mb, a.max_pixels, a.session_ttl,
                       a.cleanup_every, a.runtime)


def _prepare_environment(settings: AppSettings) -> None:
    """Before Gradio is imported: no outside calls, uploads inside the data folder."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["GRADIO_TEMP_DIR"] = str(settings.data_dir / "gradio-uploads")
    # Converted weights and Keras' own files also stay in the data folder
    # unless the user pointed them elsewhere.
    os.environ.setdefault("RETRIEVAL_CACHE_DIR", str(settings.data_dir / "cache"))
    os.environ.setdefault("KERAS_HOME", str(settings.data_dir / "keras"))
    os.environ.setdefault("MPLCONFIGDIR", str(settings.data_dir / "matplotlib"))  # if Gradio pulls matplotlib in
    settings.data_dir.mkdir(parents=True, exist_ok=True)


class Backend:
    """The one Studio of this process, the demo's start-up state, and cleanup."""

    def __init__(self, settings: AppSettings):
        from retrieval import Studio
        from retrieval.settings import Limits

        self.settings = settings
        limits = Limits(max_pixels=settings.max_pixels, max_files=settings.max_files,
                        max_total_bytes=settings.max_upload_mb * 1024 * 1024,
                        max_file_bytes=min(100, settings.max_upload_mb) * 1024 * 1024)
        self.studio = Studio(settings.data_dir / "retrieval.sqlite", device="auto", limits=limits,
                             runtime=settings.runtime)
        self.ready = threading.Event()
        self.progress = (0, 0)
        self.error: str | None = None
        self.device_note = "detecting device…"
        self.runtime_note = ""

    def start(self) -> None:
        threading.Thread(target=self._warm_up, name="demo-index", daemon=True).start()
        threading.Thread(target=self._cleanup_loop, name="session-cleanup", daemon=True).start()

    def _warm_up(self) -> None:
        """Index the demo (cached after the first start), then compile the model once."""
        try:
            from retrieval.device import gpu_names

            gpus = gpu_names()
            self.device_note = (f"GPU available: {gpus[0]}" if gpus else
                                "No GPU visible to TensorFlow here: everything runs on the CPU.")

            def progress(done: int, total: int, _message: str) -> None:
                self.progress = (done, total)

            self.studio.index(DEMO_DIR, DEMO, progress=progress)
            first = next(iter(sorted(DEMO_DIR.rglob("*.jpg"))))
            result = self.studio.search(first, DEMO)
            from retrieval import ExtractorConfig

            note = self.studio.backbone(ExtractorConfig()).runtime_note
            self.runtime_note = f"Inference: **{result.runtime}** ({note})."
        except Exception as exc:  # shown in the page instead of a dead app
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.ready.set()

    def cleanup_interval(self) -> float:
        every = self.settings.cleanup_every_s
        return every if every is not None else max(60, min(600, self.settings.session_ttl_s // 4))

    def _cleanup_loop(self) -> None:
        while True:
            try:
                self.studio.cleanup(SESSION_PREFIX, self.settings.session_ttl_s)
            except Exception:
                pass  # a busy database is retried next round
            time.sleep(self.cleanup_interval())

    def wait(self) -> None:
        self.ready.wait(timeout=600)
        if self.error:
            raise RuntimeError(f"the demo gallery could not be prepared: {self.error}")

    def status(self) -> str:
        if not self.ready.is_set():
            done, total = self.progress
            return f"**Preparing the demo gallery…** {done}/{total or '?'} images indexed"
        if self.error:
            return f"**Not ready:** {self.error}"
        return f"**Ready.** {self.device_note} {self.runtime_note}"


def build(backend: Backend):
    import gradio as gr
    import pandas as pd

    from retrieval import ExtractorConfig, SearchConfig, ServiceError
    from retrieval.adapt import METHODS, AdaptConfig, Cancelled
    from retrieval.backbones import BackboneUnavailable
    from retrieval.config import DEFAULT_BACKBONE, DEFAULT_METRIC, DEFAULT_RERANK, DEFAULT_WHITEN, METRICS, RERANKS, WHITENINGS
    from retrieval.device import DeviceError
    from retrieval.pooling import POOLINGS
    from retrieval.rerank import describe as describe_reranks
    from retrieval.runtime import RUNTIMES

    studio = backend.studio
    models = studio.models()
    ready_models = [m["name"] for m in models if m["ready"]]
    not_ready = "\n".join(f"- `{m['name']}`: {m['status']}" for m in models if not m["ready"])
    fusion_costs = "".join(f" · {m['name']}: ≈ {m['cost']:.1f}× lite1 per image" for m in models
                           if m["ready"] and m.get("cost"))
    export_root = backend.settings.data_dir / "exports"

    # -- helpers: names and formatting, no engine logic ----------------------
    def code(text) -> str:
        """User-provided text (a file name, a label) as a markdown code span: shown as typed, never a
        link, emphasis or HTML, whatever backticks or brackets it holds. The one way this app puts
        names and labels into markdown."""
        text = " ".join(str(text).split())  # one line: a blank line would end the span
        if not text:
            return "“”"
        fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
        pad = " " if text[0] == "`" or text[-1] == "`" else ""  # CommonMark strips one space on each side
        return f"{fence}{pad}{text}{pad}{fence}"

    def open_session(current, request, writable=False):
        """The gallery this tab works on: the service decides (its own, the demo, or a fresh copy).

        The owner is Gradio's session hash: one per page load (and per gradio_client Client),
        so concurrent first uploads of one page end in one gallery.
        """
        owner = getattr(request, "session_hash", None) or f"anonymous-{secrets.token_hex(8)}"
        return studio.session(owner, current, template=DEMO, prefix=SESSION_PREFIX, writable=writable)

    def state(s) -> str | None:
        """What the page keeps in its ``session`` State: its private gallery's name, or None for the demo."""
        return s.collection if s.private else None

    def with_note(s, text: str) -> str:
        """A handler's message, after the session's one-line note (e.g. "your gallery expired") if any."""
        return f"**Note:** {' '.join(s.note.split())}\n\n{text}" if s.note else text

    def session_models(collection: str) -> list[str]:
        """Ready backbones, plus the models trained on this session's gallery (or on the demo)."""
        own = {collection, DEMO}
        return model_choices + [m["name"] for m in studio.adapted_models() if m["collection"] in own]

    def configs(backbone, pooling, metric, rerank, whiten, k, collection=DEMO):
        if backbone not in session_models(collection):
            raise gr.Error(f"unknown or unavailable backbone {backbone!r}")
        return ExtractorConfig(backbone=backbone, pooling=pooling), SearchConfig(metric=metric, k=int(k), rerank=rerank, whiten=whiten)

    def captions(result):
        return [(h.path, f"#{h.rank} · {h.score:.3f} · {h.label or 'unlabelled'}") for h in result.hits]

    def timing_line(result) -> str:
        t = result.timings
        return (f"decode **{t['decode_ms']:.1f} ms** · embed **{t['embed_ms']:.1f} ms** · search **{t['search_ms']:.1f} ms** "
                f"(re-rank **{t.get('rerank_ms', 0.0):.1f} ms**"
                + (f", graph built **{t['graph_build_ms']:.0f} ms**" if "graph_build_ms" in t else "") + ") "
                f"· total **{t['total_ms']:.1f} ms** on **{result.device}** · **{result.runtime}**")

    def friendly(fn):
        """Turn the engine's user-facing errors into a toast, never a traceback."""
        @functools.wraps(fn)  # Gradio reads the signature: API names, defaults, gr.Progress, gr.Request
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except (ServiceError, BackboneUnavailable, DeviceError, ValueError) as exc:
                raise gr.Error(str(exc).splitlines()[0]) from None
        return wrapper

    def gallery_items(s):
        return [(m.path, f"{m.label or 'unlabelled'} · {m.name}") for m in studio.members(s.collection) if m.path]

    def gallery_info(s) -> str:
        members = studio.members(s.collection)
        labels = {m.label for m in members if m.label}
        owner = "your private gallery" if s.private else "the shared demo gallery (read-only: changes make your own copy)"
        return f"**{len(members)} images**, {len(labels)} labels — {owner}."

    # -- event handlers --------------------------------------------------------
    # Each handler that works on a gallery asks the service which one (``open_session``), returns
    # the answer to the ``session`` State, and shows the service's note in its own message area.
    @friendly
    def search(query, backbone=DEFAULT_BACKBONE, pooling="gem", metric=DEFAULT_METRIC, rerank=DEFAULT_RERANK,
               whiten=DEFAULT_WHITEN, k=8, device="auto", runtime=None, session=None, request: gr.Request = None):
        """Rank the gallery against the query image; returns results and timings."""
        if query is None:
            raise gr.Error("Choose a query image first (upload, webcam, paste, or click a gallery image).")
        backend.wait()
        s = open_session(session, request)
        cfg, scfg = configs(backbone, pooling, metric, rerank, whiten, k, s.collection)
        result = studio.search(query, s.collection, cfg, scfg, device=device, runtime=runtime)
        return captions(result), with_note(s, timing_line(result)), state(s)

    @friendly
    def compare(query, a_backbone, a_pooling, a_metric, a_rerank, b_backbone, b_pooling, b_metric, b_rerank,
                k=8, a_device="auto", b_device="auto", a_runtime=None, b_runtime=None, session=None,
                request: gr.Request = None):
        """Two configurations on one query, side by side, with their agreement."""
        if query is None:
            raise gr.Error("Choose a query image first.")
        backend.wait()
        s = open_session(session, request)
        a = configs(a_backbone, a_pooling, a_metric, a_rerank, DEFAULT_WHITEN, k, s.collection)
        b = configs(b_backbone, b_pooling, b_metric, b_rerank, DEFAULT_WHITEN, k, s.collection)
        cmp = studio.compare(query, s.collection, a, b, devices=(a_device, b_device), runtimes=(a_runtime, b_runtime))
        ag = cmp.agreement
        summary = (f"**overlap@{ag.k}: {ag.overlap_at_k:.2f}** · Kendall τ (top-{ag.k} union): {ag.kendall_tau:.2f} "
                   f"· Spearman ρ (full ranking): {ag.spearman_rho:.2f}")
        return captions(cmp.a), timing_line(cmp.a), captions(cmp.b), timing_line(cmp.b), with_note(s, summary), state(s)

    def as_paths(files) -> list[Path]:
        return [Path(f if isinstance(f, str) else f.name) for f in files or []]

    @friendly
    def add_images(files, session=None, progress=gr.Progress(), request: gr.Request = None):
        """Add images and zip archives (labels from the folders inside a zip) to your gallery."""
        uploads = [(p, p.name, None) for p in as_paths(files)]
        return ingest(uploads, session, progress, request)

    @friendly
    def add_folder(files, relative_paths, session=None, progress=gr.Progress(), request: gr.Request = None):
        """A folder upload: first-level subfolders of the chosen folder become labels."""
        known: dict[tuple[str, int], list[str]] = {}
        for rel, name, size in json.loads(relative_paths or "[]"):
            known.setdefault((name, int(size)), []).append(rel)
        uploads = []
        for p in as_paths(files):
            candidates = known.get((p.name, p.stat().st_size)) if p.exists() else None
            parts = Path(candidates.pop(0)).parts[1:] if candidates else (p.name,)  # drop the chosen folder itself
            uploads.append((p, "/".join(parts), parts[0] if len(parts) > 1 else None))
        return ingest(uploads, session, progress, request)

    def ingest(uploads, session, progress, request):
        if not uploads:
            raise gr.Error("Choose images, a folder or a zip to add.")
        backend.wait()
        s = open_session(session, request, writable=True)
        progress(0, desc="Reading uploads…")

        def report_progress(done, total, message):
            progress((done, max(total, 1)), desc=f"Indexing: {message}")

        report = studio.upload(uploads, s.collection, progress=report_progress, create=False)  # never resurrect
        lines = [f"**{len(report.added)} added**, {len(report.duplicates)} duplicates, "
                 f"{report.unchanged} already in the gallery, **{len(report.skipped)} skipped** "
                 f"({report.computed} embeddings computed in {report.seconds:.1f} s on {report.device})."]
        if report.limit:
            lines.append(f"**Limit:** {report.limit}.")
        lines += [f"- duplicate: {code(n)} (same content as {code(d)})" for n, d in report.duplicates[:50]]
        lines += [f"- skipped: {code(k.name)}: {' '.join(k.reason.split())}" for k in report.skipped[:200]]
        return with_note(s, "\n".join(lines)), gallery_items(s), gallery_info(s), state(s), state(s)

    @friendly
    def remove_selected(selected, session=None, request: gr.Request = None):
        if selected is None:
            raise gr.Error("Click an image in the gallery first.")
        s = open_session(session, request, writable=True)
        if s.note:  # the selection was made in a gallery that is gone: nothing of it to remove
            return gallery_items(s), with_note(s, gallery_info(s)), state(s), None, state(s)
        studio.remove(selected, s.collection)
        return gallery_items(s), gallery_info(s), state(s), None, state(s)

    @friendly
    def reset(session=None, request: gr.Request = None):
        """Drop this tab's gallery (its uploads and models go with it) and go back to the shared demo."""
        if session:
            studio.drop_collection(session)
        s = open_session(None, request)
        if s.private:  # a gallery of this tab's the page had not heard of yet (its first upload still running)
            studio.drop_collection(s.collection)
            s = open_session(None, request)
        return gallery_items(s), gallery_info(s), state(s), None, state(s)

    def refresh(session=None, request: gr.Request = None):
        backend.wait()
        s = open_session(session, request)
        return gallery_items(s), with_note(s, gallery_info(s)), state(s), state(s)

    def relist(session, listed, request: gr.Request = None):
        """After an action that may have moved the tab to a new gallery: the Gallery tab lists that one."""
        if session == listed:
            return (gr.skip(),) * 4
        return refresh(session, request)

    def on_gallery_select(session, evt: gr.SelectData, request: gr.Request = None):
        s = open_session(session, request)
        members = [m for m in studio.members(s.collection) if m.path]
        if s.note or not 0 <= evt.index < len(members):  # clicked in a gallery that changed meanwhile: show the new one
            return (None, gr.skip(), gr.skip(), with_note(s, "Click an image to select it."), gallery_items(s),
                    gallery_info(s), state(s), state(s))
        member = members[evt.index]
        note = f"Selected {code(member.name)} ({code(member.label) if member.label else 'unlabelled'}): it is now the query."
        return member.path, member.path, member.path, note, gr.skip(), gr.skip(), state(s), gr.skip()

    def why_match(query, items, backbone, pooling, whiten, session, evt: gr.SelectData, request: gr.Request = None):
        """Heatmaps for the clicked result: which regions of both images make them alike."""
        if query is None or not items:
            raise gr.Error("Search first, then click a result.")
        s = open_session(session, request)
        if s.note:  # the results came from a gallery that is gone
            return gr.Column(visible=True), None, None, with_note(s, "Search again, then click a result."), state(s)
        clicked = items[evt.index]
        path = clicked[0] if isinstance(clicked, (tuple, list)) else clicked
        try:
            cfg = configs(backbone, pooling, DEFAULT_METRIC, "none", whiten, 1, s.collection)[0]
            explanation, q_img, r_img = studio.explain(query, path, s.collection, cfg,
                                                       SearchConfig(whiten=whiten, rerank="none"))
        except (ServiceError, BackboneUnavailable, DeviceError, ValueError) as exc:
            raise gr.Error(str(exc).splitlines()[0]) from None
        base = " (explained through its base CNN: a trained head is not linear)" if cfg.backbone not in model_choices else ""
        note = (f"**Why this match?** Cosine similarity **{explanation.score:.3f}** before re-ranking, "
                f"{studio.resolve(cfg).label}{base}. Warm regions add to the similarity, blue ones subtract; "
                "each map sums exactly to the score.")
        return gr.Column(visible=True), q_img, r_img, note, state(s)

    def embedding_map(query, backbone, pooling, whiten, k, session=None, request: gr.Request = None):
        """The gallery in 2-D (PCA), coloured by label, with the query and its top k marked."""
        if query is None:
            return gr.ScatterPlot(visible=False), gr.skip()
        try:
            s = open_session(session, request)
            cfg, scfg = configs(backbone, pooling, DEFAULT_METRIC, "none", whiten, k, s.collection)
            coords, members, point, rows = studio.embedding_map(s.collection, cfg, scfg, query)
        except (ServiceError, BackboneUnavailable, DeviceError, ValueError, gr.Error):
            return gr.ScatterPlot(visible=False), gr.skip()  # a side panel: the search itself already said what is wrong
        top = set(rows.tolist())
        frame = pd.DataFrame({"x": coords[:, 0], "y": coords[:, 1],
                              "group": [f"top {k}" if i in top else (m.label or "unlabelled") for i, m in enumerate(members)],
                              "name": [m.name for m in members]})
        if point is not None:
            frame.loc[len(frame)] = [float(point[0]), float(point[1]), "★ query", "query"]
        return gr.ScatterPlot(frame, visible=True), state(s)

    adapt_cancels: dict[str, threading.Event] = {}

    def adapt_run(method, epochs, base_backbone, session=None, request: gr.Request = None):
        """Train on the gallery's labels in a thread; stream progress, the loss curve, then the figures."""
        backend.wait()
        # a model is private to the session that trained it, like its uploads
        s = open_session(session, request, writable=True)
        collection, session = s.collection, state(s)
        key = request.session_hash if request is not None else "api"
        cancel = adapt_cancels[key] = threading.Event()
        history: list[dict] = []
        outcome: dict = {}

        position: dict = {}

        def on_epoch(epoch, planned, logs):
            history.append({"epoch": epoch, **logs})

        def on_batch(epoch, batch, steps):
            position.update(epoch=epoch, batch=batch, steps=steps)

        def work():
            try:
                outcome["report"] = studio.adapt(collection, AdaptConfig(method=method, epochs=int(epochs)),
                                                 ExtractorConfig(backbone=base_backbone), on_epoch=on_epoch, cancel=cancel,
                                                 on_batch=on_batch)
            except Exception as exc:  # reported in the page below
                outcome["error"] = exc

        def curve():
            rows = [{"epoch": h["epoch"], "loss": h.get(k, 0.0), "series": name} for h in history
                    for k, name in (("loss", "training"), ("val_loss", "validation"))]
            # both series from the first frame on: the plot fixes its colours at the first data it gets
            return pd.DataFrame(rows or [{"epoch": 0, "loss": 0.0, "series": name} for name in ("training", "validation")])

        thread = threading.Thread(target=work, name="adapt", daemon=True)
        thread.start()
        started = time.monotonic()
        while thread.is_alive():
            thread.join(1.0)
            done = (f"epoch {position['epoch']} of at most {int(epochs)}, batch {position['batch']}/{position['steps']}"
                    if position else "preparing (reading vectors or decoding images)…")
            yield (with_note(s, f"**Training `{method}`** on your gallery: {done} · "
                                f"{time.monotonic() - started:.0f} s"), curve(), gr.update(), *[gr.update()] * 4, session)
        adapt_cancels.pop(key, None)
        if "error" in outcome:
            exc = outcome["error"]
            message = "Cancelled: nothing was saved." if isinstance(exc, Cancelled) else f"Training failed: {str(exc).splitlines()[0]}"
            yield with_note(s, message), curve(), gr.update(), *[gr.update()] * 4, session
            return
        r = outcome["report"]
        table = pd.DataFrame([
            {"": "before (" + r.base.split("|")[0] + ")", "mAP": round(r.map_before, 4), "P@1": round(r.p_at_1_before, 4)},
            {"": f"after ({r.name})", "mAP": round(r.map_after, 4), "P@1": round(r.p_at_1_after, 4)},
        ])
        note = (f"**{r.name}** trained in {r.seconds:.1f} s on {r.train_images} images ({r.validation_images} for "
                f"early stopping); figures on **{r.test_queries} held-out images** never seen in training, "
                f"leave-one-out, same queries before and after. It is now a backbone: pick it anywhere.")
        choices = session_models(collection)
        yield (with_note(s, note), curve(), table, gr.Dropdown(choices=choices), gr.Dropdown(choices=choices),
               gr.Dropdown(choices=choices, value=r.name), gr.CheckboxGroup(choices=choices), session)

    def model_lists(session=None, request: gr.Request = None):
        choices = session_models(open_session(session, request).collection)
        if choices == model_choices:  # nothing trained here: leave the page's components alone while it mounts
            return (gr.skip(),) * 4
        return (gr.Dropdown(choices=choices), gr.Dropdown(choices=choices), gr.Dropdown(choices=choices),
                gr.CheckboxGroup(choices=choices))

    def adapt_cancel(request: gr.Request = None):
        event = adapt_cancels.get(request.session_hash if request is not None else "api")
        if event is None:
            return "Nothing is training."
        event.set()
        return "Cancelling after the current batch…"

    def query_galleries(collection: str) -> list[str]:
        """Galleries a tab may take held-out queries from: shared ones, never another session's."""
        return [NO_QUERIES] + [c.name for c in studio.collections()
                               if c.labelled and c.name != collection and not c.name.startswith(SESSION_PREFIX)]

    @friendly
    def evaluate(backbones, pooling="gem", metric=DEFAULT_METRIC, rerank=DEFAULT_RERANK, whiten=DEFAULT_WHITEN,
                 session=None, queries=NO_QUERIES, queries_zip=None, progress=gr.Progress(),
                 request: gr.Request = None):
        """Evaluate one or more backbones on the labelled gallery: leave-one-out, or held-out queries
        (another gallery by name, or a zip of labelled subfolders) that are never gallery members."""
        backend.wait()
        backbones = [backbones] if isinstance(backbones, str) else list(backbones or [DEFAULT_BACKBONE])
        s = open_session(session, request)
        collection = s.collection
        held_out = None
        if queries_zip:
            if queries and queries != NO_QUERIES:
                raise gr.Error("Choose held-out queries from a gallery or a zip, not both.")
            held_out = as_paths([queries_zip])[0]  # in the data folder (Gradio's uploads), like gallery zips
        elif queries and queries != NO_QUERIES:
            if queries not in query_galleries(collection):
                raise gr.Error(f"no gallery named {queries!r} to take held-out queries from")
            held_out = queries
        rows, curves, classes, reports = [], [], [], []
        for i, name in enumerate(backbones):
            progress((i, len(backbones)), desc=f"Evaluating {name}…")
            cfg, scfg = configs(name, pooling, metric, rerank, whiten, 10, collection)
            report = studio.evaluate(collection, cfg, scfg, queries=held_out,  # computes missing vectors on the way
                                     progress=lambda d, t, m, n=name: progress((d, max(t, 1)), desc=f"{n}: {m}"))
            tag = studio.resolve(cfg).label
            reports.append(report.to_json())
            held = report.config.get("queries")
            if held and held["kind"] == "zip":
                held["source"] = held_out.name  # the upload's name, not where the server keeps it
            protocol = f"held-out: {held['source']}" if held else "leave-one-out"
            rows.append({"configuration": tag, "protocol": protocol, "metric": metric, "rerank": rerank, "post": whiten,
                         "mAP": round(report.map, 4), "P@1": round(report.p_at[1], 4), "P@5": round(report.p_at[5], 4),
                         "P@10": round(report.p_at[10], 4), "R@10": round(report.r_at[10], 4),
                         "nDCG@10": round(report.ndcg_at_10, 4), "queries": report.queries,
                         "ms/query": round(1000 * report.seconds / max(report.queries, 1), 3)})
            curves += [{"k": k, "precision": p, "configuration": tag} for k, p in enumerate(report.precision_curve, 1)]
            # One bar per (class, configuration), side by side: colour alone would stack them.
            classes += [{"class": f"{c} [{i + 1}]", "AP": ap, "configuration": f"[{i + 1}] {tag}"}
                        for c, ap in report.per_class_ap.items()]
        table = pd.DataFrame(rows)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        folder = export_root / secrets.token_hex(16)  # unguessable: exports are served by path
        folder.mkdir(parents=True, exist_ok=True)
        csv_path, json_path = folder / f"evaluation-{stamp}.csv", folder / f"evaluation-{stamp}.json"
        table.to_csv(csv_path, index=False)
        shown = "session" if s.private else collection  # a session's gallery name is nobody's business
        json_path.write_text(json.dumps({"collection": shown, "reports": reports}, indent=2))
        held = reports[0]["config"].get("queries")
        if held:
            lines = [f"Evaluated {len(backbones)} configuration(s) on **{rows[0]['queries']} held-out queries** "
                     f"from {code(held['source'])}, none of them a member of the gallery."]
            lines += [f"- {note}" for note in held["notes"]]
            lines += [f"- skipped: {code(k['name'])}: {' '.join(k['reason'].split())}" for k in held["unreadable"][:50]]
        else:
            lines = [f"Evaluated {len(backbones)} configuration(s) on {rows[0]['queries']} labelled queries "
                     "(leave-one-out: each labelled image asks the others)."]
        return (table, pd.DataFrame(curves), pd.DataFrame(classes), [str(csv_path), str(json_path)],
                with_note(s, "\n".join(lines)), state(s))

    def eval_hint(session=None, request: gr.Request = None):
        backend.wait()
        members = studio.members(open_session(session, request).collection)
        if not any(m.label for m in members):
            return ("This gallery has no labels, so there is nothing to score against. Add images in **one folder per "
                    "label** (a folder upload or a zip with subfolders), or index with a `filename,label` CSV "
                    "(`python -m retrieval index FOLDER --labels labels.csv`).")
        labels = {m.label for m in members if m.label}
        return (f"{sum(1 for m in members if m.label)} labelled images in {len(labels)} classes: every one queries the "
                "rest (leave-one-out), unless you choose held-out queries below, which never belong to the gallery.")

    def eval_sources(session=None, request: gr.Request = None):
        backend.wait()
        return gr.Dropdown(choices=query_galleries(open_session(session, request).collection))

    # -- layout ----------------------------------------------------------------
    model_choices = ready_models or [DEFAULT_BACKBONE]
    examples = [str(DEMO_DIR / p) for p in ("cat/chelsea_crop.jpg", "coffee/coffee_flipped.jpg", "rocket/rocket_faded.jpg",
                                             "texture/gravel_crop.jpg", "fashion-sneaker/fmnist-test-0009.png")]
    examples = [e for e in examples if Path(e).exists()]

    def settings_block(prefix: str, backbone=DEFAULT_BACKBONE, pooling="gem", metric=DEFAULT_METRIC, rerank=DEFAULT_RERANK):
        b = gr.Dropdown(model_choices, value=backbone if backbone in model_choices else model_choices[0],
                        label=f"{prefix}Backbone", info="only backbones ready on this machine are listed" + fusion_costs)
        p = gr.Radio(list(POOLINGS), value=pooling, label=f"{prefix}Pooling")
        m = gr.Dropdown(list(METRICS), value=metric, label=f"{prefix}Metric")
        r = gr.Radio(list(RERANKS), value=rerank, label=f"{prefix}Re-ranking", info=describe_reranks())
        return b, p, m, r

    with gr.Blocks(title="Image retrieval studio", delete_cache=(3600, 6 * 3600)) as ui:
        session = gr.State(None)  # this tab's private gallery, or None for the shared demo (Studio.session decides)
        listed = gr.State(None)  # the gallery the Gallery tab lists (same values as ``session``)
        gr.Markdown("# Image retrieval studio\nQuery a gallery with an image and see which images a CNN finds most "
                    "alike — under different backbones, poolings, metrics and re-rankings — with the numbers.")
        status = gr.Markdown(backend.status(), elem_id="status")
        timer = gr.Timer(1.0)
        timer.tick(lambda: (backend.status(), gr.Timer(active=not backend.ready.is_set())), None, [status, timer],
                   api_visibility="private")

        with gr.Tabs():
            with gr.Tab("Search", id="search"):
                with gr.Row():
                    with gr.Column(scale=1):
                        query = gr.Image(type="filepath", label="Query image", elem_id="query-image",
                                         sources=["upload", "webcam", "clipboard"], height=300)
                        gr.Examples(examples, inputs=query, label="Example queries")
                    with gr.Column(scale=1):
                        backbone, pooling, metric, rerank = settings_block("")
                        with gr.Row():
                            whiten = gr.Radio(list(WHITENINGS), value=DEFAULT_WHITEN, label="Post-processing",
                                              info="center: subtract the gallery mean · pca: PCA-whitening")
                            device = gr.Radio(["auto", "cpu", "gpu"], value="auto", label="Device")
                            runtime = gr.Dropdown(list(RUNTIMES), value=backend.settings.runtime, label="Runtime",
                                                  info="auto: the fastest that matched Keras here")
                        k = gr.Slider(1, 50, value=8, step=1, label="k (results)")
                        search_button = gr.Button("Search", variant="primary", elem_id="search-button")
                results = gr.Gallery(label="Most alike", elem_id="results-gallery", columns=4, height=420, object_fit="contain")
                timings = gr.Markdown(elem_classes=["timing"], elem_id="search-timings")
                gr.Markdown("Click a result to see **why it matched**.")
                with gr.Column(visible=False, elem_id="why-panel") as why_panel:
                    why_note = gr.Markdown(elem_id="why-note")
                    with gr.Row():
                        why_query = gr.Image(label="Query: what drives the match", elem_id="why-query",
                                             interactive=False, height=320)
                        why_result = gr.Image(label="Result: what drives the match", elem_id="why-result",
                                              interactive=False, height=320)
                emb_map = gr.ScatterPlot(x="x", y="y", color="group", title="The gallery in 2-D (PCA of the descriptors)",
                                         elem_id="embedding-map", visible=False, height=380, tooltip=["name", "group"])
                if not_ready:
                    with gr.Accordion("Backbones not ready on this machine", open=False):
                        gr.Markdown(not_ready)

            with gr.Tab("Compare", id="compare"):
                gr.Markdown("Run two configurations on the same query — two backbones, cosine against Euclidean, "
                            "CPU against GPU — and see where they agree.")
                with gr.Row():
                    compare_query = gr.Image(type="filepath", label="Query image", elem_id="compare-query",
                                             sources=["upload", "webcam", "clipboard"], height=240)
                    with gr.Column():
                        gr.Examples(examples, inputs=compare_query, label="Example queries")
                        compare_k = gr.Slider(1, 30, value=8, step=1, label="k")
                        compare_button = gr.Button("Compare", variant="primary", elem_id="compare-button")
                agreement = gr.Markdown(elem_id="compare-agreement")
                with gr.Row():
                    with gr.Column():
                        gr.Markdown("### A")
                        a_backbone, a_pooling, a_metric, a_rerank = settings_block("A · ")
                        with gr.Row():
                            a_device = gr.Radio(["auto", "cpu", "gpu"], value="auto", label="A · Device")
                            a_runtime = gr.Dropdown(list(RUNTIMES), value=backend.settings.runtime, label="A · Runtime")
                        a_results = gr.Gallery(label="A results", elem_id="compare-a", columns=3, height=360, object_fit="contain")
                        a_timings = gr.Markdown(elem_classes=["timing"])
                    with gr.Column():
                        gr.Markdown("### B")
                        b_default = "colorhist" if "colorhist" in model_choices else model_choices[0]
                        b_backbone, b_pooling, b_metric, b_rerank = settings_block("B · ", backbone=b_default, metric="euclidean", rerank="none")
                        with gr.Row():
                            b_device = gr.Radio(["auto", "cpu", "gpu"], value="auto", label="B · Device")
                            b_runtime = gr.Dropdown(list(RUNTIMES), value=backend.settings.runtime, label="B · Runtime")
                        b_results = gr.Gallery(label="B results", elem_id="compare-b", columns=3, height=360, object_fit="contain")
                        b_timings = gr.Markdown(elem_classes=["timing"])

                gr.Markdown("Click a result in A or B to see why it matched under that configuration.")
                with gr.Column(visible=False, elem_id="compare-why-panel") as cwhy_panel:
                    cwhy_note = gr.Markdown()
                    with gr.Row():
                        cwhy_query = gr.Image(label="Query", elem_id="compare-why-query", interactive=False, height=280)
                        cwhy_result = gr.Image(label="Result", elem_id="compare-why-result", interactive=False, height=280)

            with gr.Tab("Gallery", id="gallery"):
                info = gr.Markdown(elem_id="gallery-info")
                with gr.Row():
                    with gr.Column(scale=2):
                        upload = gr.File(file_count="multiple", label="Add images or a zip (subfolders become labels)",
                                         elem_id="gallery-upload")
                        folder = gr.File(file_count="directory", label="…or a whole folder (added at once; subfolders become labels)",
                                         elem_id="gallery-folder")
                        add_button = gr.Button("Add to my gallery", variant="primary", elem_id="add-button")
                    with gr.Column(scale=3):
                        summary = gr.Markdown(elem_id="upload-summary")
                browse = gr.Gallery(label="Gallery (click to select)", elem_id="gallery-browser", columns=8, height=420,
                                    object_fit="contain", allow_preview=False)
                selected_path = gr.State(None)
                with gr.Row():
                    selected_note = gr.Markdown("Click an image to select it.", elem_id="selected-note")
                    use_button = gr.Button("Use as query", elem_id="use-as-query")
                    remove_button = gr.Button("Remove selected", variant="stop", elem_id="remove-button")
                    reset_button = gr.Button("Reset to demo gallery", elem_id="reset-button")

            with gr.Tab("Evaluate", id="evaluate"):
                hint = gr.Markdown(elem_id="eval-hint")
                with gr.Row():
                    eval_backbones = gr.CheckboxGroup(model_choices, value=[model_choices[0]] if DEFAULT_BACKBONE not in model_choices else [DEFAULT_BACKBONE],
                                                      label="Backbones to compare")
                    eval_pooling = gr.Radio(list(POOLINGS), value="gem", label="Pooling")
                    eval_metric = gr.Dropdown(list(METRICS), value=DEFAULT_METRIC, label="Metric")
                    eval_rerank = gr.Radio(list(RERANKS), value=DEFAULT_RERANK, label="Re-ranking")
                    eval_whiten = gr.Radio(list(WHITENINGS), value=DEFAULT_WHITEN, label="Post-processing")
                with gr.Row():
                    eval_queries = gr.Dropdown([NO_QUERIES], value=NO_QUERIES, label="Held-out queries: a gallery",
                                               info="leave-one-out, or another gallery's images as queries",
                                               allow_custom_value=True,  # the list is per tab; the handler checks
                                               elem_id="eval-queries")
                    eval_queries_zip = gr.File(file_types=[".zip"], elem_id="eval-queries-zip", height=120,
                                               label="…or a zip of held-out queries (one subfolder per label)")
                eval_button = gr.Button("Evaluate", variant="primary", elem_id="eval-button")
                eval_note = gr.Markdown()
                eval_table = gr.Dataframe(label="Metrics", elem_id="eval-table", interactive=False)
                with gr.Row():
                    curve_plot = gr.LinePlot(x="k", y="precision", color="configuration", title="Precision@k",
                                             elem_id="eval-curve", height=320)
                    class_plot = gr.BarPlot(x="class", y="AP", color="configuration", title="AP per class",
                                            elem_id="eval-classes", height=320, x_label_angle=-45, sort="x", y_lim=[0, 1])
                exports = gr.File(label="Export (CSV and JSON, with the configuration)", file_count="multiple",
                                  elem_id="eval-export")

            with gr.Tab("Adapt", id="adapt"):
                gr.Markdown(
                    "Train a retrieval model for **this gallery's labels**. A random 30 % of the labelled images is held "
                    "out: they are the queries and the gallery of the figures before and after, and never reach training. "
                    "**head**: a projection on the cached CNN vectors (seconds to minutes) · **finetune**: the CNN's top "
                    "blocks with augmented images (slow on a CPU) · **scratch**: the seed's small CNN from random "
                    "weights (the baseline). The result becomes a backbone you can pick in Search, Compare and Evaluate.")
                with gr.Row():
                    adapt_method = gr.Radio(list(METHODS), value="head", label="Method", elem_id="adapt-method")
                    adapt_epochs = gr.Slider(1, 100, value=30, step=1, label="Epochs (at most: early stopping)",
                                             elem_id="adapt-epochs")
                    cnn_models = [m for m in model_choices if m not in ("pixels", "colorhist")] or model_choices
                    adapt_base = gr.Dropdown(cnn_models, value=DEFAULT_BACKBONE if DEFAULT_BACKBONE in cnn_models else cnn_models[0],
                                             label="Start from")
                with gr.Row():
                    adapt_button = gr.Button("Train", variant="primary", elem_id="adapt-button")
                    cancel_button = gr.Button("Cancel", variant="stop", elem_id="adapt-cancel")
                adapt_status = gr.Markdown(elem_id="adapt-status")
                adapt_curve = gr.LinePlot(x="epoch", y="loss", color="series", title="Loss (training and validation)",
                                          elem_id="adapt-curve", height=280)
                adapt_table = gr.Dataframe(label="Held-out figures, before and after", elem_id="adapt-table",
                                           interactive=False)

        # -- wiring --------------------------------------------------------------
        private = {"api_visibility": "private"}  # UI-only events: not callable through the API
        listing = [browse, info, session, listed]

        def relisting(event) -> None:
            """An action that may have moved the tab to a new gallery (it had expired) also updates the listing."""
            event.then(relist, [session, listed], listing, **private)

        search_inputs = [query, backbone, pooling, metric, rerank, whiten, k, device, runtime, session]
        relisting(search_button.click(search, search_inputs, [results, timings, session], api_name="search").then(
            embedding_map, [query, backbone, pooling, whiten, k, session], [emb_map, session], **private))
        relisting(compare_button.click(
            compare, [compare_query, a_backbone, a_pooling, a_metric, a_rerank, b_backbone, b_pooling, b_metric, b_rerank,
                      compare_k, a_device, b_device, a_runtime, b_runtime, session],
            [a_results, a_timings, b_results, b_timings, agreement, session], api_name="compare"))
        add_button.click(add_images, [upload, session], [summary, *listing], api_name="add_images")
        folder_paths = gr.Textbox(visible=False)
        folder.upload(add_folder, [folder, folder_paths, session], [summary, *listing], js=FOLDER_JS, **private)
        browse.select(on_gallery_select, [session], [selected_path, query, compare_query, selected_note, *listing],
                      **private)
        use_button.click(lambda p: p, selected_path, query, **private)
        remove_button.click(remove_selected, [selected_path, session], [browse, info, session, selected_path, listed],
                            **private)
        reset_button.click(reset, [session], [browse, info, session, selected_path, listed], api_name="reset")
        relisting(eval_button.click(evaluate, [eval_backbones, eval_pooling, eval_metric, eval_rerank, eval_whiten, session,
                                               eval_queries, eval_queries_zip],
                                    [eval_table, curve_plot, class_plot, exports, eval_note, session], api_name="evaluate"))
        default_whiten = gr.State(DEFAULT_WHITEN)
        relisting(results.select(why_match, [query, results, backbone, pooling, whiten, session],
                                 [why_panel, why_query, why_result, why_note, session], **private))
        relisting(a_results.select(why_match, [compare_query, a_results, a_backbone, a_pooling, default_whiten, session],
                                   [cwhy_panel, cwhy_query, cwhy_result, cwhy_note, session], **private))
        relisting(b_results.select(why_match, [compare_query, b_results, b_backbone, b_pooling, default_whiten, session],
                                   [cwhy_panel, cwhy_query, cwhy_result, cwhy_note, session], **private))
        relisting(adapt_button.click(adapt_run, [adapt_method, adapt_epochs, adapt_base, session],
                                     [adapt_status, adapt_curve, adapt_table, backbone, a_backbone, b_backbone,
                                      eval_backbones, session], api_name="adapt"))
        cancel_button.click(adapt_cancel, None, adapt_status, queue=False, **private)
        ui.load(refresh, [session], listing, **private)
        ui.load(model_lists, [session], [backbone, a_backbone, b_backbone, eval_backbones], **private)
        ui.load(eval_hint, [session], [hint], **private)
        ui.load(eval_sources, [session], [eval_queries], **private)
    return ui


def main(argv: list[str] | None = None) -> None:
    settings = parse_args(argv)
    _prepare_environment(settings)
    backend = Backend(settings)
    backend.start()  # the model loads while Gradio imports: the first query after the page is up is quick
    import gradio as gr

    ui = build(backend)
    ui.queue(default_concurrency_limit=4).launch(
        server_name=settings.host, server_port=settings.port, share=settings.share,
        allowed_paths=[str(DEMO_DIR), str(settings.data_dir / "images"), str(settings.data_dir / "exports")],
        max_file_size=settings.max_upload_mb * 1024 * 1024, theme=gr.themes.Soft(), css=CSS, js=PAGE_JS,
    )


if __name__ == "__main__":
    main()
