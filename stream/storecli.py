"""The store commands of ``vidnarrate``: ``search``, ``export`` and ``summarize`` (``events`` is
:mod:`stream.eventlist`), and what they share: which store a command reads, opened read-only, the
``--since`` / ``--from`` / ``--to`` span, and the check that each ``--stream`` was stored.

An unreadable or missing store is a :class:`~stream.errors.ConfigError` (exit 2, like a bad ``--store``
for ``run``); an empty span is one line on stderr and exit 1, nothing written.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import Config, apply_overrides, is_remote_model, load_config
from .errors import ConfigError, StoreError
from .preflight import check_model_available, connect_remote_server
from .process import ExitCode


def add_store_commands(commands: Any) -> None:
    search = commands.add_parser("search", help="find stored captions, events and answers by their words")
    search.add_argument(
        "query", help='words that must all occur; "quoted phrases" in that order; word* for prefixes'
    )
    search.add_argument("--limit", type=int, default=20, metavar="N", help="at most N results (default 20)")
    search.add_argument("--json", action="store_true", help="JSON lines: each stored message plus its score")
    export = commands.add_parser("export", help="write a stream's stored captions as JSON Lines or subtitles")
    export.add_argument(
        "--out",
        action="append",
        type=Path,
        required=True,
        metavar="FILE.jsonl|.vtt|.srt",
        help="where to write the captions (repeatable)",
    )
    summarize = commands.add_parser(
        "summarize", help="summarise a span of stored captions with the model (Markdown, with times)"
    )
    summarize.add_argument("--out", type=Path, metavar="FILE.md", help="write here (default: print it)")
    summarize.add_argument("--model", help="hub id, checkpoint folder, or 'tiny'")
    summarize.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    summarize.add_argument("--prompt", help="summary preset: narration, cctv, screen (a step list)")
    summarize.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE"
    )
    summarize.add_argument(
        "--no-progress", dest="progress", action="store_false", help="do not show the progress bar"
    )
    for command in (search, export, summarize):
        command.add_argument(
            "--stream",
            action="append",
            required=command is export,
            metavar="NAME",
            help="the stream to export" if command is export else "only this stream (repeatable)",
        )
        command.add_argument("--since", metavar="DURATION", help="the last 45s, 30m, 2h, 1d, 1h30m ...")
        command.add_argument(
            "--from", dest="wall_from", metavar="TIME", help="ISO 8601 or HH:MM today (local)"
        )
        command.add_argument("--to", dest="wall_to", metavar="TIME", help="ISO 8601 or HH:MM today (local)")
        command.add_argument("--store", type=Path, metavar="PATH", help="the store (default: store.path)")
        command.add_argument("--config", type=Path, help="a TOML file with the settings to change")
        command.set_defaults(log_level="WARNING")


def store_path(args: argparse.Namespace, config: Config) -> Path:
    """``--store``, else the config's ``store.path`` when set, else the default store."""
    from .store import default_store_path

    if getattr(args, "store", None) is not None:
        return Path(args.store).expanduser()
    configured = getattr(getattr(config, "store", None), "path", "")
    return Path(configured).expanduser() if configured else default_store_path()


def open_store_for_reading(args: argparse.Namespace) -> Any:
    from .store import Store

    path = store_path(args, load_config(args.config))
    if not path.exists():
        raise ConfigError(
            f"store {path}: no such file (nothing recorded there yet; --store PATH names another)"
        )
    try:
        return Store.open(path, readonly=True)
    except StoreError as exc:  # a store that cannot be read is a bad --store, as for `run`: exit 2
        raise ConfigError(str(exc)) from None


def span_of(args: argparse.Namespace) -> Any:
    from .storequery import parse_span

    return parse_span(since=args.since, wall_from=args.wall_from, wall_to=args.wall_to, now=time.time())


def check_streams(store: Any, names: Sequence[str]) -> None:
    unknown = [name for name in names if not store.has_stream(name)]
    if unknown:
        known = ", ".join(store.streams()) or "none"
        raise ConfigError(f"--stream {unknown[0]}: nothing of that stream is stored (streams: {known})")


def cmd_search(args: argparse.Namespace) -> int:
    import json

    from .storequery import match_expression

    match_expression(args.query)  # a bad query is refused before the store is opened
    span = span_of(args)
    with open_store_for_reading(args) as store:
        if args.stream:
            check_streams(store, args.stream)
        hits = store.search(args.query, args.stream, span.wall_from, span.wall_to, limit=args.limit)
    for hit in hits:
        if args.json:
            print(json.dumps(hit.message(), ensure_ascii=False))
        else:
            print(_search_line(hit))
    if not hits:
        print(f"vidnarrate: nothing stored matches {args.query!r}", file=sys.stderr)
    return ExitCode.OK


def _search_line(hit: Any) -> str:
    wall = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(hit.wall_end))
    span = "-" if hit.t_start is None or hit.t_end is None else f"{clock(hit.t_start)}-{clock(hit.t_end)}"
    text = " ".join(hit.text.split())
    return f"{wall}  {hit.stream}  {span}  {text}" + ("" if hit.kind == "caption" else f"  [{hit.kind}]")


def clock(seconds: float) -> str:
    """Stream time as ``H:MM:SS`` (hours grow past 24 on long runs)."""
    minutes, secs = divmod(max(0, round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def cmd_export(args: argparse.Namespace) -> int:
    import json

    from .exports import check_outputs, open_writer

    check_outputs(args.out)
    if len(args.stream) != 1:
        raise ConfigError("export: give one --stream (each stream has its own stream times)")
    (stream,) = args.stream
    span = span_of(args)
    with open_store_for_reading(args) as store:
        check_streams(store, [stream])
        captions = store.iter_history(stream, span.wall_from, span.wall_to)
        first = next(captions, None)
        if first is None:
            print(f"vidnarrate: no captions of {stream} in that span; nothing written", file=sys.stderr)
            return ExitCode.FAILED
        writers = [open_writer(path) for path in args.out]
        count = 0
        try:
            for stored in itertools.chain([first], captions):
                message = json.loads(stored.json)
                for writer in writers:
                    writer.write(message)
                count += 1
        finally:
            for writer in writers:
                writer.close()
    print(f"vidnarrate: {count} captions of {stream} -> " + ", ".join(str(p) for p in args.out), flush=True)
    return ExitCode.OK


def cmd_summarize(args: argparse.Namespace) -> int:
    from .summarydoc import SummaryMaker, check_summary_path, render, span_words, stored_sections, write_text

    flags = {"model.name": args.model, "model.device": args.device, "summaries.prompt": args.prompt}
    config = apply_overrides(load_config(args.config), {k: v for k, v in flags.items() if v}, "command line")
    config = apply_overrides(config, args.overrides, "--set")
    span = span_of(args)
    if args.out is not None:
        check_summary_path(args.out)
    with open_store_for_reading(args) as store:
        streams = args.stream or store.streams()
        check_streams(store, streams)
        counts = {name: store.count_captions(name, span.wall_from, span.wall_to) for name in streams}
        if not any(counts.values()):
            print(
                f"vidnarrate: no captions of {', '.join(streams) or 'any stream'} in {span_words(span)}: "
                "nothing to summarise",
                file=sys.stderr,
            )
            return ExitCode.FAILED
        maker = SummaryMaker(open_backend(config), config, progress=args.progress)
        sections = stored_sections(store, counts, span, maker)
    document = render(sections, model=config.model.name)
    if args.out is None:
        print(document, end="")
    else:
        write_text(args.out, document)
        print(f"vidnarrate: summary of {', '.join(counts)} -> {args.out}", flush=True)
    return ExitCode.OK


def open_backend(config: Config) -> Any:
    """The model of ``caption`` and ``summarize``: a server's (``--model URL``, asked for its models
    now), else the local one, checked before it loads; either way a ConfigError in one line."""
    if is_remote_model(config.model.name):
        return connect_remote_server(config)
    check_model_available(config.model.name, config.model.device)
    from model.backends import load_backend

    device = None if config.model.device == "auto" else config.model.device
    dtype = None if config.model.dtype == "auto" else config.model.dtype
    return load_backend(
        config.model.name, device=device, dtype=dtype, max_inp_length=config.model.max_inp_length
    )
