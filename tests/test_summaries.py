"""The summary core: chunking by the token budget, the hierarchy, times kept, empty spans; with a
scripted chat function (the model's place) and a word-counting tokenizer."""

from __future__ import annotations

import re

import pytest

from stream.summaries import (
    TEMPLATE_TOKENS,
    SpanSummary,
    SummaryPrompts,
    Timed,
    TimeLabels,
    clock,
    summarize,
    token_counter,
)

PROMPTS = SummaryPrompts(chunk="CHUNK\n{items}\nsummarise", combine="COMBINE\n{items}\nmerge")


def words(text: str) -> int:
    """A tokenizer for tests: one token per word (and per time label)."""
    return len(text.split())


def caption(i: int, text: str | None = None) -> Timed:
    return Timed(
        t_start=i * 4.0,
        t_end=i * 4.0 + 8,
        wall_start=1000.0 + i * 4,
        wall_end=1008.0 + i * 4,
        text=text or f"caption {i} " + "word " * 8,
    )


class Scripted:
    """The model's place: answers each prompt with a fixed-size text naming what it saw."""

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        kind = prompt.split("\n", 1)[0]
        times = re.findall(r"^\[([^\]]+)\]", prompt, flags=re.MULTILINE)
        return f"{kind.lower()} of {len(times)} from {times[0]} to {times[-1]}"


def run(count: int, budget: int) -> tuple[Scripted, SpanSummary, object]:
    chat = Scripted()
    summary = SpanSummary(PROMPTS, words, budget, labels=TimeLabels.STREAM)
    result = summarize((caption(i) for i in range(count)), summary, chat)
    return chat, summary, result


def test_a_few_captions_are_one_chunk_summarised_once_with_their_times() -> None:
    chat, summary, result = run(3, budget=TEMPLATE_TOKENS + 200)
    assert len(chat.prompts) == 1
    (prompt,) = chat.prompts
    assert prompt.startswith("CHUNK\n[0:00:00-0:00:08] caption 0 word") and prompt.endswith("\nsummarise")
    assert "[0:00:08-0:00:16] caption 2" in prompt
    final = summary.result
    assert final is not None and final.text == "chunk of 3 from 0:00:00-0:00:08 to 0:00:08-0:00:16"
    assert (final.t_start, final.t_end, final.wall_start, final.wall_end) == (0.0, 16.0, 1000.0, 1016.0)
    assert final.captions == 3 and summary.requests == 1


def test_chunks_fit_the_budget_and_their_summaries_are_summarised_with_their_spans() -> None:
    budget = TEMPLATE_TOKENS + 46  # 11 tokens a caption line, 44 for lines: 4 captions a chunk
    chat, summary, run_ = run(20, budget=budget)
    chunks = [p for p in chat.prompts if p.startswith("CHUNK")]
    combines = [p for p in chat.prompts if p.startswith("COMBINE")]
    assert len(chunks) == 5 and all(words(p) <= budget - TEMPLATE_TOKENS for p in chat.prompts)
    assert [len(re.findall(r"^\[", p, flags=re.MULTILINE)) for p in chunks] == [4, 4, 4, 4, 4]
    # The parts' summaries go up with their spans as times: all 5 parts are in some combine.
    assert combines and "[0:00:00-0:00:20] chunk of 4" in combines[0]
    final = summary.result
    assert final is not None and final.captions == 20
    assert (final.t_start, final.t_end) == (0.0, 19 * 4.0 + 8)
    assert final.text.startswith("combine of")
    assert run_.parts[0].t_end == 20.0 and len(run_.parts) == 5  # type: ignore[attr-defined]
    assert summary.requests == len(chat.prompts)


def test_the_hierarchy_has_as_many_levels_as_the_budget_needs() -> None:
    chat, summary, _ = run(200, budget=TEMPLATE_TOKENS + 60)
    levels = {p.split("\n", 1)[0] for p in chat.prompts}
    assert levels == {"CHUNK", "COMBINE"}
    combines = [p for p in chat.prompts if p.startswith("COMBINE")]
    # 50 chunks; each combine takes what fits (summaries are ~8 words): several levels of them.
    assert len(combines) > 5
    assert summary.result is not None and summary.result.captions == 200
    assert summary.result.t_start == 0.0 and summary.result.t_end == 199 * 4.0 + 8
    assert chat.prompts[-1].startswith("COMBINE")


def test_a_caption_longer_than_a_chunk_is_cut_so_that_two_always_fit() -> None:
    budget = TEMPLATE_TOKENS + 60
    chat = Scripted()
    summary = SpanSummary(PROMPTS, words, budget, labels=TimeLabels.STREAM)
    summarize([caption(0, "long " * 500), caption(1), caption(2, "long " * 500)], summary, chat)
    assert all(words(p) <= budget - TEMPLATE_TOKENS for p in chat.prompts)
    assert "] long long long" in chat.prompts[0] and " long ...\n" in chat.prompts[0]
    assert summary.result is not None and summary.result.captions == 3


def test_repeated_captions_of_an_unchanged_scene_are_one_line_with_the_whole_span() -> None:
    chat = Scripted()
    summary = SpanSummary(PROMPTS, words, 1000, labels=TimeLabels.STREAM)
    same = [caption(i, "the door is closed") for i in range(5)]
    summarize([*same, caption(5, "a man opens the door")], summary, chat)
    (prompt,) = chat.prompts
    assert "[0:00:00-0:00:24] the door is closed\n[0:00:20-0:00:28] a man opens the door" in prompt
    assert summary.result is not None and summary.result.captions == 6


def test_wall_clock_labels_are_local_times(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    import time

    time.tzset()
    chat = Scripted()
    summary = SpanSummary(PROMPTS, words, 1000, labels=TimeLabels.WALL)
    summarize([Timed(0, 4, 7200.0, 7204.0, "x"), Timed(4, 8, 7204.0, 7204.0, "y")], summary, chat)
    assert "[02:00:00-02:00:04] x\n[02:00:04] y" in chat.prompts[0]
    day = SpanSummary(PROMPTS, words, 1000, labels=TimeLabels.WALL, day=True)
    summarize([Timed(0, 4, 7200.0, 7204.0, "x")], day, Scripted())
    assert day.result is not None


def test_an_empty_span_is_empty_not_a_summary() -> None:
    chat, summary, result = run(0, budget=500)
    assert chat.prompts == [] and summary.empty and summary.done and summary.result is None
    assert result.result is None  # type: ignore[attr-defined]


def test_requests_can_be_answered_one_at_a_time_between_other_work() -> None:
    """The live shape: requests are handed out one by one (captions run in between)."""
    summary = SpanSummary(PROMPTS, words, TEMPLATE_TOKENS + 60, labels=TimeLabels.STREAM)
    for i in range(12):
        summary.add(caption(i))
    summary.finish()
    chat = Scripted()
    turns = 0
    while not summary.done:
        request = summary.next_request()
        assert request is not None, "a finished summary always has a request out or a result"
        summary.answered(request, chat(request.prompt))
        turns += 1
    assert summary.result is not None and summary.result.captions == 12 and turns == summary.requests
    with pytest.raises(RuntimeError):
        summary.answered(request, "again")


def test_a_budget_too_small_for_the_prompt_is_refused() -> None:
    with pytest.raises(ValueError, match="no room for captions"):
        SpanSummary(PROMPTS, words, TEMPLATE_TOKENS + 10)


def test_the_presets_exist_and_the_estimate_counts_without_a_tokenizer() -> None:
    for name in ("narration", "cctv", "screen"):
        preset = SummaryPrompts.preset(name)
        assert "{items}" in preset.chunk and "{items}" in preset.combine
    assert "numbered list" in SummaryPrompts.preset("screen").chunk
    with pytest.raises(KeyError, match="no summary preset 'tv'"):
        SummaryPrompts.preset("tv")
    assert token_counter(object())("x" * 30) == 10
    assert clock(3725) == "1:02:05"
