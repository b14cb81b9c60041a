"""Captions and tags of gallery members: CSV imports, zip sidecars, per-image edits, reading.

Why apart from galleries: these calls change what a collection's images
*say*, never which images it holds; no vector, cache or file is touched.
Rows are matched to members the way the ``--labels`` CSV matches files
(``files.match_key``), and a bad or unknown row is counted, never fatal.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..files import match_key
from ..metadata import SIDECAR, Entry, MetadataError, check_entry, clean_text, parse_csv, parse_tags
from ..store import CollectionGone, Metadata, Store, StoreError
from ..uploads import Intake
from .reports import CollectionRef, MetadataImport, ServiceError


def _gone(ref: CollectionRef) -> ServiceError:
    return ServiceError(f"the gallery {ref.name!r} was removed while its captions were being written")


def read_csv_file(path: str | Path) -> bytes:
    from ..metadata import MAX_CSV_BYTES

    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return fh.read(MAX_CSV_BYTES + 1)  # the parser refuses more, in one line
    except OSError as exc:
        raise ServiceError(f"cannot read {path}: {exc.strerror or exc}") from None


class Captions:
    def __init__(self, store: Store):
        self.store = store

    def _write(self, ref: CollectionRef, values: dict[int, tuple[str, tuple[str, ...]]]) -> int:
        try:
            return self.store.set_metadata(ref.id, values)
        except CollectionGone:
            raise _gone(ref) from None
        except StoreError as exc:
            raise ServiceError(str(exc)) from None

    def import_csv(self, ref: CollectionRef, data: bytes, source: str) -> MetadataImport:
        """Rows matched to members by name (relative path, else bare file name), as ``--labels`` does.

        A file that cannot be read at all raises ``ServiceError`` (one line)
        and changes nothing; bad rows and rows naming no member are counted.
        """
        try:
            parsed = parse_csv(data, source)
        except MetadataError as exc:
            raise ServiceError(str(exc)) from None
        report = MetadataImport(source, rows=len(parsed.entries), bad=parsed.bad)
        table = _table(parsed.entries)
        values, used = {}, set()
        for member in self.store.members(ref.id):
            key = match_key(table, member.name)
            if key is not None:
                values[member.image_id] = (table[key].caption, table[key].tags)
                used.add(key)
        report.unknown = [key for key in table if key not in used]
        report.applied = self._write(ref, values)
        return report

    def folder(self, ref: CollectionRef, folder: Path, csv_path: str | Path | None) -> list[MetadataImport]:
        """After indexing a folder: ``csv_path``, else the folder's own ``metadata.csv`` if it has one."""
        if csv_path is None:
            found = folder / SIDECAR
            if not found.is_file():
                return []
            csv_path = found
        csv_path = Path(csv_path)
        return [self.import_csv(ref, read_csv_file(csv_path), str(csv_path))]

    def sidecars(self, ref: CollectionRef, taken: Intake) -> list[MetadataImport]:
        """Each uploaded zip's root ``metadata.csv``, applied to the images that zip brought.

        Matched by content: an entry that was a duplicate of a member under
        another name still gets its caption. A sidecar that cannot be read is
        reported, never raised: the images of the upload are already in.
        """
        reports = []
        members = {m.sha256: m.image_id for m in self.store.members(ref.id)}
        for zip_name, data in taken.sidecars.items():
            source = f"{zip_name}/{SIDECAR}"
            try:
                parsed = parse_csv(data, source)
            except MetadataError as exc:
                reports.append(MetadataImport(source, error=str(exc).removeprefix(f"{source} ")))
                continue
            report = MetadataImport(source, rows=len(parsed.entries), bad=parsed.bad)
            table = _table(parsed.entries)
            prefix = f"{zip_name}/"
            values, used = {}, set()
            for name, digest in taken.hashes.items():
                if not name.startswith(prefix) or digest not in members:
                    continue
                key = match_key(table, name[len(prefix):])
                if key is not None:
                    values[members[digest]] = (table[key].caption, table[key].tags)
                    used.add(key)
            report.unknown = [key for key in table if key not in used]
            try:
                report.applied = self._write(ref, values)
            except ServiceError as exc:
                report.error = str(exc)
            reports.append(report)
        return reports

    def set(self, ref: CollectionRef, member_id: int, current: Metadata | None, caption: str | None,
            tags: str | Sequence[str] | None) -> None:
        """One member's caption and/or tags; None keeps what it had, "" (or no tags) clears."""
        new_caption = clean_text(caption) if caption is not None else (current.caption if current else "")
        new_tags = parse_tags(tags) if tags is not None else (current.tags if current else ())
        reason = check_entry(new_caption, new_tags)
        if reason:
            raise ServiceError(f"cannot store that: {reason}")
        self._write(ref, {member_id: (new_caption, new_tags)})

    def read(self, ref: CollectionRef) -> dict[str, Metadata]:
        """sha256 -> caption and tags, for the members that have either."""
        try:
            return {m.sha256: m for m in self.store.metadata(ref.id)}
        except StoreError as exc:
            raise ServiceError(str(exc)) from None


def _table(entries: list[Entry]) -> dict[str, Entry]:
    """Key -> entry; a name given twice takes its last row, as a spreadsheet edited by appending expects."""
    return {e.key: e for e in entries}
