"""The Gallery tab: add images (files, zips, whole folders), browse, select, remove, reset to the demo."""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr

from .formatting import code, gallery_info, gallery_items, upload_summary
from .sessions import kept, with_note
from .widgets import PRIVATE, friendly

LISTED = 1000  # the Gallery tab lists at most this many images: a gallery served from Milvus may hold millions
FOLDER_JS = "(files, paths, session) => [files, JSON.stringify(window.__retrievalFolder || []), session]"


def as_paths(files) -> list[Path]:
    return [Path(f if isinstance(f, str) else f.name) for f in files or []]


class GalleryTab:
    def __init__(self, page, queries: list, use_as_query):
        self.page = page
        info = gr.Markdown(elem_id="gallery-info")
        writable = page.read_only is None  # a Milvus-served shared gallery is never copied: no changes here
        gr.Markdown(page.read_only or "", elem_id="gallery-read-only", visible=not writable)
        with gr.Row():
            with gr.Column(scale=2):
                upload = gr.File(file_count="multiple", label="Add images or a zip (subfolders become labels)",
                                 elem_id="gallery-upload", interactive=writable)
                folder = gr.File(file_count="directory",
                                 label="…or a whole folder (added at once; subfolders become labels)",
                                 elem_id="gallery-folder", interactive=writable)
                add_button = gr.Button("Add to my gallery", variant="primary", elem_id="add-button",
                                       interactive=writable)
            with gr.Column(scale=3):
                summary = gr.Markdown(elem_id="upload-summary")
        browse = gr.Gallery(label="Gallery (click to select)", elem_id="gallery-browser", columns=8, height=420,
                            object_fit="contain", allow_preview=False, interactive=False)
        self.selected = gr.State(None)
        with gr.Row():
            selected_note = gr.Markdown("Click an image to select it.", elem_id="selected-note")
            use_button = gr.Button("Use as query", elem_id="use-as-query")
            remove_button = gr.Button("Remove selected", variant="stop", elem_id="remove-button",
                                      interactive=writable)
            reset_button = gr.Button("Reset to demo gallery" if not page.backend.named else
                                     "Reset to the shared gallery", elem_id="reset-button", visible=writable)
        with gr.Accordion("Captions and tags (metadata for text search)", open=True, elem_id="metadata-panel"):
            with gr.Row():
                caption = gr.Textbox(label="Caption of the selected image", elem_id="meta-caption", max_lines=2,
                                     interactive=True)
                tags = gr.Textbox(label="Tags (separated by ;)", elem_id="meta-tags", max_lines=1, interactive=True)
                save = gr.Button("Save caption and tags", elem_id="meta-save", scale=0, interactive=writable)
            with gr.Row():
                meta_csv = gr.File(file_types=[".csv"], label="…or a CSV for many images: name,caption,tags",
                                   elem_id="meta-csv", height=120)
                meta_import = gr.Button("Import CSV", elem_id="meta-import", scale=0, interactive=writable)
            meta_note = gr.Markdown(elem_id="meta-note")
        self.listing = [browse, info, page.session, page.listed]
        self.queries = queries

        add_button.click(self.add_images, [upload, page.session], [summary, *self.listing], api_name="add_images")
        folder_paths = gr.Textbox(visible=False)
        folder.upload(self.add_folder, [folder, folder_paths, page.session], [summary, *self.listing], js=FOLDER_JS,
                      **PRIVATE)
        browse.select(self.select, [page.session], [self.selected, *queries, selected_note, *self.listing],
                      **PRIVATE).then(self.described, [self.selected, page.session], [caption, tags], **PRIVATE)
        page.relisting(save.click(self.save_metadata, [self.selected, caption, tags, page.session],
                                  [meta_note, page.session], **PRIVATE))  # the selection is page state
        page.relisting(meta_import.click(self.import_metadata, [meta_csv, page.session], [meta_note, page.session],
                                         api_name="import_metadata"))
        use_button.click(lambda p: p, self.selected, use_as_query, **PRIVATE)
        remove_button.click(self.remove_selected, [self.selected, page.session],
                            [browse, info, page.session, self.selected, page.listed], **PRIVATE)
        reset_button.click(self.reset, [page.session], [browse, info, page.session, self.selected, page.listed],
                           api_name="reset")
        gr.context.Context.root_block.load(self.refresh, [page.session], self.listing, **PRIVATE)

    def _listed(self, collection: str) -> list:
        """The first ``LISTED`` members (insertion order), as the tab lists them: ``select`` maps a click into
        this same list. Never the whole gallery: a gallery served from Milvus may hold millions."""
        return self.page.studio.members(collection, limit=LISTED)

    def _listing(self, s) -> tuple:
        members = self._listed(s.collection)
        backend = self.page.backend
        shared = f"the shared gallery {code(backend.template)}" if backend.named else "the shared demo gallery"
        total = self.page.studio.count(s.collection)  # a COUNT, not the rows
        return gallery_items(members), gallery_info(members, s.private, shared, self.page.read_only is not None,
                                                    total)

    @friendly
    def add_images(self, files, session=None, progress=gr.Progress(), request: gr.Request = None):
        """Add images and zip archives (labels from the folders inside a zip) to your gallery."""
        uploads = [(p, p.name, None) for p in as_paths(files)]
        return self._ingest(uploads, session, progress, request)

    @friendly
    def add_folder(self, files, relative_paths, session=None, progress=gr.Progress(), request: gr.Request = None):
        """A folder upload: first-level subfolders of the chosen folder become labels."""
        known: dict[tuple[str, int], list[str]] = {}
        for rel, name, size in json.loads(relative_paths or "[]"):
            known.setdefault((name, int(size)), []).append(rel)
        uploads = []
        for p in as_paths(files):
            candidates = known.get((p.name, p.stat().st_size)) if p.exists() else None
            parts = Path(candidates.pop(0)).parts[1:] if candidates else (p.name,)  # drop the chosen folder itself
            uploads.append((p, "/".join(parts), parts[0] if len(parts) > 1 else None))
        return self._ingest(uploads, session, progress, request)

    def _ingest(self, uploads, session, progress, request):
        if not uploads:
            raise gr.Error("Choose images, a folder or a zip to add.")
        page = self.page
        page.backend.wait()
        s = page.sessions.open(session, request, writable=True)
        progress(0, desc="Reading uploads…")

        def report_progress(done, total, message):
            progress((done, max(total, 1)), desc=f"Indexing: {message}")

        report = page.studio.upload(uploads, s.collection, progress=report_progress, create=False)  # never resurrect
        return (with_note(s, upload_summary(report)), *self._listing(s), kept(s), kept(s))

    @friendly
    def described(self, selected, session=None, request: gr.Request = None):
        """The selected image's caption and tags, ready to edit."""
        s = self.page.sessions.open(session, request)
        member = self.page.sessions.member(s, selected)
        found = self.page.studio.metadata(s.collection, member.sha256) if member else None
        return (found.caption, "; ".join(found.tags)) if found else ("", "")

    @friendly
    def save_metadata(self, selected, caption="", tags="", session=None, request: gr.Request = None):
        """Write one image's caption and tags (the demo is shared: the first edit makes the tab's own copy)."""
        page = self.page
        if not selected:
            raise gr.Error("Click an image in the gallery first.")
        s = page.sessions.open(session, request)
        member = page.sessions.member(s, selected)
        if member is None:  # removed meanwhile, or the tab's gallery expired: say so (the listing follows)
            return with_note(s, "That image is no longer in your gallery: select one again."), kept(s)
        s = page.sessions.open(session, request, writable=True)
        found = page.studio.set_metadata(s.collection, member.sha256, caption=caption or "", tags=tags or "")
        if found is None and (caption or tags):
            raise gr.Error("That image is no longer in your gallery.")
        words = f"caption {code(found.caption)}, tags {code('; '.join(found.tags))}" if found else "nothing"
        return with_note(s, f"Saved for {code(member.name)}: {words}."), kept(s)

    @friendly
    def import_metadata(self, csv_file, session=None, request: gr.Request = None):
        """Captions and tags for many images at once, from ``name,caption,tags`` rows."""
        if not csv_file:
            raise gr.Error("Choose a CSV with the columns name,caption,tags first.")
        page = self.page
        page.backend.wait()
        s = page.sessions.open(session, request, writable=True)
        report = page.studio.import_metadata(as_paths([csv_file])[0], s.collection)
        lines = [f"**{report.applied} images described** from {report.rows} rows."]
        lines += [f"- {code(note)}" for note in report.notes()]  # notes quote row names: shown as typed
        return with_note(s, "\n".join(lines)), kept(s)

    @friendly
    def remove_selected(self, selected, session=None, request: gr.Request = None):
        if selected is None:
            raise gr.Error("Click an image in the gallery first.")
        s = self.page.sessions.open(session, request, writable=True)
        items, info = self._listing(s)
        if s.note:  # the selection was made in a gallery that is gone: nothing of it to remove
            return items, with_note(s, info), kept(s), None, kept(s)
        self.page.studio.remove(selected, s.collection)
        return (*self._listing(s), kept(s), None, kept(s))

    @friendly
    def reset(self, session=None, request: gr.Request = None):
        """Drop this tab's gallery (its uploads and models go with it) and go back to the shared demo."""
        page = self.page
        if session:
            page.studio.drop_collection(session)
        s = page.sessions.open(None, request)
        if s.private:  # a gallery of this tab's the page had not heard of yet (its first upload still running)
            page.studio.drop_collection(s.collection)
            s = page.sessions.open(None, request)
        return (*self._listing(s), kept(s), None, kept(s))

    def refresh(self, session=None, request: gr.Request = None):
        self.page.backend.wait()
        s = self.page.sessions.open(session, request)
        items, info = self._listing(s)
        return items, with_note(s, info), kept(s), kept(s)

    def relist(self, session, listed, request: gr.Request = None):
        """After an action that may have moved the tab to a new gallery: the Gallery tab lists that one."""
        if session == listed:
            return (gr.skip(),) * 4
        return self.refresh(session, request)

    def select(self, session, evt: gr.SelectData, request: gr.Request = None):
        s = self.page.sessions.open(session, request)
        members = [m for m in self._listed(s.collection) if m.path]  # as listed (gallery_items keeps these)
        skip_queries = (gr.skip(),) * len(self.queries)
        if s.note or not 0 <= evt.index < len(members):  # clicked in a gallery that changed meanwhile: show the new one
            return (None, *skip_queries, with_note(s, "Click an image to select it."), *self._listing(s), kept(s),
                    kept(s))
        member = members[evt.index]
        note = (f"Selected {code(member.name)} ({code(member.label) if member.label else 'unlabelled'}): "
                "it is now the query.")
        return (member.path, *(member.path,) * len(self.queries), note, gr.skip(), gr.skip(), kept(s), gr.skip())
