"""How results, reports and names read on the page: markdown and gallery captions, no engine logic."""

from __future__ import annotations

import re


def code(text) -> str:
    """User-provided text (a file name, a label) as a markdown code span.

    Why: a name is shown as typed, never as a link, emphasis or HTML, whatever
    backticks or brackets it holds. The one way this app puts names and labels
    into markdown.
    """
    text = " ".join(str(text).split())  # one line: a blank line would end the span
    if not text:
        return "“”"
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text[0] == "`" or text[-1] == "`" else ""  # CommonMark strips one space on each side
    return f"{fence}{pad}{text}{pad}{fence}"


def one_line(text) -> str:
    return " ".join(str(text).split())


def captions(result) -> list[tuple[str, str]]:
    """A search result as gallery items: rank, score and label under each image."""
    return [(h.path, f"#{h.rank} · {h.score:.3f} · {h.label or 'unlabelled'}") for h in result.hits]


def picks(result) -> list[dict]:
    """What the page remembers of each shown hit, so a click (an index) maps back to a gallery member."""
    return [{"path": h.path, "name": h.name, "label": h.label, "rank": h.rank, "score": h.score} for h in result.hits]


def picked_note(hit: dict) -> str:
    label = code(hit["label"]) if hit.get("label") else "unlabelled"
    return f"Result **#{hit['rank']}**: {code(hit['name'])} ({label}, score {hit['score']:.3f})."


def timing_line(result) -> str:
    """Where the time went, and, for a query with words, what the words did."""
    t = result.timings
    text = getattr(result, "text", None)
    if text and text.get("mode") == "text":  # captions and tags only: no model ran
        return (f"{text_line(text)}\n\nsearch **{t['search_ms']:.1f} ms** (BM25, SQLite FTS5) · no model ran")
    rerank = f"re-rank **{t.get('rerank_ms', 0.0):.1f} ms**"
    if "graph_build_ms" in t:
        rerank += f", graph built **{t['graph_build_ms']:.0f} ms**"
    if "milvus_ms" in t:  # a Milvus-served gallery: Milvus proposes candidates, which are re-scored here
        rerank = (f"Milvus **{t['milvus_ms']:.1f} ms**, {int(t.get('candidates', 0))} candidates re-scored "
                  f"**{t.get('rescore_ms', 0.0):.1f} ms**")
    words = f" · text **{t['text_ms']:.1f} ms**" if "text_ms" in t else ""
    served = (getattr(result, "search", None) or {}).get("served_by")
    where = f" · served from **{one_line(served)}**" if served else ""
    decode = f"decode **{t['decode_ms']:.1f} ms** · " if "decode_ms" in t else ""  # words have no image to decode
    line = (f"{decode}embed **{t['embed_ms']:.1f} ms** · search **{t['search_ms']:.1f} ms** "
            f"({rerank}){words} · total **{t['total_ms']:.1f} ms** on **{result.device}** · **{result.runtime}**{where}")
    return f"{text_line(text)}\n\n{line}" if text else line


def text_line(text: dict) -> str:
    """Which kind of text search ran: words alone, or with the image as a filter or a blend."""
    words = ", ".join(code(w) for w in text.get("terms", [])) or "“”"
    if text["mode"] == "model":  # words embedded by an image-text backbone's text tower
        return (f"**Ranked by the image content**: the words {code(text['query'])} were embedded by the text tower "
                f"of {code(text['model'])} and compared with every image's vector (captions and tags were not used).")
    if text["mode"] == "text":
        return (f"**Searched captions and tags** for {words}: {text['matched']} of {text.get('described', '?')} "
                "described images matched (images without a caption or tags cannot be found this way).")
    if text["mode"] == "filter":
        return (f"**Image search, filtered by text**: only the {text['matched']} images whose captions or tags "
                f"hold {words}, ranked by the image.")
    return (f"**Image and text blended**: {1 - text['weight']:.2f} × image similarity + {text['weight']:.2f} × "
            f"caption/tag match for {words} ({text['matched']} images matched a word).")


def agreement_line(agreement) -> str:
    return (f"**overlap@{agreement.k}: {agreement.overlap_at_k:.2f}** · Kendall τ (top-{agreement.k} union): "
            f"{agreement.kendall_tau:.2f} · Spearman ρ (full ranking): {agreement.spearman_rho:.2f}")


def gallery_items(members, limit: int | None = None) -> list[tuple[str, str]]:
    """The members with a file, as gallery items (the first ``limit`` of them: a huge gallery is not listed whole)."""
    return [(m.path, f"{m.label or 'unlabelled'} · {m.name}") for m in members if m.path][:limit]


def gallery_info(members, private: bool, shared: str = "the shared demo gallery",
                 read_only: bool = False, total: int | None = None) -> str:
    """``members``: those the page lists (the first ones, for a big gallery); ``total``: how many the gallery
    holds (``Studio.count``), when that may be more; ``shared``: what the shared gallery is called;
    ``read_only``: it is never copied (Milvus-served)."""
    total = len(members) if total is None else total
    labels = len({m.label for m in members if m.label})
    owner = ("your private gallery" if private else
             f"{shared} (read-only)" if read_only else f"{shared} (read-only: changes make your own copy)")
    if total > len(members):  # the labels of the listed ones only: counting all of them would read every row
        return f"**{total} images** (the first {len(members)} shown, with {labels} labels) — {owner}."
    return f"**{total} images**, {labels} labels — {owner}."


def upload_summary(report) -> str:
    lines = [f"**{len(report.added)} added**, {len(report.duplicates)} duplicates, "
             f"{report.unchanged} already in the gallery, **{len(report.skipped)} skipped** "
             f"({report.computed} embeddings computed in {report.seconds:.1f} s on {report.device})."]
    if report.limit:
        lines.append(f"**Limit:** {report.limit}.")
    for described in getattr(report, "metadata", []):
        lines.append(f"Captions and tags: **{described.applied} images described** from {code(described.source)}.")
        lines += [f"- {code(note)}" for note in described.notes()]
    lines += [f"- duplicate: {code(n)} (same content as {code(d)})" for n, d in report.duplicates[:50]]
    lines += [f"- skipped: {code(k.name)}: {one_line(k.reason)}" for k in report.skipped[:200]]
    return "\n".join(lines)


def evaluation_note(configurations: int, queries: int, held: dict | None) -> str:
    if not held:
        return (f"Evaluated {configurations} configuration(s) on {queries} labelled queries "
                "(leave-one-out: each labelled image asks the others).")
    lines = [f"Evaluated {configurations} configuration(s) on **{queries} held-out queries** "
             f"from {code(held['source'])}, none of them a member of the gallery."]
    lines += [f"- {note}" for note in held["notes"]]
    lines += [f"- skipped: {code(k['name'])}: {one_line(k['reason'])}" for k in held["unreadable"][:50]]
    return "\n".join(lines)


def elapsed(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
