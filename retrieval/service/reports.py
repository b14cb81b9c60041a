"""What the service hands back: reports and results as small typed values.

Why their own module: the CLI prints them, the app renders them and tests
assert on them; none of those needs the machinery that made them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..evaluation import Agreement
from ..files import Skipped


class ServiceError(RuntimeError):
    """A request that cannot be served; the message is for the user."""


@dataclass
class MetadataImport:
    """What became of a captions-and-tags CSV: rows applied, and every row that was not, with why."""

    source: str
    rows: int = 0  # rows read with an image name
    applied: int = 0  # members whose caption and tags were written (or cleared)
    unknown: list[str] = field(default_factory=list)  # names that match no member (or no indexed file)
    bad: list[tuple[int, str]] = field(default_factory=list)  # (line, reason): rows refused
    error: str | None = None  # a sidecar that could not be read at all (an import raises instead)

    def notes(self) -> list[str]:
        """One line per kind of problem; the same words in the CLI, the app and JSON."""
        out = []
        if self.error:
            out.append(f"{self.source}: {self.error}")
        if self.unknown:
            shown = ", ".join(self.unknown[:3]) + (", …" if len(self.unknown) > 3 else "")
            out.append(f"{len(self.unknown)} row{'s' if len(self.unknown) != 1 else ''} of {self.source} "
                       f"name{'s' if len(self.unknown) == 1 else ''} no image of the gallery ({shown})")
        for line, reason in self.bad[:20]:
            out.append(f"{self.source} line {line}: {reason}")
        if len(self.bad) > 20:
            out.append(f"{self.source}: {len(self.bad) - 20} more bad rows")
        return out

    def to_json(self) -> dict:
        out = asdict(self)
        out["bad"] = [{"line": line, "reason": reason} for line, reason in self.bad]
        out["notes"] = self.notes()
        return out


@dataclass
class IndexReport:
    collection: str
    config: str
    added: list[str] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (name, same content as)
    unchanged: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)  # members whose file now holds other content
    computed: int = 0  # embeddings the model produced
    reused: int = 0  # embeddings found in the cache
    seconds: float = 0.0
    device: str = ""
    runtime: str = ""  # what ran the model ("OpenVINO bf16", "Keras f32", …)
    limit: str | None = None  # the whole-upload cap that was hit, if any
    timings: dict[str, float] = field(default_factory=dict)  # seconds each stage worked (decode, embed, write)
    metadata: list[MetadataImport] = field(default_factory=list)  # captions and tags read on the way (metadata.csv)
    engine: str = "in-process"  # or "ray"
    distributed: dict | None = None  # a Ray run: actors, nodes, the shards written and reused

    @property
    def images_per_second(self) -> float:
        return self.computed / self.seconds if self.seconds else 0.0

    def merge(self, other: IndexReport) -> IndexReport:
        """One report for a command that took a folder and some files or zips."""
        self.added += other.added
        self.duplicates += other.duplicates
        self.skipped += other.skipped
        self.replaced += other.replaced
        self.unchanged += other.unchanged
        self.computed += other.computed
        self.reused += other.reused
        self.seconds += other.seconds
        self.device = self.device or other.device
        self.runtime = self.runtime or other.runtime
        self.timings = {k: self.timings.get(k, 0.0) + other.timings.get(k, 0.0) for k in {*self.timings, *other.timings}}
        self.limit = self.limit or other.limit
        self.metadata += other.metadata
        return self

    def to_json(self) -> dict:
        out = asdict(self)
        out["duplicates"] = [{"name": n, "duplicate_of": d} for n, d in self.duplicates]
        out["skipped"] = [{"name": s.name, "reason": s.reason} for s in self.skipped]
        out["images_per_second"] = self.images_per_second
        out["metadata"] = [m.to_json() for m in self.metadata]
        return out


@dataclass
class AdaptReport:
    name: str  # the new backbone's name
    method: str
    collection: str
    map_before: float
    map_after: float
    p_at_1_before: float
    p_at_1_after: float
    train_images: int
    validation_images: int
    test_queries: int
    seconds: float
    training: dict
    settings: dict
    base: str

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Hit:
    rank: int
    name: str
    path: str | None
    label: str | None
    score: float
    sha256: str


@dataclass
class SearchResult:
    hits: list[Hit]
    timings: dict[str, float]  # milliseconds per stage
    device: str
    config: str
    search: dict
    runtime: str = ""  # what ran the model ("OpenVINO bf16", "Keras f32", …)
    text: dict | None = None  # a text query's words, mode, weight and matches (search by captions and tags)

    def to_json(self) -> dict:
        out = {"results": [asdict(h) for h in self.hits], "timings": self.timings, "device": self.device,
               "runtime": self.runtime, "config": self.config, "search": self.search}
        if self.text is not None:
            out["text"] = self.text
        return out


@dataclass(frozen=True)
class TextQuery:
    """Words as a query for an image-text backbone: its text tower embeds them into the images' space.

    Passed wherever an image query goes (``Studio.search``, ``compare``), so
    ranking, re-ranking, Milvus and the timings need no second code path.
    """

    text: str


@dataclass
class Comparison:
    a: SearchResult
    b: SearchResult
    agreement: Agreement

    def to_json(self) -> dict:
        return {"a": self.a.to_json(), "b": self.b.to_json(), "agreement": self.agreement.to_json()}


@dataclass(frozen=True)
class Session:
    """The gallery one browser tab works on, as ``Studio.session`` decided it."""

    collection: str
    note: str | None  # one line for the user when their previous gallery was gone
    private: bool  # False: the shared, read-only template


@dataclass(frozen=True)
class CollectionRef:
    """A collection as an operation holds it: by id, which is never reused.

    The name is for messages; writes go to the id, so an operation whose
    collection was dropped meanwhile stops instead of writing into a new
    collection that took the same name.
    """

    id: int
    name: str
