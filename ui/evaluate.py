"""The Evaluate tab: mAP, P@k, R@k and nDCG of one or more backbones on the gallery's labels, with plots and
exports; leave-one-out, or held-out queries (another gallery, or a zip) that are never gallery members."""

from __future__ import annotations

import secrets

import gradio as gr
import pandas as pd

from retrieval import ServiceError
from retrieval.config import (
    DEFAULT_BACKBONE,
    DEFAULT_METRIC,
    DEFAULT_RERANK,
    DEFAULT_WHITEN,
    METRICS,
    RERANKS,
    WHITENINGS,
)
from retrieval.pooling import POOLINGS
from retrieval.service.exports import evaluation_row, write_evaluation
from retrieval.service.jobs import Job
from retrieval.service.textsearch import LABEL as METADATA_LABEL

from .formatting import elapsed, evaluation_note
from .gallery import as_paths
from .sessions import NO_QUERIES, kept, owner_of, with_note
from .widgets import PRIVATE, first_line, friendly_stream

HEAVY = "heavy"  # evaluation and training share one slot: one at a time on a small shared box


class EvaluateTab:
    def __init__(self, page):
        self.page = page
        # Evaluation ranks every labelled image against the whole gallery, which a Milvus-served one never loads
        # here: said up front, the button off, rather than every vector loaded after a click (as Compare does).
        off = page.read_only is not None
        gr.Markdown(f"**Evaluate is off for this gallery:** it ranks the whole gallery, which a gallery served "
                    f"from {page.backend.served_from} never loads into this process.",
                    elem_id="eval-off", visible=off)
        hint = gr.Markdown(elem_id="eval-hint")
        with gr.Row():
            default = DEFAULT_BACKBONE if DEFAULT_BACKBONE in page.model_choices else page.model_choices[0]
            self.backbones = gr.CheckboxGroup(page.model_choices, value=[default], label="Backbones to compare")
            pooling = gr.Radio(list(POOLINGS), value="gem", label="Pooling")
            metric = gr.Dropdown(list(METRICS), value=DEFAULT_METRIC, label="Metric")
            rerank = gr.Radio(list(RERANKS), value=DEFAULT_RERANK, label="Re-ranking")
            whiten = gr.Radio(list(WHITENINGS), value=DEFAULT_WHITEN, label="Post-processing")
        with gr.Row():
            queries = gr.Dropdown([NO_QUERIES], value=NO_QUERIES, label="Held-out queries: a gallery",
                                  info="leave-one-out, or another gallery's images as queries",
                                  allow_custom_value=True,  # the list is per tab; the handler checks
                                  elem_id="eval-queries")
            queries_zip = gr.File(file_types=[".zip"], elem_id="eval-queries-zip", height=120,
                                  label="…or a zip of held-out queries (one subfolder per label)")
        metadata = gr.Checkbox(False, label="Add a “metadata only” row: captions and tags ranked by BM25, scored "
                               "like a backbone (where the gallery has them)", elem_id="eval-metadata")
        with gr.Row():
            button = gr.Button("Evaluate", variant="primary", elem_id="eval-button", interactive=not off)
            cancel = gr.Button("Cancel", variant="stop", elem_id="eval-cancel")
        note = gr.Markdown(elem_id="eval-note")
        table = gr.Dataframe(label="Metrics", elem_id="eval-table", interactive=False)
        with gr.Row():
            curve = gr.LinePlot(x="k", y="precision", color="configuration", title="Precision@k",
                                elem_id="eval-curve", height=320)
            classes = gr.BarPlot(x="class", y="AP", color="configuration", title="AP per class",
                                 elem_id="eval-classes", height=320, x_label_angle=-45, sort="x", y_lim=[0, 1])
        exports = gr.File(label="Export (CSV and JSON, with the configuration)", file_count="multiple",
                          elem_id="eval-export")

        page.relisting(button.click(
            self.evaluate, [self.backbones, pooling, metric, rerank, whiten, page.session, queries, queries_zip,
                            metadata],
            [table, curve, classes, exports, note, page.session], api_name="evaluate",
            concurrency_limit=1, concurrency_id=HEAVY))
        cancel.click(self.cancel, None, note, queue=False, **PRIVATE)
        if not off:  # the hint reads every member's label: not for a gallery that may hold millions
            gr.context.Context.root_block.load(self.on_load, [page.session], [hint, queries], **PRIVATE)

    @friendly_stream
    def evaluate(self, backbones, pooling="gem", metric=DEFAULT_METRIC, rerank=DEFAULT_RERANK, whiten=DEFAULT_WHITEN,
                 session=None, queries=NO_QUERIES, queries_zip=None, metadata=False, progress=gr.Progress(),
                 request: gr.Request = None):
        """Evaluate one or more backbones on the labelled gallery: leave-one-out, or held-out queries
        (another gallery by name, or a zip of labelled subfolders) that are never gallery members."""
        page = self.page
        if page.read_only is not None:  # the API too: the button is off, and the engine would load every vector
            raise gr.Error("Evaluate is off for this gallery: it ranks the whole gallery, which a gallery served "
                           f"from {page.backend.served_from} never loads into this process.")
        page.backend.wait()
        backbones = [backbones] if isinstance(backbones, str) else list(backbones or [DEFAULT_BACKBONE])
        s = page.sessions.open(session, request)
        collection = s.collection
        held_out = None
        if queries_zip:
            if queries and queries != NO_QUERIES:
                raise gr.Error("Choose held-out queries from a gallery or a zip, not both.")
            held_out = as_paths([queries_zip])[0]  # in the data folder (Gradio's uploads), like gallery zips
        elif queries and queries != NO_QUERIES:
            if queries not in page.sessions.query_galleries(collection):
                raise gr.Error(f"no gallery named {queries!r} to take held-out queries from")
            held_out = queries
        configs = [(name, *page.sessions.configs(collection, name, pooling, metric, rerank, whiten, 10))
                   for name in backbones]  # every name checked before any work starts

        def work(job: Job):
            reports = []
            for i, (name, cfg, scfg) in enumerate(configs):
                def step(done, total, message, i=i, name=name):
                    job.progress(i * 1000 + 1000 * done // max(total, 1), 1000 * len(configs), f"{name}: {message}")
                step(0, 1, "starting")
                reports.append(page.studio.evaluate(collection, cfg, scfg, queries=held_out, progress=step))
            described, unavailable = None, None
            if metadata:
                job.progress(1000 * len(configs), 1000 * len(configs), "captions and tags")
                try:
                    described = page.studio.evaluate_metadata(collection, queries=held_out)
                except ServiceError as exc:  # no captions here: the CNN rows still stand
                    unavailable = first_line(exc)
            return reports, described, unavailable

        owner = owner_of(request)
        job = page.jobs.start(owner, "evaluation", Job(work, name="evaluation"))
        try:
            while not job.wait(0.5):
                snap = job.snapshot()
                progress((snap.done, max(snap.total, 1)), desc=snap.message)
                yield (*(gr.skip(),) * 4, f"**Evaluating…** {snap.message} · {elapsed(snap.seconds)}", kept(s))
        finally:  # also when the page went away: the job is cancelled with it
            page.jobs.finish(owner, "evaluation", job)
        if job.cancelled:
            yield (*(gr.skip(),) * 4, with_note(s, "Evaluation cancelled."), kept(s))
            return
        if job.error is not None:
            raise job.error
        reports, described, unavailable = job.result
        tags = [page.studio.resolve(cfg).label for _, cfg, _ in configs]
        if described is not None:
            reports, tags = [*reports, described], [*tags, METADATA_LABEL]
        rows, curves, per_class = [], [], []
        for i, (tag, report) in enumerate(zip(tags, reports)):
            held = report.config.get("queries")
            if held and held["kind"] == "zip":
                held["source"] = held_out.name  # the upload's name, not where the server keeps it
            rows.append(evaluation_row(report, tag))
            curves += [{"k": k, "precision": p, "configuration": tag} for k, p in enumerate(report.precision_curve, 1)]
            # One bar per (class, configuration), side by side: colour alone would stack them.
            per_class += [{"class": f"{c} [{i + 1}]", "AP": ap, "configuration": f"[{i + 1}] {tag}"}
                          for c, ap in report.per_class_ap.items()]
        folder = page.backend.settings.data_dir / "exports" / secrets.token_hex(16)  # unguessable: served by path
        shown = "session" if s.private else collection  # a session's gallery name is nobody's business
        files = write_evaluation(folder, rows, reports, shown)
        text = evaluation_note(len(configs), rows[0]["queries"], reports[0].config.get("queries"))
        if unavailable:
            text += f"\n\n**No metadata row:** {unavailable}"
        elif metadata:
            text += (f"\n\nThe metadata row asks with each labelled image's own caption and tags "
                     f"({rows[-1]['queries']} of them have some); images without any stay as answers it cannot find.")
        yield (pd.DataFrame(rows), pd.DataFrame(curves), pd.DataFrame(per_class), [str(f) for f in files],
               with_note(s, text), kept(s))

    def cancel(self, request: gr.Request = None):
        if self.page.jobs.cancel(owner_of(request), "evaluation"):
            return "Cancelling after the current step…"
        return "Nothing is being evaluated."

    def on_load(self, session=None, request: gr.Request = None):
        """What the tab says about the gallery's labels, and which galleries may lend held-out queries."""
        self.page.backend.wait()
        collection = self.page.sessions.open(session, request).collection
        return hint(self.page.studio.members(collection)), gr.Dropdown(
            choices=self.page.sessions.query_galleries(collection))


def hint(members) -> str:
    if not any(m.label for m in members):
        return ("This gallery has no labels, so there is nothing to score against. Add images in **one folder "
                "per label** (a folder upload or a zip with subfolders), or index with a `filename,label` CSV "
                "(`python -m retrieval index FOLDER --labels labels.csv`).")
    labels = {m.label for m in members if m.label}
    return (f"{sum(1 for m in members if m.label)} labelled images in {len(labels)} classes: every one queries "
            "the rest (leave-one-out), unless you choose held-out queries below, which never belong to the "
            "gallery.")
