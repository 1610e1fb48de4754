"""stream/textwork.py through the scheduling core: live summaries every N seconds of stream time,
handed out between captions, and questions over the past answered from the captions their ask
carries (a fake model that records its calls; one token per word)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from stream import messages
from stream.captioning import CaptionSettings
from stream.scheduler import Action, Answer, Caption, Encode, Reply, Scheduler
from stream.textwork import MAX_PENDING_CAPTIONS, AnswerPast, Summarize, TextSettings, TextWork


def words(text: str) -> int:
    return len(text.split())


def make_core(every: float = 8.0, budget: int = 4000) -> Scheduler:
    settings = CaptionSettings(prompt="Describe.", window=4.0, stride=2.0, skip_stale=False, max_new_tokens=8)
    text = TextWork(TextSettings(every=every, preset="cctv", presets={"yard": "screen"}), words, budget)
    core = Scheduler(settings, text=text)
    core.add_stream("door")
    return core


class Drive:
    """Runs every action as the inference process does; the model's text names what it was given."""

    def __init__(self, core: Scheduler) -> None:
        self.core = core
        self.calls: list[Action] = []
        self.out: list[dict[str, Any]] = []
        self.starved = 0  # summary turns handed out right after another while a window was due
        self.after_caption: Callable[[dict[str, Any]], None] | None = None

    def frames(self, stream: str, until: float, *, drain_every: float = 0.2) -> None:
        t = 0.0
        while t <= until:
            seq = round(t * 5)
            if self.core.offer(stream, seq, t, 1000.0 + t):
                self.core.add_pixels(stream, seq, "px")
            if round(t / 0.2) % round(drain_every / 0.2) == 0:
                self.drain()
            t = round(t + 0.2, 3)
        self.drain()

    def drain(self) -> None:
        while (action := self.core.next_action()) is not None:
            previous = next((a for a in reversed(self.calls) if not isinstance(a, Encode)), None)
            if isinstance(action, Summarize) and isinstance(previous, Summarize):
                self.starved += any(stream.due for stream in self.core.streams.values())
            self.calls.append(action)
            if isinstance(action, Encode):
                self.core.encoded(action, ["e"] * len(action.frames), ms=1.0)
            elif isinstance(action, Caption):
                text = f"caption {action.job.t_start:g}-{action.job.t_end:g}"
                self.out.append(self.core.captioned(action, text, model_ms=1.0, wall=2000.0).to_dict())
                if self.after_caption is not None:
                    self.after_caption(self.out[-1])
            elif isinstance(action, Summarize):
                lines = len(re.findall(r"^\[", action.prompt, flags=re.MULTILINE))
                summary = self.core.summarized(action, f"summary of {lines} lines")
                if summary is not None:
                    self.out.append(summary.to_dict())
            elif isinstance(action, Answer):
                self.out.append(self.core.answered(action, "someone").to_dict())
            elif isinstance(action, AnswerPast):
                self.out.append(self.core.past_answered(action, "it was a cat").to_dict())
            elif isinstance(action, Reply):
                self.out.append(action.message.to_dict())

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.out if m["type"] == kind]


def test_a_summary_is_published_every_n_seconds_of_stream_time_over_the_captions_since_the_last() -> None:
    drive = Drive(make_core(every=8.0))
    drive.frames("door", 20.0)
    summaries = drive.of("summary")
    assert [(s["t_start"], s["t_end"]) for s in summaries] == [(0.0, 8.0), (6.0, 16.0)]
    captions = drive.of("caption")
    # The first holds the captions ending by t=8 (0-2 ... 4-8), the second those after it up to 16.
    assert summaries[0]["captions"] == len([c for c in captions if c["t_end"] <= 8.0]) == 4
    assert summaries[1]["captions"] == len([c for c in captions if 8.0 < c["t_end"] <= 16.0]) == 4
    assert summaries[0]["text"] == "summary of 4 lines" and summaries[0]["stream"] == "door"
    assert summaries[0]["wall_start"] == 1000.0 and summaries[0]["wall_end"] == 1008.0
    assert messages.Summary.from_dict(summaries[0]).captions == 4
    prompt = next(a for a in drive.calls if isinstance(a, Summarize)).prompt
    assert "security camera" in prompt, "the stream's preset (cctv) is used"


def test_summary_turns_never_run_twice_in_a_row_while_windows_are_due() -> None:
    # A tiny budget: each summary needs several turns (chunks, then combines).
    core = make_core(every=24.0, budget=64 + 80)
    drive = Drive(core)
    drive.frames("door", 60.0, drain_every=7.0)  # three or four windows come due between drains
    kinds = [type(a).__name__ for a in drive.calls if not isinstance(a, Encode)]
    assert kinds.count("Summarize") >= 6 and len(drive.of("summary")) == 2
    assert drive.starved == 0, kinds
    assert "Summarize Caption Summarize" in " ".join(kinds), "captions go on between summary turns"
    captions = drive.of("caption")
    assert [c["t_end"] for c in captions] == [2.0 * i for i in range(1, 31)], "no window was skipped"


def test_asks_about_now_go_before_a_due_summary() -> None:
    core = make_core(every=4.0)
    drive = Drive(core)

    def ask_while_captioning(caption: dict[str, Any]) -> None:
        if caption["t_end"] == 4.0:  # this caption makes the first summary due; an ask comes meanwhile
            core.submit_ask("q", "door", "who is there?")

    drive.after_caption = ask_while_captioning
    drive.frames("door", 6.0)
    kinds = [type(a).__name__ for a in drive.calls if not isinstance(a, Encode)]
    assert kinds[:4] == ["Caption", "Caption", "Answer", "Summarize"], kinds


def test_an_ended_stream_gets_its_tail_summarised_and_the_core_drains_only_after() -> None:
    core = make_core(every=100.0)
    drive = Drive(core)
    drive.frames("door", 9.0)
    assert drive.of("summary") == []
    core.end_stream("door", 9.2)
    assert not core.drained()
    drive.drain()
    (summary,) = drive.of("summary")
    assert summary["captions"] == len(drive.of("caption")) and summary["t_end"] == pytest.approx(9.2)
    assert core.drained()


def test_summaries_are_off_with_every_0_and_pending_captions_are_bounded() -> None:
    drive = Drive(make_core(every=0.0))
    drive.frames("door", 12.0)
    assert drive.of("summary") == [] and not any(isinstance(a, Summarize) for a in drive.calls)
    work = TextWork(TextSettings(every=10_000.0), words, 4000)
    for seq in range(MAX_PENDING_CAPTIONS + 50):
        work.caption(caption_message(seq))
    assert len(work._pending["door"]) == MAX_PENDING_CAPTIONS


def caption_message(seq: int) -> messages.Caption:
    return messages.Caption(
        stream="door", seq=seq, t_start=seq * 2.0, t_end=seq * 2.0 + 4, frame_times=[seq * 2.0 + 3],
        wall_start=5000.0 + seq * 2, wall_end=5004.0 + seq * 2, text=f"caption {seq}", model="m",
        latency_ms=1.0,
    )  # fmt: skip


def stored(i: int, text: str) -> dict[str, Any]:
    return {
        "t_start": i * 4.0,
        "t_end": i * 4.0 + 8,
        "wall_start": 7000.0 + 60 * i,
        "wall_end": 7008.0 + 60 * i,
        "text": text,
    }


def past_ask(captions: list[dict[str, Any]], **span: float) -> messages.AskRequest:
    return messages.AskRequest(
        id="g-1", stream="door", question="was there a cat?", wall=9000.0, captions=captions, **span
    )


def test_a_question_over_the_past_goes_first_with_the_best_captions_that_fit_in_time_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TZ", "UTC")
    import time

    time.tzset()
    core = make_core(every=0.0, budget=64 + 120)
    drive = Drive(core)
    # Best first (as the gateway ranks them): the two cat captions, then the newest others.
    ranked = [stored(5, "a cat sits on the step"), stored(1, "a cat walks past")]
    ranked += [stored(i, "nothing happens " * 10) for i in (9, 8, 7, 6)]
    core.submit_past_ask(past_ask(ranked, from_=6000.0, to=8000.0))
    drive.frames("door", 4.0)
    assert isinstance(drive.calls[0], AnswerPast), "a person waits: before any caption"
    action = drive.calls[0]
    lines = re.findall(r"^\[(\S+)\] (.*)$", action.prompt, flags=re.MULTILINE)
    # The question's frame has ~40 words: the two cat lines and what else fits, in time order.
    assert [text for _, text in lines][:2] == ["a cat walks past", "a cat sits on the step"]
    assert [label for label, _ in lines] == sorted(label for label, _ in lines)
    assert lines[0][0] == "01:57:40-01:57:48" and "Question: was there a cat?" in action.prompt
    assert words(action.prompt) <= 120
    answer = drive.of("answer")[0]
    assert answer == {
        "type": "answer", "id": "g-1", "stream": "door", "text": "it was a cat",
        "from": 6000.0, "to": 8000.0, "captions": len(lines),
    }  # fmt: skip
    assert 2 <= len(lines) < 6


def test_a_past_ask_without_a_span_end_covers_up_to_when_it_was_asked() -> None:
    work = TextWork(TextSettings(), words, 4000)
    work.submit_past_ask(past_ask([stored(2, "a van"), stored(1, "a bike")]))
    action = work.next_past_ask()
    assert isinstance(action, AnswerPast)
    assert (action.wall_from, action.wall_to, action.captions) == (7060.0, 9000.0, 2)


def test_a_question_too_long_for_any_caption_is_refused_with_a_reason() -> None:
    work = TextWork(TextSettings(), words, 64 + 60)
    work.submit_past_ask(past_ask([stored(1, "word " * 200)]))
    reply = work.next_past_ask()
    assert isinstance(reply, messages.Answer) and reply.error == messages.ErrorCode.MODEL_ERROR
    assert reply.message == "no stored caption fits the model's input beside this question"
