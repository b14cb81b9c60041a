"""The studio's Gradio page, one module per tab.

``app.py`` is the entry point: it prepares the environment (data folder,
no outside calls) before Gradio is imported, so this package imports Gradio
only in the modules that build the page (``ui.page`` and the tabs), never here.
"""
