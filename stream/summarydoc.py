"""A summary document: captions (stored, or just made by ``caption``) through the model into Markdown.

The shell of :mod:`stream.summaries` for the ``summarize`` and ``caption --summary`` commands: it
runs the hierarchical summary with ``backend.chat``, shows a progress bar (captions read, model calls
made), and renders one section per stream: the summary of the whole span, then, when the span needed
more than one chunk, the summary of each part with its time span.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .config import Config, summary_preset
from .errors import ConfigError
from .store import Store
from .storequery import Span
from .summaries import (
    SpanSummary,
    SummaryPrompts,
    SummaryRun,
    Timed,
    TimeLabels,
    spans_days,
    summarize,
    time_label,
    token_counter,
    wall_clock,
)

if TYPE_CHECKING:
    from model.backends import CaptionBackend


@dataclass(frozen=True)
class Section:
    """One stream's part of the document."""

    title: str
    run: SummaryRun
    labels: TimeLabels
    day: bool


class SummaryMaker:
    """Summarises spans of captions with one loaded backend, as ``config`` says."""

    def __init__(self, backend: CaptionBackend, config: Config, *, progress: bool = True) -> None:
        self.backend = backend
        self.config = config
        self.progress = progress
        self.count_tokens = token_counter(backend)

    def run(
        self,
        title: str,
        captions: Iterable[Timed],
        *,
        total: int | None,
        labels: TimeLabels,
        stream: str | None = None,
        day: bool = False,
    ) -> Section:
        """The summary of ``captions`` (oldest first; ``total`` of them, for the progress bar)."""
        prompts = SummaryPrompts.preset(summary_preset(self.config, stream))
        summary = SpanSummary(
            prompts, self.count_tokens, self.config.model.max_inp_length, labels=labels, day=day
        )
        max_new_tokens = self.config.summaries.max_new_tokens

        def chat(prompt: str) -> str:
            return self.backend.chat(
                prompt, max_new_tokens=max_new_tokens, decoding=self.config.captions.decoding
            )

        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="captions", desc=title, leave=True)

        def progress(read: int, turns: int) -> None:
            if bar is not None:
                bar.update(read - bar.n)
                bar.set_postfix_str(f"{turns} model calls", refresh=False)

        try:
            run = summarize(captions, summary, chat, progress=progress)
        finally:
            if bar is not None:
                bar.close()
        return Section(title, run, labels, day)


def render(sections: Iterable[Section], *, model: str) -> str:
    """The Markdown document of ``sections``."""
    out: list[str] = []
    for section in sections:
        run = section.run
        result = run.result
        if result is None:
            out.append(f"# {section.title}\n\nNo captions in this span: nothing to summarise.\n")
            continue
        span = time_label(result, section.labels, day=section.day)
        out.append(f"# {section.title}, {span}\n\n{result.text.strip()}\n")
        if len(run.parts) > 1:
            out.append("## Parts\n")
            for part in run.parts:
                out.append(
                    f"### {time_label(part, section.labels, day=section.day)}\n\n{part.text.strip()}\n"
                )
        out.append(
            f"_{run.captions} captions summarised in {run.requests} model calls "
            f"({len(run.parts)} parts) by {model}._\n"
        )
    return "\n".join(out)


def stored_sections(
    store: Store, counts: Mapping[str, int], span: Span, maker: SummaryMaker
) -> list[Section]:
    """A section per stream of ``counts`` (stream -> its captions in ``span``), read from ``store``
    page by page, with local wall-clock times (dated when the span is not of one day)."""
    sections = []
    for name, count in counts.items():
        first = store.history(name, span.wall_from, span.wall_to, limit=1)
        last = store.newest_captions(name, span.wall_from, span.wall_to, limit=1)
        day = bool(first and last) and spans_days(first[0].wall_end, last[0].wall_end)
        stored = (json.loads(m.json) for m in store.iter_history(name, span.wall_from, span.wall_to))
        sections.append(
            maker.run(name, captions_of(stored), total=count, labels=TimeLabels.WALL, stream=name, day=day)
        )
    return sections


def span_words(span: Span) -> str:
    """``the span from 2026-12-06 14:00:00 to now``: a span in words, local time."""
    start = "the beginning" if span.wall_from is None else wall_clock(span.wall_from, day=True)
    end = "now" if span.wall_to is None else wall_clock(span.wall_to, day=True)
    return f"the span from {start} to {end}"


def check_summary_path(path: Path, others: Iterable[Path] = ()) -> None:
    """Refuse, before a model is loaded, a summary file that cannot be written or would overwrite
    one of the caption outputs."""
    if path.is_dir():
        raise ConfigError(f"summary {path}: is a folder, not a file")
    if not path.parent.exists():
        raise ConfigError(f"summary {path}: its folder {path.parent} does not exist")
    if any(path.resolve() == other.resolve() for other in others):
        raise ConfigError(f"summary {path}: is also a caption output; give the summary its own file")


def write_text(path: Path, text: str) -> None:
    """Write ``text`` whole or not at all (a file interrupted half-way is never left behind)."""
    folder = path.parent if str(path.parent) else Path(".")
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def captions_of(messages: Iterable[dict[str, object]]) -> Iterator[Timed]:
    """Timed items of caption messages (as published or stored)."""
    for message in messages:
        yield Timed.of_caption(message)
