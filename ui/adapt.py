"""The Adapt tab: train a retrieval model on the gallery's labels, watch it learn, cancel it, and use it
everywhere as a new backbone."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from retrieval import ExtractorConfig
from retrieval.adapt import METHODS, AdaptConfig
from retrieval.config import DEFAULT_BACKBONE

from .evaluate import HEAVY
from .formatting import elapsed
from .sessions import kept, owner_of, with_note
from .widgets import PRIVATE, first_line, friendly_stream

INTRO = ("Train a retrieval model for **this gallery's labels**. A random 30 % of the labelled images is held out: "
         "they are the queries and the gallery of the figures before and after, and never reach training. "
         "**head**: a projection on the cached CNN vectors (seconds to minutes) · **finetune**: the CNN's top blocks "
         "with augmented images (slow on a CPU) · **scratch**: the seed's small CNN from random weights (the "
         "baseline). The result becomes a backbone you can pick in Search, Compare and Evaluate.")


class AdaptTab:
    def __init__(self, page, menus: list, shows_new):
        """``menus``: every backbone menu of the page (dropdowns, then the Evaluate checkboxes last);
        ``shows_new``: the one of them that switches to a model as soon as it is trained (Compare's B)."""
        self.page, self.menus, self.shows_new = page, menus, shows_new
        gr.Markdown(INTRO)
        with gr.Row():
            method = gr.Radio(list(METHODS), value="head", label="Method", elem_id="adapt-method")
            epochs = gr.Slider(1, 100, value=30, step=1, label="Epochs (at most: early stopping)",
                               elem_id="adapt-epochs")
            cnns = [m for m in page.model_choices if m not in ("pixels", "colorhist")] or page.model_choices
            base = gr.Dropdown(cnns, value=DEFAULT_BACKBONE if DEFAULT_BACKBONE in cnns else cnns[0],
                               label="Start from")
        with gr.Row():
            button = gr.Button("Train", variant="primary", elem_id="adapt-button")
            cancel = gr.Button("Cancel", variant="stop", elem_id="adapt-cancel")
        status = gr.Markdown(elem_id="adapt-status")
        curve = gr.LinePlot(x="epoch", y="loss", color="series", title="Loss (training and validation)",
                            elem_id="adapt-curve", height=280)
        table = gr.Dataframe(label="Held-out figures, before and after", elem_id="adapt-table", interactive=False)

        # The menus are outputs of the training itself, not of a follow-up: an API caller's session must
        # accept the new model as a backbone too, and only a browser runs follow-ups.
        page.relisting(button.click(self.train, [method, epochs, base, page.session],
                                    [status, curve, table, *menus, page.session], api_name="adapt",
                                    concurrency_limit=1, concurrency_id=HEAVY))
        cancel.click(self.cancel, None, status, queue=False, **PRIVATE)
        gr.context.Context.root_block.load(self.menus_for, [page.session], menus, **PRIVATE)

    @friendly_stream
    def train(self, method, epochs, base_backbone, session=None, request: gr.Request = None):
        """Train on the gallery's labels; stream progress and the loss curve, then the held-out figures."""
        page = self.page
        page.backend.wait()
        s = page.sessions.open(session, request, writable=True)  # a model is private to its session, like uploads
        job = page.studio.adapt_job(s.collection, AdaptConfig(method=method, epochs=int(epochs)),
                                    ExtractorConfig(backbone=base_backbone))
        owner = owner_of(request)
        page.jobs.start(owner, "training", job)
        try:
            while not job.wait(1.0):
                snap = job.snapshot()
                where = snap.message if snap.total else "preparing (reading vectors or decoding images)…"
                yield (with_note(s, f"**Training `{method}`** on your gallery: {where} · {elapsed(snap.seconds)}"),
                       curve(job.history), gr.skip(), *self.unchanged(), kept(s))
        finally:  # also when the page went away: the job is cancelled with it
            page.jobs.finish(owner, "training", job)
        if job.error is not None:
            message = ("Cancelled: nothing was saved." if job.cancelled
                       else f"Training failed: {first_line(job.error)}")
            yield with_note(s, message), curve(job.history), gr.skip(), *self.unchanged(), kept(s)
            return
        r = job.result
        figures = pd.DataFrame([
            {"": "before (" + r.base.split("|")[0] + ")", "mAP": round(r.map_before, 4),
             "P@1": round(r.p_at_1_before, 4)},
            {"": f"after ({r.name})", "mAP": round(r.map_after, 4), "P@1": round(r.p_at_1_after, 4)},
        ])
        note = (f"**{r.name}** trained in {r.seconds:.1f} s on {r.train_images} images ({r.validation_images} for "
                f"early stopping); figures on **{r.test_queries} held-out images** never seen in training, "
                f"leave-one-out, same queries before and after. It is now a backbone: pick it anywhere.")
        yield with_note(s, note), curve(job.history), figures, *self.with_new(s, r.name), kept(s)

    def cancel(self, request: gr.Request = None):
        if self.page.jobs.cancel(owner_of(request), "training"):
            return "Cancelling after the current batch…"
        return "Nothing is training."

    def menus_for(self, session=None, request: gr.Request = None):
        """Every backbone menu lists the models this session may use (its own trained ones included)."""
        choices = self.page.sessions.models(self.page.sessions.open(session, request).collection)
        if choices == self.page.model_choices:  # nothing trained here: leave the menus alone while the page mounts
            return (gr.skip(),) * len(self.menus)
        return (*(gr.Dropdown(choices=choices) for _ in self.menus[:-1]), gr.CheckboxGroup(choices=choices))


    def unchanged(self) -> tuple:
        return (gr.skip(),) * len(self.menus)

    def with_new(self, s, trained: str) -> tuple:
        """The new model joins every menu, and is picked in ``shows_new`` so it can be compared at once."""
        choices = self.page.sessions.models(s.collection)
        new = {"value": trained} if trained in choices else {}

        def update(menu):
            if isinstance(menu, gr.CheckboxGroup):
                return gr.CheckboxGroup(choices=choices)
            return gr.Dropdown(choices=choices, **(new if menu is self.shows_new else {}))

        return tuple(update(menu) for menu in self.menus)

def curve(history: list[dict]) -> pd.DataFrame:
    rows = [{"epoch": h["epoch"], "loss": h.get(k, 0.0), "series": name} for h in history
            for k, name in (("loss", "training"), ("val_loss", "validation"))]
    # both series from the first frame on: the plot fixes its colours at the first data it gets
    return pd.DataFrame(rows or [{"epoch": 0, "loss": 0.0, "series": name} for name in ("training", "validation")])
