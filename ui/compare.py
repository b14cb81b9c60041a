"""The Compare tab: two configurations on one query, side by side, with how much their rankings agree."""

from __future__ import annotations

import gradio as gr

from retrieval import TextQuery
from retrieval.config import DEFAULT_WHITEN
from retrieval.runtime import RUNTIMES

from .formatting import agreement_line, captions, picked_note, picks, timing_line
from .search import explain_pick
from .sessions import kept, with_note
from .widgets import MODEL, PRIVATE, device_radio, friendly, settings_block


class CompareTab:
    def __init__(self, page):
        self.page = page
        gr.Markdown("Run two configurations on the same query — two backbones, cosine against Euclidean, "
                    "CPU against GPU — and see where they agree.")
        # Compare ranks the whole gallery, which a Milvus-served one never loads here (the engine refuses it):
        # said up front, the button off, rather than an error after a click; API calls get the engine's refusal.
        off = page.read_only is not None
        gr.Markdown(f"**Compare is off for this gallery:** it ranks the whole gallery, which a gallery served from "
                    f"{page.backend.served_from} never loads into this process. Use the Search tab.",
                    elem_id="compare-off", visible=off)
        with gr.Row():
            self.query = gr.Image(type="filepath", label="Query image", elem_id="compare-query",
                                  sources=["upload", "webcam", "clipboard"], height=240)
            with gr.Column():
                examples = gr.Examples(page.examples, inputs=self.query, label="Example queries (click to compare)")
                self.k = gr.Slider(1, 30, value=8, step=1, label="k")
                button = gr.Button("Compare", variant="primary", elem_id="compare-button", interactive=not off)
        agreement = gr.Markdown(elem_id="compare-agreement")
        sides = {}
        with gr.Row():
            for side, defaults in (("a", {}), ("b", {"metric": "euclidean", "rerank": "none",
                                                     "backbone": "colorhist" if "colorhist" in page.model_choices
                                                     else page.model_choices[0]})):
                with gr.Column():
                    gr.Markdown(f"### {side.upper()}")
                    menus = settings_block(page, f"{side.upper()} · ", **defaults)
                    with gr.Row():
                        device = device_radio(page, f"{side.upper()} · Device")
                        runtime = gr.Dropdown(list(RUNTIMES), value=page.backend.settings.runtime,
                                              label=f"{side.upper()} · Runtime")
                    if side == "b":  # words against A's image, with an image-text backbone
                        self.b_text = gr.Textbox("", label="B · words instead of the image", max_lines=1,
                                                 elem_id="compare-b-text", placeholder="e.g. a red car",
                                                 info="ranked by B's text tower: pick CLIP or SigLIP as B's backbone")
                    results = gr.Gallery(label=f"{side.upper()} results", elem_id=f"compare-{side}", columns=3,
                                         height=360, object_fit="contain", interactive=False)
                    timings = gr.Markdown(elem_classes=["timing"])
                    sides[side] = (menus, device, runtime, results, timings, gr.State([]))
        self.a_backbone, self.b_backbone = sides["a"][0][0], sides["b"][0][0]
        self.picked = gr.State(None)  # (side, hit)
        gr.Markdown("Click a result in A or B to see why it matched under that configuration, or to search with it.")
        with gr.Row(visible=False, elem_id="compare-actions") as self.actions:
            picked_line = gr.Markdown(elem_id="compare-picked-note")
            why_button = gr.Button("Why this match?", elem_id="compare-why-button", scale=0)
            again_button = gr.Button("Compare with this image", elem_id="compare-with-button", scale=0)
        with gr.Column(visible=False, elem_id="compare-why-panel") as why_panel:
            why_note = gr.Markdown()
            with gr.Row():
                why_query = gr.Image(label="Query", elem_id="compare-why-query", interactive=False, height=280)
                why_result = gr.Image(label="Result", elem_id="compare-why-result", interactive=False, height=280)

        (a_menus, a_device, a_runtime, a_results, a_timings, a_hits) = sides["a"]
        (b_menus, b_device, b_runtime, b_results, b_timings, b_hits) = sides["b"]
        inputs = [self.query, *a_menus, *b_menus, self.k, a_device, b_device, a_runtime, b_runtime, self.b_text,
                  page.session]
        outputs = [a_results, a_timings, b_results, b_timings, agreement, page.session, a_hits, b_hits]
        hide = [self.actions, why_panel, self.picked]

        def followed(event):
            page.relisting(event).then(lambda: (gr.Row(visible=False), gr.Column(visible=False), None), None, hide,
                                       **PRIVATE)

        followed(button.click(self.compare, inputs, outputs, api_name="compare", **MODEL))
        followed(examples.load_input_event.success(self.compare, inputs, outputs, **PRIVATE, **MODEL))
        for side, hits in (("a", a_hits), ("b", b_hits)):
            results = sides[side][3]
            results.select(self.picker(side), [hits], [self.picked, picked_line, self.actions], **PRIVATE)

        def why(query, picked, a_backbone, a_pooling, b_backbone, b_pooling, session, request: gr.Request = None):
            side, hit = picked or (None, None)
            backbone, pooling = (a_backbone, a_pooling) if side == "a" else (b_backbone, b_pooling)
            return explain_pick(page, query, hit, backbone, pooling, DEFAULT_WHITEN, session, request)

        page.relisting(why_button.click(why, [self.query, self.picked, a_menus[0], a_menus[1], b_menus[0], b_menus[1],
                                              page.session],
                                        [why_panel, why_query, why_result, why_note, page.session], **PRIVATE,
                                        **MODEL))
        followed(again_button.click(self.compare_with, [self.picked, *inputs[1:]], [self.query, *outputs],
                                    **PRIVATE, **MODEL))

    @staticmethod
    def picker(side: str):
        """A select handler for one side's results (Gradio injects the event by its annotation)."""
        def pick(hits, evt: gr.SelectData):
            if not hits or not 0 <= evt.index < len(hits):
                return None, "", gr.Row(visible=False)
            hit = hits[evt.index]
            return (side, hit), f"**{side.upper()}** · {picked_note(hit)}", gr.Row(visible=True)
        return pick

    @friendly
    def compare_with(self, picked, *settings, request: gr.Request = None):
        """The clicked result becomes the query of both sides, compared again with their settings."""
        session = settings[-1]
        s = self.page.sessions.open(session, request)
        member = self.page.sessions.member(s, picked and picked[1]["path"])
        if member is None:  # removed meanwhile, or the tab's gallery expired: say so, compare nothing
            note = with_note(s, "That result is no longer in your gallery: compare again.")
            return (gr.skip(),) * 5 + (note, kept(s), gr.skip(), gr.skip())
        return (member.path, *self.compare(member.path, *settings[:-1], kept(s), request=request))

    @friendly
    def compare(self, query, a_backbone, a_pooling, a_metric, a_rerank, b_backbone, b_pooling, b_metric, b_rerank,
                k=8, a_device="auto", b_device="auto", a_runtime=None, b_runtime=None, b_text="", session=None,
                request: gr.Request = None):
        """Two configurations on one query (or B on words), side by side, with their agreement."""
        b_text = (b_text or "").strip()
        if query is None:
            raise gr.Error("Choose a query image first." + (" A ranks by the image; B by the words." if b_text else ""))
        page = self.page
        page.backend.wait()
        s = page.sessions.open(session, request)
        a = page.sessions.configs(s.collection, a_backbone, a_pooling, a_metric, a_rerank, DEFAULT_WHITEN, k)
        b = page.sessions.configs(s.collection, b_backbone, b_pooling, b_metric, b_rerank, DEFAULT_WHITEN, k)
        cmp = page.studio.compare(query, s.collection, a, b, devices=(a_device, b_device),
                                  runtimes=(a_runtime, b_runtime), b_query=TextQuery(b_text) if b_text else None)
        return (captions(cmp.a), timing_line(cmp.a), captions(cmp.b), timing_line(cmp.b),
                with_note(s, agreement_line(cmp.agreement)), kept(s), picks(cmp.a), picks(cmp.b))
