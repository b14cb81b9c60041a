"""The Gradio studio (minimal first cut: search the demo gallery).

This file only arranges components and calls ``retrieval.service``; it holds
no SQL, numpy math or model code.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr  # noqa: E402

from retrieval import SearchConfig, Studio  # noqa: E402
from retrieval.settings import data_dir  # noqa: E402

DEMO = Path(__file__).resolve().parent / "assets" / "demo"


def build(studio: Studio) -> gr.Blocks:
    def search(image, k):
        if image is None:
            raise gr.Error("Choose a query image first.")
        result = studio.search(image, "demo", scfg=SearchConfig(k=int(k)))
        return [(h.path, f"#{h.rank} · {h.score:.3f} · {h.label or '-'}") for h in result.hits]

    with gr.Blocks(title="Image retrieval studio") as demo:
        gr.Markdown("# Image retrieval studio")
        with gr.Row():
            query = gr.Image(type="numpy", label="Query", elem_id="query-image", sources=["upload", "webcam", "clipboard"])
            with gr.Column():
                k = gr.Slider(1, 30, value=8, step=1, label="k")
                button = gr.Button("Search", variant="primary", elem_id="search-button")
        results = gr.Gallery(label="Results", elem_id="results-gallery", columns=4)
        button.click(search, [query, k], results, api_name="search")
    return demo


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--share", action="store_true")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    if args.data_dir:
        os.environ["RETRIEVAL_DATA_DIR"] = args.data_dir
    studio = Studio(data_dir() / "retrieval.sqlite")
    studio.index(DEMO, "demo")
    build(studio).queue().launch(server_name=args.host, server_port=args.port, share=args.share,
                                 allowed_paths=[str(DEMO), str(data_dir())])


if __name__ == "__main__":
    main()
