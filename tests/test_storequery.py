"""Search queries and spans as a user types them (no I/O; FTS5 itself checks the expressions)."""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream.errors import ConfigError, StoreQueryError
from stream.storequery import (
    MAX_QUERY_CHARS,
    Span,
    match_expression,
    parse_duration,
    parse_span,
    parse_time,
)

PLUS2 = timezone(timedelta(hours=2))
NOW = datetime(2026, 12, 6, 15, 30, 0, tzinfo=UTC).timestamp()


def test_words_and_together_and_quoted_phrases_stay_phrases() -> None:
    assert match_expression("red coat") == '"red" AND "coat"'
    assert match_expression('man "red coat" door') == '"man" AND "red coat" AND "door"'
    assert match_expression("ope* door") == '"ope"* AND "door"'


def test_fts5_syntax_is_searched_as_words_never_parsed() -> None:
    assert match_expression("NOT door OR NEAR(a b)") == '"NOT" AND "door" AND "OR" AND "NEAR(a" AND "b)"'
    assert match_expression("text:door ^start don't") == '"text:door" AND "^start" AND "don\'t"'
    assert match_expression('a "" * - b') == '"a" AND "b"'  # nothing to index is left out
    assert match_expression("door\x00x") == '"door" AND "x"'  # a NUL would end an FTS5 string


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ('"red coat', "a quote is not closed"),
        ("", "no words to search for"),
        ("* -- ()", "no words to search for"),
        ("x" * (MAX_QUERY_CHARS + 1), f"{MAX_QUERY_CHARS + 1} characters; the limit is {MAX_QUERY_CHARS}"),
        (" ".join(["w"] * 65), "65 words and phrases; the limit is 64"),
    ],
)
def test_queries_that_cannot_be_searched_are_refused_naming_them(query: str, reason: str) -> None:
    with pytest.raises(StoreQueryError, match="^search query .*: " + reason.replace("(", r"\(")):
        match_expression(query)


def test_a_huge_query_is_named_shortly() -> None:
    with pytest.raises(StoreQueryError) as caught:
        match_expression("door " * 2_000_000)
    assert len(str(caught.value)) < 200


@given(st.text(max_size=200))
def test_every_accepted_query_is_valid_fts5(query: str) -> None:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE t USING fts5(text, tokenize='porter unicode61 remove_diacritics 2')")
    db.execute("INSERT INTO t VALUES ('a man opens the door')")
    try:
        expression = match_expression(query)
    except StoreQueryError:
        return
    db.execute("SELECT rowid FROM t WHERE t MATCH ?", (expression,)).fetchall()  # never a syntax error


def test_durations() -> None:
    assert parse_duration("45s") == 45
    assert parse_duration("30m") == 1800
    assert parse_duration("2h") == 7200
    assert parse_duration("1d") == 86400
    assert parse_duration("1h30m") == 5400
    assert parse_duration("1.5H") == 5400
    for bad in ("", "2", "h", "2x", "-1h", "0s", "2h and more"):
        with pytest.raises(ConfigError, match=f"--since {bad!r}: "):
            parse_duration(bad)


def test_times_iso_8601_and_hh_mm_today() -> None:
    assert parse_time("14:05", now=NOW, tz=UTC) == datetime(2026, 12, 6, 14, 5, tzinfo=UTC).timestamp()
    assert (
        parse_time("14:05:30", now=NOW, tz=PLUS2)
        == datetime(2026, 12, 6, 14, 5, 30, tzinfo=PLUS2).timestamp()
    )
    # "today" is the local day: at 23:30 UTC it is already Dec 7 in UTC+2.
    late = datetime(2026, 12, 6, 23, 30, tzinfo=UTC).timestamp()
    assert parse_time("01:00", now=late, tz=PLUS2) == datetime(2026, 12, 7, 1, 0, tzinfo=PLUS2).timestamp()
    assert (
        parse_time("2026-12-01T08:00", now=NOW, tz=PLUS2)
        == datetime(2026, 12, 1, 6, 0, tzinfo=UTC).timestamp()
    )
    assert (
        parse_time("2026-12-01T08:00Z", now=NOW, tz=PLUS2)
        == datetime(2026, 12, 1, 8, 0, tzinfo=UTC).timestamp()
    )
    assert (
        parse_time("2026-12-01 08:00:00+01:00", now=NOW)
        == datetime(2026, 12, 1, 7, 0, tzinfo=UTC).timestamp()
    )
    for bad in ("25:00", "12:60", "yesterday", "2026-13-01", "12"):
        with pytest.raises(ConfigError, match=f"--to {bad!r}: not a time"):
            parse_time(bad, now=NOW, tz=UTC, flag="--to")


def test_spans() -> None:
    assert parse_span(since=None, wall_from=None, wall_to=None, now=NOW) == Span(None, None)
    assert parse_span(since="2h", wall_from=None, wall_to=None, now=NOW) == Span(NOW - 7200, None)
    at = datetime(2026, 12, 6, 2, 0, tzinfo=UTC).timestamp()
    assert parse_span(since=None, wall_from="02:00", wall_to="03:00", now=NOW, tz=UTC) == Span(at, at + 3600)
    assert parse_span(since=None, wall_from="02:00", wall_to=None, now=NOW, tz=UTC) == Span(at, None)
    with pytest.raises(ConfigError, match="--from '03:00' is after --to '02:00'"):
        parse_span(since=None, wall_from="03:00", wall_to="02:00", now=NOW, tz=UTC)
    with pytest.raises(ConfigError, match="--since and --from/--to: give one or the other"):
        parse_span(since="1h", wall_from="02:00", wall_to=None, now=NOW)


def test_local_times_take_the_offset_of_their_own_hour_on_a_dst_day(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Europe/Berlin")  # clocks went from 02:00 to 03:00 on 2026-03-29
    time.tzset()
    try:
        noon = datetime(2026, 3, 29, 10, 0, tzinfo=UTC).timestamp()
        assert parse_time("01:30", now=noon) == datetime(2026, 3, 29, 0, 30, tzinfo=UTC).timestamp()  # +1
        assert parse_time("04:30", now=noon) == datetime(2026, 3, 29, 2, 30, tzinfo=UTC).timestamp()  # +2
        assert parse_time("2026-03-29T01:30", now=noon) == parse_time("01:30", now=noon)
    finally:
        monkeypatch.undo()
        time.tzset()
