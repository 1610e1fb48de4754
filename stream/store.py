"""The caption store: one SQLite file that keeps every caption, event and answer, and finds them again.

Embedded (the standard library's ``sqlite3``, with FTS5), nothing to run beside it. The file is in WAL
mode, so readers (``vidnarrate search``, the gateway) never block the writer (the recorder) nor it
them, and ``synchronous=FULL``: each commit is fsynced to the WAL before :meth:`Store.add` returns, so
a commit survives a power cut as well as a SIGKILL (``NORMAL`` survives only the latter; the recorder
commits a batch about twice a second, so the fsync costs little).

The schema, its migrations and the checks made when a file is opened are :mod:`stream.storeschema`:
a file that is not a SQLite database, is damaged, holds tables of some other program or comes from a
newer vidnarrate is a :class:`~stream.errors.StoreError` naming it and the reason, never recreated or
changed. Text is indexed by an FTS5 table over ``messages.text``
(external content, kept in sync by triggers) and ranked by bm25; thumbnails are JPEG BLOBs deleted
with their message. ``auto_vacuum=INCREMENTAL`` (set when the file is made) lets :meth:`Store.prune`
give the space of deleted rows back to the file system.

A :class:`Store` is used by one thread at a time (any thread).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from . import messages
from .errors import StoreError, StoreQueryError
from .storequery import any_word_expression, match_expression
from .storeschema import prepare, sqlite_reason

MIB: Final = 1024 * 1024
PRUNE_CHUNK: Final = 2000  # rows deleted per statement
PRUNE_MAX_ROWS: Final = 20_000  # rows deleted per prune() call: bounded work, however much is due
HISTORY_PAGE: Final = 1000
MAX_LIMIT: Final = 10_000
SEARCH_CANDIDATES: Final = 2000  # matches ranked per search, those stored last (see Store.search)


@dataclass(frozen=True)
class Record:
    """One message to keep: ``body`` is its JSON exactly as published on the bus."""

    run_id: str
    message: messages.Caption | messages.Event | messages.Answer | messages.Summary
    body: bytes
    thumbnail: bytes | None = None


@dataclass(frozen=True)
class StoredMessage:
    """A row of the store; ``json`` is the message as published. ``score`` (higher is better, the
    negated bm25) is set on search hits, None in history."""

    id: int
    kind: str
    run_id: str
    stream: str
    seq: int | None
    t_start: float | None
    t_end: float | None
    wall_start: float | None
    wall_end: float
    text: str
    model: str | None
    json: str
    score: float | None = None

    def message(self) -> dict[str, Any]:
        """The stored message as a JSON object (with ``score`` added on a search hit)."""
        data: dict[str, Any] = json.loads(self.json)
        if self.score is not None:
            data["score"] = self.score
        return data


def default_store_path() -> Path:
    """``$XDG_DATA_HOME/vidnarrate/vidnarrate.db``, default ``~/.local/share/vidnarrate/vidnarrate.db``
    (a relative XDG path is ignored, as the XDG spec asks)."""
    base = os.environ.get("XDG_DATA_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".local" / "share"
    return root / "vidnarrate" / "vidnarrate.db"


_COLUMNS: Final = "id, kind, run_id, stream, seq, t_start, t_end, wall_start, wall_end, text, model, json"


class Store:
    """An open store. Make one with :meth:`open`; :meth:`close` it when done."""

    def __init__(self, path: Path, connection: sqlite3.Connection, *, readonly: bool) -> None:
        self.path = path
        self.readonly = readonly
        self._db = connection

    # -- opening ------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path, *, readonly: bool = False) -> Store:
        """Open (or, unless ``readonly``, create) the store at ``path``, upgrading an older schema.

        Refuses with :class:`StoreError`, changing nothing: a missing file when ``readonly``, a file
        that is not a SQLite database or is damaged, one with tables of another program, one from a
        newer vidnarrate."""
        path = Path(path)
        if readonly:
            if not path.is_file():
                raise StoreError(f"store {path}: no such file (nothing has been recorded there)")
            uri = "file:" + urllib.parse.quote(str(path.absolute())) + "?mode=ro"
            connect: tuple[str, bool] = (uri, True)
        else:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"store {path}: cannot create its folder {path.parent} ({exc.strerror or exc})"
                ) from None
            if path.is_dir():
                raise StoreError(f"store {path}: is a folder, not a file")
            connect = (str(path), False)
        try:
            db = sqlite3.connect(
                connect[0], uri=connect[1], timeout=10.0, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(f"store {path}: cannot open it: {sqlite_reason(exc)}") from None
        store = cls(path, db, readonly=readonly)
        try:
            prepare(db, path, readonly=readonly)
        except BaseException:
            db.close()
            raise
        return store

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- writing ------------------------------------------------------------------------------

    def add(self, records: Sequence[Record]) -> None:
        """Keep ``records`` in one transaction, committed (and fsynced) when this returns. A caption
        already stored (same run, stream and seq) is skipped, with its thumbnail."""
        if not records:
            return
        stored_at = time.time()
        rows = [(_row(r, stored_at), r.thumbnail) for r in records]
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cursor = self._db.cursor()
                for row, thumbnail in rows:
                    cursor.execute(
                        "INSERT OR IGNORE INTO messages(kind, run_id, stream, seq, t_start, t_end, "
                        "wall_start, wall_end, text, model, json) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                        row,
                    )
                    if thumbnail is not None and cursor.rowcount == 1:
                        cursor.execute(
                            "INSERT INTO thumbnails(message_id, jpeg) VALUES (?, ?)",
                            (cursor.lastrowid, thumbnail),
                        )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(
                f"store {self.path}: cannot write {len(records)} messages: {sqlite_reason(exc)}"
            ) from None

    def prune(
        self, *, now: float, retention_days: float, max_mb: float, max_rows: int = PRUNE_MAX_ROWS
    ) -> int:
        """Delete messages older than ``retention_days``, then the oldest while the data is over
        ``max_mb`` MiB; at most ``max_rows`` per call (call again while it returns that many). The
        freed pages are given back to the file system (incremental vacuum). Returns the rows deleted."""
        cutoff = now - retention_days * 86400.0
        deleted = 0
        try:
            while deleted < max_rows:
                chunk = min(PRUNE_CHUNK, max_rows - deleted)
                cursor = self._db.execute(
                    "DELETE FROM messages WHERE id IN "
                    "(SELECT id FROM messages WHERE wall_end < ? ORDER BY wall_end LIMIT ?)",
                    (cutoff, chunk),
                )
                deleted += cursor.rowcount
                if cursor.rowcount < chunk:
                    break
            while deleted < max_rows and self._used_mb() > max_mb:
                chunk = min(PRUNE_CHUNK, max_rows - deleted)
                cursor = self._db.execute(
                    "DELETE FROM messages WHERE id IN (SELECT id FROM messages ORDER BY wall_end LIMIT ?)",
                    (chunk,),
                )
                deleted += cursor.rowcount
                if cursor.rowcount == 0:
                    break
            if deleted:
                # execute() would run it one step, freeing one page; executescript() runs it to the end.
                self._db.executescript("PRAGMA incremental_vacuum")
        except sqlite3.Error as exc:
            raise StoreError(f"store {self.path}: cannot delete old messages: {sqlite_reason(exc)}") from None
        return deleted

    def _used_mb(self) -> float:
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        size = self._db.execute("PRAGMA page_size").fetchone()[0]
        return float((pages - free) * size) / MIB

    def size_mb(self) -> float:
        """The database's size in MiB (the file's, once its WAL is checkpointed)."""
        try:
            pages = self._db.execute("PRAGMA page_count").fetchone()[0]
            size = self._db.execute("PRAGMA page_size").fetchone()[0]
        except sqlite3.Error as exc:
            raise StoreError(f"store {self.path}: cannot read it: {sqlite_reason(exc)}") from None
        return float(pages * size) / MIB

    # -- reading ------------------------------------------------------------------------------

    def search(
        self,
        query: str,
        streams: Sequence[str] | None = None,
        wall_from: float | None = None,
        wall_to: float | None = None,
        limit: int = 20,
        *,
        kinds: Sequence[str] | None = None,
        any_word: bool = False,
    ) -> list[StoredMessage]:
        """Messages whose text matches ``query`` (see :mod:`stream.storequery`), best bm25 score
        first, the newest first among equal scores; only of ``streams``, of ``kinds`` (``caption``,
        ``event``, ``answer``, ``summary``) and ending within ``[wall_from, wall_to]`` when given.
        ``any_word``: any of the query's words may match (a question's words), not all.
        :class:`~stream.errors.StoreQueryError` for a query that cannot be searched.

        Ranked are the :data:`SEARCH_CANDIDATES` matching messages (that pass the filters) stored
        last: ranking every caption of a year that says "door" would take seconds; narrowing the
        streams or the span reaches further back."""
        expression = any_word_expression(query) if any_word else match_expression(query)
        limit = _checked_limit(limit)
        where, params = _filters(streams, wall_from, wall_to)
        if kinds is not None:
            where.append(f"m.kind IN ({', '.join('?' * len(kinds))})" if kinds else "0")
            params.extend(kinds)
        if wall_from is not None or wall_to is not None:
            # The ids of the span's rows bound the text index's scan (ids grow with insertion, so
            # this skips the rest of the year), read from the covering (stream, wall_end) index.
            low, high = self._fetch(
                f"SELECT min(id), max(id) FROM messages m WHERE {' AND '.join(where)}", tuple(params)
            )[0]
            if low is None:
                return []
            where.append("f.rowid BETWEEN ? AND ?")
            params.extend((low, high))
        # CROSS JOIN keeps the text index as the outer loop, read from the last id down until enough
        # rows matched.
        sql = (
            f"SELECT {_prefixed('m.')}, -c.rank FROM ("
            "SELECT f.rowid AS id, f.rank AS rank "
            "FROM messages_fts f CROSS JOIN messages m ON m.id = f.rowid "
            f"WHERE messages_fts MATCH ?{''.join(' AND ' + w for w in where)} "
            "ORDER BY f.rowid DESC LIMIT ?"
            ") c CROSS JOIN messages m ON m.id = c.id ORDER BY c.rank, m.wall_end DESC LIMIT ?"
        )
        return self._query(sql, (expression, *params, SEARCH_CANDIDATES, limit))

    def history(
        self,
        stream: str,
        wall_from: float | None = None,
        wall_to: float | None = None,
        limit: int | None = 1000,
    ) -> list[StoredMessage]:
        """The captions of ``stream`` ending within ``[wall_from, wall_to]``, in time order (at most
        ``limit``, the earliest; None: all)."""
        found: list[StoredMessage] = []
        for message in self.iter_history(stream, wall_from, wall_to):
            if limit is not None and len(found) >= limit:
                break
            found.append(message)
        return found

    def iter_history(
        self, stream: str, wall_from: float | None = None, wall_to: float | None = None
    ) -> Iterator[StoredMessage]:
        """:meth:`history` without a limit, read a page at a time (an export of a year stays small)."""
        where, params = _filters([stream], wall_from, wall_to)
        after: tuple[float, int] = (float("-inf"), -1)
        while True:
            page = self._query(
                f"SELECT {_COLUMNS}, NULL FROM messages m WHERE kind = 'caption' AND "
                + " AND ".join(where)
                + " AND (wall_end, id) > (?, ?) ORDER BY wall_end, id LIMIT ?",
                (*params, *after, HISTORY_PAGE),
            )
            yield from page
            if len(page) < HISTORY_PAGE:
                return
            after = (page[-1].wall_end, page[-1].id)

    def iter_events(
        self,
        streams: Sequence[str] | None = None,
        wall_from: float | None = None,
        wall_to: float | None = None,
    ) -> Iterator[StoredMessage]:
        """The ``event`` messages of ``streams`` ending within ``[wall_from, wall_to]``, newest first,
        read a page at a time."""
        where, params = _filters(streams, wall_from, wall_to)
        before: tuple[float, int] = (float("inf"), 2**63 - 1)
        while True:
            page = self._query(
                f"SELECT {_COLUMNS}, NULL FROM messages m WHERE kind = 'event'"
                + "".join(" AND " + w for w in where)
                + " AND (wall_end, id) < (?, ?) ORDER BY wall_end DESC, id DESC LIMIT ?",
                (*params, *before, HISTORY_PAGE),
            )
            yield from page
            if len(page) < HISTORY_PAGE:
                return
            before = (page[-1].wall_end, page[-1].id)

    def newest_captions(
        self, stream: str, wall_from: float | None = None, wall_to: float | None = None, limit: int = 100
    ) -> list[StoredMessage]:
        """The last ``limit`` captions of ``stream`` ending within ``[wall_from, wall_to]``, newest first."""
        where, params = _filters([stream], wall_from, wall_to)
        return self._query(
            f"SELECT {_COLUMNS}, NULL FROM messages m WHERE kind = 'caption' AND "
            + " AND ".join(where)
            + " ORDER BY wall_end DESC, id DESC LIMIT ?",
            (*params, _checked_limit(limit)),
        )

    def count_captions(
        self, stream: str, wall_from: float | None = None, wall_to: float | None = None
    ) -> int:
        """How many captions of ``stream`` end within ``[wall_from, wall_to]``."""
        where, params = _filters([stream], wall_from, wall_to)
        sql = "SELECT count(*) FROM messages m WHERE kind = 'caption' AND " + " AND ".join(where)
        return int(self._fetch(sql, tuple(params))[0][0])

    def has_stream(self, stream: str) -> bool:
        """Whether anything of ``stream`` is stored."""
        row = self._fetch("SELECT 1 FROM messages WHERE stream = ? LIMIT 1", (stream,))
        return bool(row)

    def streams(self) -> list[str]:
        """Every stream with something stored, sorted."""
        return [name for (name,) in self._fetch("SELECT DISTINCT stream FROM messages ORDER BY stream", ())]

    def recent(
        self, streams: Sequence[str] | None, limit: int, *, max_streams: int = 256
    ) -> list[StoredMessage]:
        """The last ``limit`` captions of each of ``streams`` (None: of the ``max_streams`` streams
        that captioned last), oldest first per stream: what a replay resends after a restart."""
        if streams is None:
            # A skip scan of the (stream, wall_end) index: one seek per stream, not a scan of every row.
            names = [
                name
                for (name,) in self._fetch(
                    "WITH RECURSIVE s(name) AS (SELECT min(stream) FROM messages UNION ALL "
                    "SELECT (SELECT min(stream) FROM messages WHERE stream > s.name) FROM s "
                    "WHERE s.name IS NOT NULL) SELECT name FROM s WHERE name IS NOT NULL",
                    (),
                )
            ]
        else:
            names = list(dict.fromkeys(streams))
        per_stream = [
            self._query(
                f"SELECT {_COLUMNS}, NULL FROM messages m WHERE stream = ? AND kind = 'caption' "
                "ORDER BY wall_end DESC, id DESC LIMIT ?",
                (name, limit),
            )[::-1]
            for name in names
        ]
        per_stream = [rows for rows in per_stream if rows]
        per_stream.sort(key=lambda rows: rows[-1].wall_end, reverse=True)
        return [row for rows in per_stream[:max_streams] for row in rows]

    def thumbnail(self, message_id: int) -> bytes | None:
        """The JPEG kept with a message, if any."""
        rows = self._fetch("SELECT jpeg FROM thumbnails WHERE message_id = ?", (message_id,))
        return bytes(rows[0][0]) if rows else None

    def count(self) -> int:
        return int(self._fetch("SELECT count(*) FROM messages", ())[0][0])

    def _fetch(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"store {self.path}: cannot read it: {sqlite_reason(exc)}") from None

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[StoredMessage]:
        return [StoredMessage(*row) for row in self._fetch(sql, params)]


def _row(record: Record, stored_at: float) -> tuple[Any, ...]:
    m = record.message
    body = record.body.decode("utf-8")
    if isinstance(m, messages.Caption):
        return ("caption", record.run_id, m.stream, m.seq, m.t_start, m.t_end, m.wall_start, m.wall_end,
                m.text, m.model, body)  # fmt: skip
    if isinstance(m, messages.Event):
        return ("event", record.run_id, m.stream, None, m.t_start, m.t_end, m.wall_start, m.wall_end,
                m.text, None, body)  # fmt: skip
    if isinstance(m, messages.Answer):
        return ("answer", record.run_id, m.stream, None, m.t_start, m.t_end, None, stored_at, m.text, None,
                body)  # fmt: skip
    if isinstance(m, messages.Summary):
        return ("summary", record.run_id, m.stream, None, m.t_start, m.t_end, m.wall_start, m.wall_end,
                m.text, None, body)  # fmt: skip
    raise TypeError(f"the store keeps captions, events, answers and summaries, not {type(m).__name__}")


def _prefixed(prefix: str) -> str:
    return ", ".join(prefix + name.strip() for name in _COLUMNS.split(","))


def _filters(
    streams: Sequence[str] | None, wall_from: float | None, wall_to: float | None
) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    if streams is not None:
        names = list(dict.fromkeys(streams))
        where.append(f"m.stream IN ({', '.join('?' * len(names))})" if names else "0")
        params.extend(names)
    if wall_from is not None:
        where.append("m.wall_end >= ?")
        params.append(wall_from)
    if wall_to is not None:
        where.append("m.wall_end <= ?")
        params.append(wall_to)
    return where, params


def _checked_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise StoreQueryError(f"search limit {limit}: must be from 1 to {MAX_LIMIT}")
    return limit
