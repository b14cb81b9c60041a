"""The Search tab: a query image (opened with an example already answered), one configuration, the ranked
results; a click on a result offers "Why this match?" (heatmaps) and "Search with this image"."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from retrieval import SearchConfig
from retrieval.config import DEFAULT_BACKBONE, DEFAULT_METRIC, DEFAULT_RERANK, DEFAULT_WHITEN, WHITENINGS
from retrieval.metadata import DEFAULT_TEXT_MODE, DEFAULT_TEXT_TARGET, DEFAULT_TEXT_WEIGHT, TEXT_MODES, TEXT_TARGETS
from retrieval.runtime import RUNTIMES

from .formatting import captions, picked_note, picks, timing_line
from .sessions import kept, with_note
from .widgets import MODEL, PRIVATE, USER_ERRORS, device_radio, first_line, friendly, settings_block


class SearchTab:
    def __init__(self, page):
        self.page = page
        with gr.Row():
            with gr.Column(scale=1):
                self.query = gr.Image(type="filepath", label="Query image", elem_id="query-image",
                                      sources=["upload", "webcam", "clipboard"], height=300)
                examples = gr.Examples(page.examples, inputs=self.query, label="Example queries (click to search)",
                                       elem_id="search-examples")
                self.text = gr.Textbox("", label="…and/or words", elem_id="text-query",
                                       placeholder="e.g. sleepy cat", max_lines=1,
                                       info="alone: ranked by an image-text backbone's text tower (CLIP, SigLIP) or "
                                            "by captions and tags (BM25) · with an image: filters or blends by "
                                            "captions and tags")
                self.text_target = gr.Radio(list(TEXT_TARGETS), value=DEFAULT_TEXT_TARGET, label="Words alone rank by",
                                            info="model: the backbone's text tower · metadata: captions and tags · "
                                                 "auto: the text tower when the backbone has one",
                                            elem_id="text-target")
                with gr.Row():
                    self.text_mode = gr.Radio(list(TEXT_MODES), value=DEFAULT_TEXT_MODE, label="Words with an image",
                                              info="filter: only images whose text matches · fuse: blend the scores",
                                              elem_id="text-mode")
                    self.text_weight = gr.Slider(0, 1, value=DEFAULT_TEXT_WEIGHT, step=0.05, label="Text weight (fuse)",
                                                 elem_id="text-weight")
            with gr.Column(scale=1):
                self.backbone, self.pooling, self.metric, self.rerank = settings_block(
                    page, "", metric=page.defaults.metric, rerank=page.defaults.rerank)  # the shared gallery's
                with gr.Row():
                    self.whiten = gr.Radio(list(WHITENINGS), value=page.defaults.whiten, label="Post-processing",
                                           info="center: subtract the gallery mean · pca: PCA-whitening")
                    self.device = device_radio(page)
                    self.runtime = gr.Dropdown(list(RUNTIMES), value=page.backend.settings.runtime, label="Runtime",
                                               info="auto: the fastest that matched Keras here")
                self.k = gr.Slider(1, 50, value=8, step=1, label="k (results)")
                button = gr.Button("Search", variant="primary", elem_id="search-button")
        self.results = gr.Gallery(label="Most alike", elem_id="results-gallery", columns=4, height=420,
                                  object_fit="contain", interactive=False)
        self.timings = gr.Markdown(elem_classes=["timing"], elem_id="search-timings")
        self.hits = gr.State([])  # what each shown result is, so a click (an index) maps back to a member
        self.picked = gr.State(None)  # the clicked result
        gr.Markdown("Click a result to see **why it matched**, or to **search with it**.")
        with gr.Row(visible=False, elem_id="result-actions") as self.actions:
            self.picked_note = gr.Markdown(elem_id="picked-note")
            why_button = gr.Button("Why this match?", elem_id="why-button", scale=0)
            again_button = gr.Button("Search with this image", elem_id="search-with-button", scale=0)
        with gr.Column(visible=False, elem_id="why-panel") as self.why_panel:
            self.why_note = gr.Markdown(elem_id="why-note")
            with gr.Row():
                self.why_query = gr.Image(label="Query: what drives the match", elem_id="why-query",
                                          interactive=False, height=320)
                self.why_result = gr.Image(label="Result: what drives the match", elem_id="why-result",
                                           interactive=False, height=320)
        self.map = gr.ScatterPlot(x="x", y="y", color="group", title="The gallery in 2-D (PCA of the descriptors)",
                                  elem_id="embedding-map", visible=False, height=380, tooltip=["name", "group"])
        self._wire(page, button, examples, why_button, again_button)

    def _wire(self, page, button, examples, why_button, again_button):
        inputs = [self.query, self.backbone, self.pooling, self.metric, self.rerank, self.whiten, self.k, self.device,
                  self.runtime, self.text, self.text_mode, self.text_weight, self.text_target, page.session]
        outputs = [self.results, self.timings, page.session, self.hits]
        closed = [self.actions, self.why_panel, self.picked]

        def followed(event):
            """After a search: close the panels of the previous results; draw the map only if it succeeded."""
            event.then(lambda: (gr.Row(visible=False), gr.Column(visible=False), None), None, closed, **PRIVATE)
            page.relisting(event.success(self.embedding_map,
                                         [self.query, self.backbone, self.pooling, self.whiten, self.k, page.session],
                                         [self.map, page.session], **PRIVATE, **MODEL))
            return page.relisting(event)

        followed(button.click(self.search, inputs, outputs, api_name="search", **MODEL))
        followed(self.text.submit(self.search, inputs, outputs, **PRIVATE, **MODEL))
        followed(examples.load_input_event.success(self.search, inputs, outputs, **PRIVATE, **MODEL))
        self.results.select(self.pick, [self.hits], [self.picked, self.picked_note, self.actions], **PRIVATE)
        page.relisting(why_button.click(
            self.why_match, [self.query, self.picked, self.backbone, self.pooling, self.whiten, page.session],
            [self.why_panel, self.why_query, self.why_result, self.why_note, page.session], **PRIVATE, **MODEL))
        followed(again_button.click(self.search_with, [self.picked, *inputs[1:]], [self.query, *outputs],
                                    **PRIVATE, **MODEL))
        followed(page_load(self.opening, [page.session], [self.query, *outputs]))

    @friendly
    def search(self, query, backbone=DEFAULT_BACKBONE, pooling="gem", metric=DEFAULT_METRIC, rerank=DEFAULT_RERANK,
               whiten=DEFAULT_WHITEN, k=8, device="auto", runtime=None, text="", text_mode=DEFAULT_TEXT_MODE,
               text_weight=DEFAULT_TEXT_WEIGHT, text_target=DEFAULT_TEXT_TARGET, session=None,
               request: gr.Request = None):
        """Rank the gallery against the query image, against words (text tower, or captions and tags), or both."""
        text = (text or "").strip()
        if query is None and not text:
            raise gr.Error("Choose a query image first (upload, webcam, paste, or click a gallery image), "
                           "or type words to search the captions and tags.")
        page = self.page
        page.backend.wait()
        s = page.sessions.open(session, request)
        cfg, scfg = page.sessions.configs(s.collection, backbone, pooling, metric, rerank, whiten, k)
        if query is None:
            result = page.studio.search_words(text, s.collection, cfg, scfg, target=text_target, device=device,
                                              runtime=runtime)
        else:
            if text:
                result = page.studio.search_combined(query, text, s.collection, cfg, scfg, text_mode=text_mode,
                                                     text_weight=float(text_weight), device=device, runtime=runtime)
            else:
                result = page.studio.search(query, s.collection, cfg, scfg, device=device, runtime=runtime)
        return captions(result), with_note(s, timing_line(result)), kept(s), picks(result)

    def opening(self, session=None, request: gr.Request = None):
        """The tab opens with the first example already answered: a visitor sees what the studio does at once."""
        if not self.page.examples:
            return (gr.skip(),) * 5
        first, d = self.page.examples[0], self.page.defaults
        return (first, *self.search(first, metric=d.metric, rerank=d.rerank, whiten=d.whiten, session=session,
                                    request=request))

    def pick(self, hits, evt: gr.SelectData):
        """Remember the clicked result and offer what can be done with it."""
        if not hits or not 0 <= evt.index < len(hits):
            return None, "", gr.Row(visible=False)
        hit = hits[evt.index]
        return hit, picked_note(hit), gr.Row(visible=True)

    @friendly
    def search_with(self, picked, *settings, request: gr.Request = None):
        """The clicked result becomes the query, and is searched with the tab's settings."""
        session = settings[-1]
        s = self.page.sessions.open(session, request)
        member = self.page.sessions.member(s, picked and picked["path"])
        if member is None:  # removed meanwhile, or the tab's gallery expired: say so, search nothing
            note = with_note(s, "That result is no longer in your gallery: search again.")
            return gr.skip(), gr.skip(), note, kept(s), gr.skip()
        return (member.path, *self.search(member.path, *settings[:-1], kept(s), request=request))

    def why_match(self, query, picked, backbone, pooling, whiten, session, request: gr.Request = None):
        """Heatmaps for the clicked result: which regions of both images make them alike."""
        return explain_pick(self.page, query, picked, backbone, pooling, whiten, session, request)

    def embedding_map(self, query, backbone, pooling, whiten, k, session=None, request: gr.Request = None):
        """The gallery in 2-D (PCA), coloured by label, with the query and its top k marked."""
        page = self.page
        if query is None or page.read_only:  # a Milvus-served gallery is never loaded whole, not even for a map
            return gr.ScatterPlot(visible=False), gr.skip()
        try:
            s = page.sessions.open(session, request)
            cfg, scfg = page.sessions.configs(s.collection, backbone, pooling, DEFAULT_METRIC, "none", whiten, k)
            coords, members, point, rows = page.studio.embedding_map(s.collection, cfg, scfg, query)
        except USER_ERRORS:
            return gr.ScatterPlot(visible=False), gr.skip()  # a side panel: the search itself said what is wrong
        top = set(rows.tolist())
        frame = pd.DataFrame({"x": coords[:, 0], "y": coords[:, 1],
                              "group": [f"top {k}" if i in top else (m.label or "unlabelled")
                                        for i, m in enumerate(members)],
                              "name": [m.name for m in members]})
        if point is not None:
            frame.loc[len(frame)] = [float(point[0]), float(point[1]), "★ query", "query"]
        return gr.ScatterPlot(frame, visible=True), kept(s)


def page_load(fn, inputs, outputs):
    """An event on page load (the Blocks being built is Gradio's current context)."""
    blocks = gr.context.Context.root_block
    return blocks.load(fn, inputs, outputs, **PRIVATE, **MODEL)


def explain_pick(page, query, picked, backbone, pooling, whiten, session, request):
    """Shared by Search and Compare: the explanation of one clicked result under one configuration."""
    if not picked:
        raise gr.Error("Search first, then click a result.")
    if query is None:
        raise gr.Error("“Why this match?” compares two images, and this result came from words alone: "
                       "use “Search with this image” instead.")
    s = page.sessions.open(session, request)
    member = page.sessions.member(s, picked["path"])
    if member is None:  # the results came from a gallery that is gone, or the image was removed
        return gr.Column(visible=True), None, None, with_note(s, "Search again, then click a result."), kept(s)
    try:
        cfg = page.sessions.configs(s.collection, backbone, pooling, DEFAULT_METRIC, "none", whiten, 1)[0]
        explanation, q_img, r_img = page.studio.explain(query, member.path, s.collection, cfg,
                                                        SearchConfig(whiten=whiten, rerank="none"))
    except USER_ERRORS as exc:
        raise gr.Error(first_line(exc)) from None
    base = (" (explained through its base CNN: a trained head is not linear)"
            if cfg.backbone not in page.model_choices else "")
    note = (f"**Why this match?** {picked_note(picked)} Cosine similarity **{explanation.score:.3f}** before "
            f"re-ranking, {page.studio.resolve(cfg).label}{base}. Warm regions add to the similarity, blue ones "
            "subtract; each map sums exactly to the score.")
    return gr.Column(visible=True), q_img, r_img, note, kept(s)
