"""Pieces every tab uses: the error boundary and the menus of one search configuration."""

from __future__ import annotations

import functools

import gradio as gr

from retrieval import ServiceError
from retrieval.adapt import Cancelled
from retrieval.backbones import BackboneUnavailable
from retrieval.config import DEFAULT_BACKBONE, DEFAULT_METRIC, DEFAULT_RERANK, METRICS, RERANKS
from retrieval.device import DeviceError
from retrieval.pooling import POOLINGS
from retrieval.rerank import describe as describe_reranks
from retrieval.store import StoreError

USER_ERRORS = (ServiceError, BackboneUnavailable, DeviceError, StoreError, ValueError, Cancelled)
MODEL = {"concurrency_id": "model"}  # every event that runs a network shares the default limit (4), not 4 each
PRIVATE = {"api_visibility": "private"}  # UI-only events: not callable through the API


def first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def friendly(fn):
    """The engine's user-facing errors become a toast, never a traceback."""
    @functools.wraps(fn)  # Gradio reads the signature: API names, defaults, gr.Progress, gr.Request
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as exc:
            raise gr.Error(first_line(exc)) from None
    return wrapper


def friendly_stream(fn):
    """``friendly`` for generator handlers (progress streamed while a job runs)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            yield from fn(*args, **kwargs)
        except USER_ERRORS as exc:
            raise gr.Error(first_line(exc)) from None
    return wrapper


def model_menu(choices: list[str], label: str, value: str | None = None, info: str | None = None) -> gr.Dropdown:
    value = value if value in choices else (DEFAULT_BACKBONE if DEFAULT_BACKBONE in choices else choices[0])
    return gr.Dropdown(choices, value=value, label=label, info=info)


def settings_block(page, prefix: str, backbone=DEFAULT_BACKBONE, pooling="gem", metric=DEFAULT_METRIC,
                   rerank=DEFAULT_RERANK):
    """Backbone, pooling, metric and re-ranking menus for one configuration (Search, Compare A and B)."""
    b = model_menu(page.model_choices, f"{prefix}Backbone", backbone,
                   info="only backbones ready on this machine are listed" + page.fusion_costs)
    p = gr.Radio(list(POOLINGS), value=pooling, label=f"{prefix}Pooling")
    m = gr.Dropdown(list(METRICS), value=metric, label=f"{prefix}Metric")
    r = gr.Radio(list(RERANKS), value=rerank, label=f"{prefix}Re-ranking", info=describe_reranks())
    return b, p, m, r


def device_radio(page, label: str = "Device") -> gr.Radio:
    """"gpu" is offered only where TensorFlow sees one."""
    return gr.Radio(page.backend.devices(), value="auto", label=label)
