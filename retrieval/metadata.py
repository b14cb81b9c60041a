"""Text metadata (captions and tags): CSV parsing, FTS5 query escaping, score fusion.

Why pure functions apart from the store: search by text is the other kind of
image retrieval, the one that is "not always accurate" because people write
the words. Its rules (what a CSV row means, how a user's words become a safe
FTS5 query, how a text score and an image score are put on one scale) are
checked here without a database or a model; ``store.py`` keeps the SQL and
``service/captions.py`` the glue.

The CSV: ``name,caption,tags``, a header row optional (``name`` may also be
``filename``, ``file`` or ``path``; the columns may then come in any order).
``name`` is a path relative to the indexed folder (or zip root) or a bare
file name, matched as the ``--labels`` CSV is. Tags are separated by ``;``;
a tags field without any ``;`` may separate them by ``,`` instead (quote the
field then, as CSV requires). A row with neither caption nor tags clears
that image's metadata.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

SIDECAR = "metadata.csv"  # read from a folder's or a zip's root; never an image
TEXT_MODES = ("filter", "fuse")  # with an image query: keep only text matches, or blend both scores
# What words alone rank by: the backbone's text tower (an image-text model such as CLIP or
# SigLIP embeds the words into the images' space), the captions and tags (BM25), or "auto":
# the text tower when the chosen backbone has one, else the captions and tags.
TEXT_TARGETS = ("auto", "model", "metadata")
DEFAULT_TEXT_TARGET = "auto"
DEFAULT_TEXT_MODE = "fuse"
DEFAULT_TEXT_WEIGHT = 0.5
# unicode61 folds case and (with remove_diacritics 2) accents; porter stems English
# ("cats" finds "cat"). On the demo's metadata.csv the metadata row scores mAP 0.338
# with porter, 0.341 without (61 queries: noise); stemming stays for typed plurals.
TOKENIZER = "porter unicode61 remove_diacritics 2"

MAX_CSV_BYTES = 16 * 1024 * 1024
MAX_CAPTION_CHARS = 2000
MAX_TAGS = 64
MAX_TAG_CHARS = 100
MAX_QUERY_TERMS = 64

_NAME_COLUMNS = ("name", "filename", "file", "path")
_CAPTION_COLUMNS = ("caption", "description")
_TAGS_COLUMNS = ("tags", "keywords")
# Words too common to say anything: as OR-ed terms they would match nearly every caption.
# Kept when a query has nothing else ("the who" still searches).
STOPWORDS = frozenset("""a an and are as at be by for from has have in is it its of on or that the this to was were
with without into onto over under near some very""".split())
_TERM = re.compile(r"[^\W_]+")  # what unicode61 keeps: letters and digits; '_' and punctuation separate


class MetadataError(ValueError):
    """A metadata CSV that cannot be read at all; the message is one line for the user."""


@dataclass(frozen=True)
class Entry:
    """One CSV row: the image it names, its caption and tags ("" and () when absent)."""

    key: str
    caption: str
    tags: tuple[str, ...]
    line: int


@dataclass
class Parsed:
    entries: list[Entry] = field(default_factory=list)
    bad: list[tuple[int, str]] = field(default_factory=list)  # (line, reason): rows refused, the rest kept


def clean_text(text: str | None) -> str:
    """One line of printable text: control characters go, runs of whitespace become one space."""
    if not text:
        return ""
    kept = "".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in str(text))
    return " ".join(kept.split())


def parse_tags(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"a; b"`` (or ``"a, b"`` when there is no ``;``), or a list -> unique tags in order."""
    if value is None:
        return ()
    if isinstance(value, str):
        parts = value.split(";") if ";" in value or "," not in value else value.split(",")
    else:
        parts = list(value)
    out: list[str] = []
    seen: set[str] = set()
    for part in parts:
        tag = clean_text(part).replace(";", " ").strip()
        if tag and tag.casefold() not in seen:
            seen.add(tag.casefold())
            out.append(tag)
    return tuple(out)


def check_entry(caption: str, tags: tuple[str, ...]) -> str | None:
    """Why these values cannot be stored, or None."""
    if len(caption) > MAX_CAPTION_CHARS:
        return f"caption longer than {MAX_CAPTION_CHARS:,} characters"
    if len(tags) > MAX_TAGS:
        return f"more than {MAX_TAGS} tags"
    if any(len(t) > MAX_TAG_CHARS for t in tags):
        return f"a tag longer than {MAX_TAG_CHARS} characters"
    return None


def normalise_key(key: str) -> str:
    return key.strip().replace("\\", "/")


def _decode(data: bytes, source: str) -> str:
    if len(data) > MAX_CSV_BYTES:
        raise MetadataError(f"{source} is over {MAX_CSV_BYTES // (1024 * 1024)} MB: split it, or keep captions short")
    if b"\x00" in data[:4096] and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise MetadataError(f"{source} is not a text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise MetadataError(f"{source} is not UTF-8 text (line {line}, byte 0x{data[exc.start]:02x}): "
                            "save it as UTF-8") from None


def _columns(header: list[str], source: str) -> tuple[int, int | None, int | None]:
    names = [h.strip().lower() for h in header]
    where = lambda choices: next((i for i, n in enumerate(names) if n in choices), None)  # noqa: E731
    name, caption, tags = where(_NAME_COLUMNS), where(_CAPTION_COLUMNS), where(_TAGS_COLUMNS)
    if name is None or (caption is None and tags is None):
        raise MetadataError(f"{source} has columns {','.join(h.strip() for h in header)[:80]}: "
                            "expected name,caption,tags")
    return name, caption, tags


def parse_csv(data: bytes, source: str = "metadata CSV") -> Parsed:
    """CSV bytes -> entries, and the rows refused with their line and reason.

    A bad row never costs the others; a file that is too large, not UTF-8,
    or whose header names other columns raises ``MetadataError`` (one line).
    """
    text = _decode(data, source)
    reader = csv.reader(io.StringIO(text, newline=""))
    parsed = Parsed()
    columns: tuple[int, int | None, int | None] | None = None
    first = True
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:  # e.g. a field over the csv module's size limit: that row only
            parsed.bad.append((reader.line_num, f"unreadable CSV row: {exc}"))
            continue
        line = reader.line_num
        if not row or not any(cell.strip() for cell in row):
            continue
        if first:
            first = False
            cells = {cell.strip().lower() for cell in row}
            if row[0].strip().lower() in _NAME_COLUMNS or (
                    cells & set(_NAME_COLUMNS) and cells & set(_CAPTION_COLUMNS + _TAGS_COLUMNS)):
                columns = _columns(row, source)
                continue
        if columns is not None:
            n, c, t = columns
            get = lambda i: row[i] if i is not None and i < len(row) else ""  # noqa: E731
            key, caption, tags = get(n), get(c), get(t)
        elif len(row) > 3:
            parsed.bad.append((line, f"{len(row)} fields, expected name,caption,tags: quote a tags field "
                                     "that holds commas, or separate tags by ';'"))
            continue
        else:
            key, caption, tags = (row + ["", ""])[:3]
        key = normalise_key(key)
        if not key:
            parsed.bad.append((line, "no image name"))
            continue
        entry = Entry(key, clean_text(caption), parse_tags(tags), line)
        reason = check_entry(entry.caption, entry.tags)
        if reason:
            parsed.bad.append((line, reason))
            continue
        parsed.entries.append(entry)
    if first:
        raise MetadataError(f"{source} holds no rows")
    if not parsed.entries and parsed.bad and columns is None:
        raise MetadataError(f"{source} has no usable row (line {parsed.bad[0][0]}: {parsed.bad[0][1]}): "
                            "expected name,caption,tags")
    return parsed


def document(caption: str | None, tags: Sequence[str]) -> str:
    """A member's text as one query: its caption and its tags."""
    return " ".join([caption or "", *tags]).strip()


def query_terms(text: str | None) -> list[str]:
    """The words of a user's text, lower-cased, unique, in order; common words dropped if others remain."""
    words: list[str] = []
    for word in _TERM.findall(unicodedata.normalize("NFC", text or "").casefold()):
        if word not in words:
            words.append(word)
    content = [w for w in words if w not in STOPWORDS]
    return (content or words)[:MAX_QUERY_TERMS]


def match_expression(terms: Sequence[str]) -> str | None:
    """FTS5 MATCH syntax for "any of these words": each a quoted string, OR-ed.

    Quoting makes every word a plain term: ``OR``, ``NOT``, ``NEAR``, ``*``,
    ``:`` or a stray ``"`` in the user's text can never become syntax (the
    words hold letters and digits only, and a quote inside is doubled anyway).
    """
    quoted = ['"' + t.replace('"', '""') + '"' for t in terms if t]
    return " OR ".join(quoted) if quoted else None


def normalise_image(keys: np.ndarray) -> np.ndarray:
    """Higher-is-better image keys over the gallery -> [0, 1] by min-max (best 1, worst 0)."""
    keys = np.asarray(keys, np.float64)
    finite = np.isfinite(keys)
    if not finite.any():
        return np.zeros_like(keys)
    lo, hi = keys[finite].min(), keys[finite].max()
    out = np.where(finite, (keys - lo) / (hi - lo) if hi > lo else 1.0, 0.0)
    return out


def normalise_text(scores: np.ndarray) -> np.ndarray:
    """BM25 scores (higher better, 0 = no match) -> [0, 1] divided by the best; no match stays 0.

    Not min-max: the weakest match must stay above the images that match
    nothing, or fusion could not tell them apart.
    """
    scores = np.maximum(np.asarray(scores, np.float64), 0.0)
    best = scores.max() if scores.size else 0.0
    return scores / best if best > 0 else np.zeros_like(scores)


def fuse(image_keys: np.ndarray, text_scores: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - weight) * image + weight * text``, each normalised as above; weight in [0, 1]."""
    check_weight(weight)
    return (1.0 - weight) * normalise_image(image_keys) + weight * normalise_text(text_scores)


def fused_order(image_keys: np.ndarray, text_scores: np.ndarray, weight: float) -> np.ndarray:
    """Rows best first by the fused score; ties by image key, then by row (deterministic)."""
    fused = fuse(image_keys, text_scores, weight)
    image = np.nan_to_num(np.asarray(image_keys, np.float64), nan=-np.inf)
    return np.lexsort((np.arange(len(fused)), -image, -fused))


def check_weight(weight: float) -> float:
    if not (0.0 <= float(weight) <= 1.0):
        raise ValueError(f"text weight must be between 0 and 1, not {weight}")
    return float(weight)


def check_mode(mode: str) -> str:
    if mode not in TEXT_MODES:
        raise ValueError(f"unknown text mode {mode!r}: choose one of {', '.join(TEXT_MODES)}")
    return mode
