"""The caption store's schema: its tables, the migrations between its versions, and the checks made
when a file is opened.

The schema is versioned by ``PRAGMA user_version`` and upgraded by :data:`_MIGRATIONS`, one list of
statements per version, under the write lock (another process may be making or upgrading the same
file). A file that is not a SQLite database, is damaged, holds tables of some other program or comes
from a newer vidnarrate is a :class:`~stream.errors.StoreError` naming it and the reason: it is never
recreated or changed.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Final

from .errors import StoreError

SCHEMA_VERSION: Final = 1

# One tuple of statements per schema version: _MIGRATIONS[v] takes a file from version v to v + 1.
_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """CREATE TABLE messages(
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL,
            run_id TEXT NOT NULL,
            stream TEXT NOT NULL,
            seq INTEGER,
            t_start REAL, t_end REAL,
            wall_start REAL, wall_end REAL NOT NULL,
            text TEXT NOT NULL,
            model TEXT,
            json TEXT NOT NULL
        )""",
        "CREATE INDEX messages_stream_wall ON messages(stream, wall_end)",
        "CREATE INDEX messages_wall ON messages(wall_end)",
        # A caption replayed to the recorder (a restarted subscriber, a resent batch) is kept once.
        "CREATE UNIQUE INDEX messages_once ON messages(run_id, kind, stream, seq) WHERE seq IS NOT NULL",
        "CREATE VIRTUAL TABLE messages_fts USING fts5(text, content='messages', content_rowid='id', "
        "tokenize='porter unicode61 remove_diacritics 2')",
        """CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
            INSERT INTO messages_fts(rowid, text) VALUES (new.id, new.text);
        END""",
        """CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
            INSERT INTO messages_fts(messages_fts, rowid, text) VALUES ('delete', old.id, old.text);
        END""",
        """CREATE TRIGGER messages_fts_update AFTER UPDATE OF text ON messages BEGIN
            INSERT INTO messages_fts(messages_fts, rowid, text) VALUES ('delete', old.id, old.text);
            INSERT INTO messages_fts(rowid, text) VALUES (new.id, new.text);
        END""",
        """CREATE TABLE thumbnails(
            message_id INTEGER PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,
            jpeg BLOB NOT NULL
        )""",
    ),
)
assert len(_MIGRATIONS) == SCHEMA_VERSION

# The tables of the current schema (FTS5 keeps its index in shadow tables named after it).
_TABLES: Final = frozenset(
    {
        "messages",
        "thumbnails",
        "messages_fts",
        "messages_fts_data",
        "messages_fts_idx",
        "messages_fts_docsize",
        "messages_fts_config",
    }
)

_REASONS: Final = {
    "SQLITE_NOTADB": "not a SQLite database",
    "SQLITE_CORRUPT": "the file is damaged (corrupt)",
    "SQLITE_FULL": "the disk is full",
    "SQLITE_READONLY": "the file or its folder is read-only",
    "SQLITE_CANTOPEN": "the file cannot be opened (a folder, or no permission)",
    "SQLITE_PERM": "permission denied",
    "SQLITE_BUSY": "another process holds it locked",
    "SQLITE_IOERR": "an I/O error",
}


def sqlite_reason(exc: sqlite3.Error) -> str:
    """What a SQLite error means, in words (its code's meaning, else its message)."""
    name = getattr(exc, "sqlite_errorname", "")
    for prefix, reason in _REASONS.items():
        if name.startswith(prefix):
            return reason
    return str(exc)


def prepare(db: sqlite3.Connection, path: Path, *, readonly: bool) -> None:
    """Check the file behind ``db`` is a vidnarrate store of this schema (upgrading an older one
    unless ``readonly``) and set the connection up; a :class:`StoreError` naming ``path`` and the
    reason otherwise, the file unchanged."""
    try:
        db.execute("BEGIN")  # one snapshot: another process may be making the schema now
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = _tables(db)
        finally:
            db.execute("COMMIT")
    except sqlite3.Error as exc:
        raise StoreError(f"store {path}: cannot read it: {sqlite_reason(exc)}") from None
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"store {path}: schema version {version} is newer than this vidnarrate's "
            f"({SCHEMA_VERSION}); use a newer vidnarrate, or another --store"
        )
    if version == 0 and tables:
        raise StoreError(
            f"store {path}: not a vidnarrate store (it holds the tables {', '.join(sorted(tables))})"
        )
    if version == SCHEMA_VERSION:
        _check_tables(path, tables)  # before anything is written, the journal mode included
    elif readonly:
        what = "empty" if version == 0 else f"of schema version {version}"
        raise StoreError(f"store {path}: it is {what}; a vidnarrate run recording into it upgrades it")
    if not readonly:
        try:
            _upgrade(db, path, version)
            _check_tables(path, _tables(db))
        except sqlite3.Error as exc:
            raise StoreError(f"store {path}: cannot set it up: {sqlite_reason(exc)}") from None
    try:
        db.execute("PRAGMA foreign_keys = ON")  # thumbnails go with their message
        if not readonly:
            db.execute("PRAGMA synchronous = FULL")
            db.execute("PRAGMA journal_size_limit = 67108864")  # the WAL shrinks back after bursts
    except sqlite3.Error as exc:
        raise StoreError(f"store {path}: cannot set it up: {sqlite_reason(exc)}") from None


def _check_tables(path: Path, tables: set[str]) -> None:
    if tables != _TABLES:
        odd = sorted(tables - _TABLES) or sorted(_TABLES - tables)
        kind = "unexpected tables" if tables - _TABLES else "missing tables"
        raise StoreError(f"store {path}: not a vidnarrate store ({kind} {', '.join(odd)})")


def _tables(db: sqlite3.Connection) -> set[str]:
    rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
    return {name for (name,) in rows}


def _upgrade(db: sqlite3.Connection, path: Path, version: int) -> None:
    if version == 0:
        # Only possible before the first table exists; later the file would need a full VACUUM.
        db.execute("PRAGMA auto_vacuum = INCREMENTAL")
    mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode != "wal":
        raise StoreError(f"store {path}: cannot use WAL journaling here (the journal is {mode})")
    while version < SCHEMA_VERSION:
        db.execute("BEGIN IMMEDIATE")
        try:
            # Read again under the write lock: another process may have just made or upgraded it.
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version < SCHEMA_VERSION:
                for statement in _MIGRATIONS[version]:
                    db.execute(statement)
                version += 1
                db.execute(f"PRAGMA user_version = {version}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
