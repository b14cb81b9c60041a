"""The store's ``user_models`` table: models a user registered from their own files.

Why a mixin beside ``store.py``: it is one table with its own rules, and the
store is big enough. ``Store`` inherits these methods; they use its
connection and its lock like every other statement.

A row names the file by content (``sha256``) and by where its copy lies,
relative to the data folder (``models/<sha256>.keras``), never by where the
user had it. Removing a model removes every configuration made with it (all
its poolings) and their vectors in the same transaction: vectors computed
with one file are never served for another file given the same name.
"""

from __future__ import annotations

from datetime import UTC, datetime

USER_MODEL_COLUMNS = ("name", "format", "sha256", "path", "options", "dim", "input_size", "output_shape", "added_at")


class UserModelRows:
    """Methods ``Store`` gains for the ``user_models`` table (needs ``db``, ``_lock``, ``_read``)."""

    def _create_user_models(self) -> None:
        self.db["user_models"].create(
            {"name": str, "format": str, "sha256": str, "path": str, "options": str, "dim": int, "input_size": int,
             "output_shape": str, "added_at": str},
            pk="name", not_null={"format", "sha256", "path"}, if_not_exists=True)

    def save_user_model(self, row: dict) -> None:
        """Insert a model's row; an existing name is the caller's to remove first."""
        added = datetime.now(UTC).isoformat(timespec="seconds")
        with self._lock, self.db.atomic():
            self.db["user_models"].insert({**{k: row[k] for k in USER_MODEL_COLUMNS if k != "added_at"},
                                           "added_at": added})

    def user_models(self, name: str | None = None) -> list[dict]:
        sql = (f"SELECT {', '.join(USER_MODEL_COLUMNS)} FROM user_models"
               + (" WHERE name = ?" if name is not None else "") + " ORDER BY added_at, name")
        return [dict(zip(USER_MODEL_COLUMNS, r)) for r in self._read(sql, [name] if name is not None else [])]

    def user_model_current(self, name: str, weights: str) -> bool:
        """Whether ``weights`` (``sha256:<file>.<options>``) is what model ``name`` is now; call under the lock."""
        from .backbones.user_file import content_id
        from .backbones.user_options import UserModelOptions

        row = self.db.execute("SELECT sha256, options FROM user_models WHERE name = ?", [name]).fetchone()
        return row is not None and content_id(row[0], UserModelOptions.from_json(row[1])) == weights

    def user_model_paths(self) -> set[str]:
        """Stored copies still referenced by some model (two names may share one file)."""
        return {r[0] for r in self._read("SELECT path FROM user_models")}

    def delete_user_model(self, name: str) -> list[int] | None:
        """Remove a model, its configurations and their vectors; the configuration ids, or None if unknown."""
        with self._lock, self.db.atomic():
            if self.db.execute("SELECT 1 FROM user_models WHERE name = ?", [name]).fetchone() is None:
                return None
            ids = [r[0] for r in self.db.execute("SELECT id FROM configs WHERE backbone = ?", [name]).fetchall()]
            for table in ("embeddings", "query_vectors", "transforms"):
                self.db.execute(f"DELETE FROM {table} WHERE config_id IN (SELECT id FROM configs WHERE backbone = ?)",
                                [name])
            self.db.execute("DELETE FROM configs WHERE backbone = ?", [name])
            self.db.execute("DELETE FROM user_models WHERE name = ?", [name])
        return ids
