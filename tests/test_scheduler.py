"""stream/scheduler.py: the I/O-free scheduling core, driven by hand (no model: the actions it hands out
are run by a fake backend here; tests/test_captioning.py runs them on the real tiny model)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from stream.captioning import MAX_PENDING_FRAMES, CaptionSettings
from stream.scheduler import Action, Answer, Caption, Encode, Reply, Scheduler

STATUS_KEYS = {
    "captions",
    "skipped",
    "caption_errors",
    "last_caption_error",
    "sampled",
    "vision_encodes",
    "encodes_per_frame",
    "missing_frames",
    "pending_frames",
    "cached_frames",
    "lag_s",
    "caption_latency_ms",
    "model_ms",
    "t",
}


def settings(**overrides: Any) -> CaptionSettings:
    base: dict[str, Any] = dict(
        prompt="Describe the {duration} seconds.", window=6.0, stride=2.0, skip_stale=False, max_new_tokens=8
    )
    base.update(overrides)
    return CaptionSettings(**base)


@dataclass(frozen=True)
class Embedding:
    """What the fake vision model returns: which pixels it saw."""

    pixels: str


@dataclass
class Driver:
    """Runs the core's actions the way the shells do, on a fake model that records its calls; keeps
    the messages as the JSON clients receive."""

    core: Scheduler
    calls: list[Action] = field(default_factory=list)
    captions: list[dict[str, Any]] = field(default_factory=list)
    replies: list[dict[str, Any]] = field(default_factory=list)
    refuse: bool = False

    def frame(self, stream: str, seq: int, t: float) -> bool:
        kept = self.core.offer(stream, seq, t, 1000.0 + t)
        if kept:
            self.core.add_pixels(stream, seq, f"{stream}:{seq}")
        return kept

    def step(self, min_batch: int = 1) -> Action | None:
        action = self.core.next_action(min_batch=min_batch)
        if action is not None:
            self.calls.append(action)
            self.run(action)
        return action

    def run(self, action: Action) -> None:
        if isinstance(action, Encode):
            self.core.encoded(action, [Embedding(p) for p in action.pixels], ms=5.0)
        elif isinstance(action, Caption):
            if self.refuse:
                self.core.caption_failed(action)
                return
            text = f"{action.stream} {action.job.t_start:g}-{action.job.t_end:g}"
            self.captions.append(self.core.captioned(action, text, model_ms=20.0, wall=2000.0).to_dict())
        elif isinstance(action, Answer):
            if self.refuse:
                self.replies.append(self.core.answer_failed(action, "prompt too long").to_dict())
            else:
                self.replies.append(self.core.answered(action, f"answer to {action.question}").to_dict())
        elif isinstance(action, Reply):
            self.replies.append(action.message.to_dict())

    def drain(self, min_batch: int = 1) -> None:
        while self.step(min_batch) is not None:
            pass


def test_every_sampled_frame_is_encoded_once_and_every_window_captioned_offline() -> None:
    core = Scheduler(settings())
    core.add_stream("cam")
    drive = Driver(core)
    for i in range(60):  # 5 fps for 12 s, driven as frames come
        drive.frame("cam", i, i / 5)
        drive.drain()
    encoded = [f.seq for a in drive.calls if isinstance(a, Encode) for f in a.frames]
    assert encoded == list(range(0, 60, 5)), "each sampled frame went through the vision model once"
    assert [(c["t_start"], c["t_end"]) for c in drive.captions] == [
        (0.0, 2.0),
        (0.0, 4.0),
        (0.0, 6.0),
        (2.0, 8.0),
        (4.0, 10.0),
    ]
    assert all(c["skipped"] == 0 for c in drive.captions)
    assert drive.captions[3]["frame_times"] == [3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    captions = [a for a in drive.calls if isinstance(a, Caption)]
    assert [e.pixels for e in captions[3].embeddings] == [f"cam:{s}" for s in (15, 20, 25, 30, 35, 40)]
    status = core.status()["cam"]
    assert set(status) == STATUS_KEYS
    assert status["encodes_per_frame"] == 1.0 and status["vision_encodes"] == 12
    # Bounded: the cache holds what a future window or an ask (the last 6 s) may use, nothing older.
    assert status["cached_frames"] <= core.streams["cam"].sampler.window_capacity
    assert min(core.streams["cam"].cache) >= 30


def test_context_prompt_and_caption_message_fields() -> None:
    core = Scheduler(settings(), model="tiny")
    core.add_stream("cam")
    drive = Driver(core)
    for i in range(3):
        drive.frame("cam", i, float(i))
    drive.drain()
    for i in range(3, 5):
        drive.frame("cam", i, float(i))
    encode = core.next_action()
    assert isinstance(encode, Encode) and [f.seq for f in encode.frames] == [3, 4]
    drive.run(encode)
    second = core.next_action()
    assert isinstance(second, Caption)
    assert second.prompt == "Describe the 4 seconds."
    assert second.context == settings().context_template.format(previous="cam 0-2")
    assert second.encode_ms == 5.0
    message = core.captioned(second, "text", model_ms=12.34, wall=1004.5).to_dict()
    assert message["type"] == "caption" and message["model"] == "tiny" and message["seq"] == 1
    assert message["frame_times"] == [0.0, 1.0, 2.0, 3.0, 4.0] and message["frames"] == 5
    assert (message["wall_start"], message["wall_end"]) == (1000.0, 1004.0)
    assert message["latency_ms"] == 500.0 and message["model_ms"] == 12.3
    status = core.status()["cam"]
    assert status["captions"] == 2 and status["lag_s"] == 0.0 and status["caption_latency_ms"] == 500.0


def test_live_mode_captions_the_newest_window_and_counts_the_skipped() -> None:
    core = Scheduler(settings(skip_stale=True))
    core.add_stream("cam")
    drive = Driver(core)
    for i in range(40):  # 10 s at 4 fps: windows ending at 2, 4, 6, 8 are due (10 needs a frame at 10)
        drive.frame("cam", i, i / 4)
    drive.drain()
    (caption,) = drive.captions
    assert caption["t_end"] == 8.0 and caption["seq"] == 3
    assert caption["skipped"] == 3, "every earlier window was skipped, and said so"
    assert core.status()["cam"]["skipped"] == 3


def test_streams_take_turns() -> None:
    core = Scheduler(settings())
    for name in ("a", "b"):
        core.add_stream(name)
    drive = Driver(core)
    for i in range(40):
        drive.frame("a", i, i / 4)
        drive.frame("b", i, i / 4)
    drive.drain()
    order = [c["stream"] for c in drive.captions]
    assert order == ["a", "b"] * 4


def test_asks_come_first_and_look_at_the_last_window_seconds() -> None:
    core = Scheduler(settings())
    core.add_stream("cam")
    drive = Driver(core)
    core.submit_ask("q0", "cam", "Anything?")
    core.submit_ask("q1", "nope", "Anything?")
    drive.drain()
    assert [(r["id"], r["error"]) for r in drive.replies] == [("q0", "no_frames"), ("q1", "unknown_stream")]
    assert "no stream named 'nope'" in drive.replies[1]["message"]
    for i in range(39):  # up to t = 9.5: windows ending at 2 .. 8 are due
        drive.frame("cam", i, i / 4)
    core.submit_ask("q2", "cam", "What is there?")
    first = drive.step()
    assert isinstance(first, Encode)  # the ask's frames wait as pixels: encoded first
    answer = drive.step()
    assert isinstance(answer, Answer) and answer.id == "q2"
    # 1-fps samples of the last 6 s: the stream is at t = 9.5, so (3.5, 9.5]
    assert [f.t for f in answer.frames] == [4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    assert drive.replies[-1] == {
        "type": "answer",
        "id": "q2",
        "stream": "cam",
        "text": "answer to What is there?",
        "t_start": 4.0,
        "t_end": 9.0,
        "frame_times": [4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
    }
    assert isinstance(drive.step(), Caption)


def test_a_window_whose_frames_wait_is_encoded_first_and_then_captioned_as_taken() -> None:
    """Encoding slower than real time: frames arriving during the encode do not change the window."""
    core = Scheduler(settings(skip_stale=True, window=4.0, stride=4.0))
    core.add_stream("cam")
    drive = Driver(core)
    for i in range(5):
        drive.frame("cam", i, float(i))
    encode = core.next_action()
    assert isinstance(encode, Encode) and [f.seq for f in encode.frames] == [0, 1, 2, 3, 4]
    for i in range(5, 13):  # the stream goes on while the batch is encoded: windows at 8 and 12 due
        drive.frame("cam", i, float(i))
    drive.run(encode)
    caption = core.next_action()
    assert isinstance(caption, Caption) and caption.job.t_end == 4.0
    assert [f.t for f in caption.frames] == [1.0, 2.0, 3.0, 4.0]
    drive.run(caption)
    encode = core.next_action()  # the next window (the newest, 12 s) waits as pixels
    assert isinstance(encode, Encode) and [f.seq for f in encode.frames] == list(range(5, 13))
    drive.run(encode)
    caption = core.next_action()
    assert isinstance(caption, Caption) and caption.job.t_end == 12.0 and len(caption.frames) == 4
    drive.run(caption)
    assert drive.captions[-1]["skipped"] == 1
    assert core.status()["cam"]["encodes_per_frame"] == 1.0


def test_lost_pixels_are_counted_and_left_out() -> None:
    core = Scheduler(settings(window=2.0, stride=2.0))
    core.add_stream("cam")
    drive = Driver(core)
    for seq, t in enumerate([0.0, 1.0, 2.0]):
        assert core.offer("cam", seq, t, t)
        if seq == 1:
            core.add_pixels("cam", seq, "cam:1")
        else:
            core.pixels_lost("cam", seq)
    drive.drain()
    (caption,) = drive.captions
    assert caption["frame_times"] == [1.0]  # 2.0 was lost
    for seq, t in enumerate([3.0, 4.0], start=3):  # a window whose every frame was lost: skipped
        core.offer("cam", seq, t, t)
        core.pixels_lost("cam", seq)
    drive.drain()
    status = core.status()["cam"]
    assert len(drive.captions) == 1 and status["missing_frames"] == 4 and status["skipped"] == 1
    # A kept frame whose pixels never came is missing too, once the next frame is offered.
    assert core.offer("cam", 5, 5.0, 5.0)
    core.offer("cam", 6, 5.5, 5.5)
    assert core.status()["cam"]["missing_frames"] == 5
    with pytest.raises(ValueError, match="frame 6 is not the frame just kept"):
        core.add_pixels("cam", 6, "x")


def test_refusals_are_counted_and_answered_with_a_code() -> None:
    core = Scheduler(settings())
    core.add_stream("cam")
    drive = Driver(core, refuse=True)
    for i in range(5):
        drive.frame("cam", i, float(i))
    core.submit_ask(7, "cam", "Why?")
    drive.drain()
    assert drive.replies == [
        {
            "type": "answer",
            "id": 7,
            "stream": "cam",
            "text": "",
            "error": "model_error",
            "message": "prompt too long",
        }
    ]
    assert core.status()["cam"]["caption_errors"] == 2 and drive.captions == []


def test_results_must_be_reported_in_turn() -> None:
    core = Scheduler(settings())
    core.add_stream("cam")
    Driver(core).frame("cam", 0, 0.0)
    encode = core.next_action()
    assert isinstance(encode, Encode)
    with pytest.raises(RuntimeError, match="Encode is not reported yet"):
        core.next_action()
    with pytest.raises(ValueError, match="0 embeddings for 1 frames"):
        core.encoded(encode, [], ms=1.0)
    with pytest.raises(KeyError, match="no stream named 'x'"):
        core.offer("x", 0, 0.0, 0.0)


def test_per_stream_settings_and_vision_batches() -> None:
    door = settings(prompt="Who is at the door?", window=4.0, stride=4.0, max_slice_nums=2)
    core = Scheduler(settings(), stream_settings={"door": door})
    core.add_stream("door")
    core.add_stream("screen")
    drive = Driver(core)
    for i in range(5):
        drive.frame("door", i, float(i))
        drive.frame("screen", i, float(i))
    drive.drain()
    encodes = [a for a in drive.calls if isinstance(a, Encode)]
    assert {(a.max_slice_nums, frozenset(f.stream for f in a.frames)) for a in encodes} == {
        (1, frozenset({"screen"})),
        (2, frozenset({"door"})),
    }
    prompts = [(a.stream, a.prompt) for a in drive.calls if isinstance(a, Caption)]
    assert prompts == [
        ("door", "Who is at the door?"),
        ("screen", "Describe the 2 seconds."),
        ("screen", "Describe the 4 seconds."),
    ]
    assert [c["t_end"] for c in drive.captions if c["stream"] == "door"] == [4.0]
    assert [c["t_end"] for c in drive.captions if c["stream"] == "screen"] == [2.0, 4.0]


def test_idle_frames_are_encoded_in_batches_of_min_batch() -> None:
    core = Scheduler(settings(stride=100.0, window=100.0))
    core.add_stream("cam")
    drive = Driver(core)
    for i in range(20):
        drive.frame("cam", i, float(i))
        drive.drain(min_batch=8)
    assert [len(a.frames) for a in drive.calls if isinstance(a, Encode)] == [8, 8]
    assert core.status()["cam"]["pending_frames"] == 4


def test_pending_pixels_are_bounded_when_encoding_never_runs() -> None:
    core = Scheduler(settings(stride=1000.0, window=1000.0))
    core.add_stream("cam")
    drive = Driver(core)
    for i in range(MAX_PENDING_FRAMES + 10):
        drive.frame("cam", i, float(i))
    status = core.status()["cam"]
    assert status["pending_frames"] == MAX_PENDING_FRAMES and status["sampled"] == MAX_PENDING_FRAMES + 10
    drive.drain()
    assert (
        core.status()["cam"]["encodes_per_frame"] == 1.0
    )  # the dropped ones are not counted as sampled-and-done


def test_a_file_s_last_window_ends_where_its_last_frame_ends() -> None:
    """The fresh-clone bug: an 8.3-s clip's last cue ended at 8.0 s."""
    core = Scheduler(settings(window=16.0, stride=8.0))
    core.add_stream("clip", hold_last=True)
    drive = Driver(core)
    for i in range(208):  # 25 fps
        drive.frame("clip", i, i / 25)
        drive.drain()
    assert drive.captions == []  # held back: a window may still need to stretch to the end
    core.end_stream("clip", end=208 / 25)
    drive.drain()
    (caption,) = drive.captions
    assert (caption["t_start"], caption["t_end"]) == (0.0, 8.32) and core.ended("clip")


# -- several captions in flight (a remote server: max_in_flight > 1) --------------------------------
def _handed_out(drive: Driver, kind: type) -> list[Any]:
    """Step until the core has nothing more to hand out now; encodes are run at once (they are in
    the shells too), captions and answers are kept in flight and returned."""
    out = []
    while (action := drive.core.next_action()) is not None:
        if isinstance(action, Encode):
            drive.run(action)
        else:
            assert isinstance(action, kind)
            out.append(action)
    return out


def test_windows_of_different_streams_are_in_flight_together_up_to_the_limit() -> None:
    core = Scheduler(settings(skip_stale=True), max_in_flight=2)
    for name in ("a", "b", "c"):
        core.add_stream(name)
    drive = Driver(core)
    for i in range(3):
        for name in ("a", "b", "c"):
            drive.frame(name, i, float(i))
    first = _handed_out(drive, Caption)
    assert len(first) == 2 and len({c.stream for c in first}) == 2, "two streams, one window each"
    assert core.busy() == {c.stream for c in first}
    assert not core.drained()
    drive.run(first[0])  # reported out of order with the other still in flight: fine
    third = _handed_out(drive, Caption)
    assert [c.stream for c in third] == [({"a", "b", "c"} - {c.stream for c in first}).pop()]
    assert core.busy() == {first[1].stream, third[0].stream}


def test_a_busy_stream_gets_its_newest_window_once_free_and_counts_the_rest_skipped() -> None:
    core = Scheduler(settings(skip_stale=True), max_in_flight=4)
    core.add_stream("cam")
    drive = Driver(core)
    for i in range(3):
        drive.frame("cam", i, float(i))
    (inflight,) = _handed_out(drive, Caption)
    for i in range(3, 9):  # windows come due while its caption is in flight
        drive.frame("cam", i, float(i))
    assert _handed_out(drive, Caption) == [], "at most one window of a stream in flight"
    drive.run(inflight)
    (newest,) = _handed_out(drive, Caption)
    assert newest.job.t_end == 8.0 and core.status()["cam"]["skipped"] == 2


def test_an_ask_waits_for_its_stream_while_another_stream_s_ask_goes_first() -> None:
    core = Scheduler(settings(skip_stale=True), max_in_flight=4)
    for name in ("a", "b"):
        core.add_stream(name)
    drive = Driver(core)
    for i in range(3):
        drive.frame("a", i, float(i))
    (caption,) = _handed_out(drive, Caption)
    drive.frame("b", 0, 0.0)
    core.submit_ask("q1", "a", "what now?")
    core.submit_ask("q2", "b", "and here?")
    (answer,) = _handed_out(drive, Answer)
    assert answer.stream == "b", "a's ask waits: its caption is in flight"
    drive.run(caption)
    (later,) = _handed_out(drive, Answer)
    assert later.id == "q1"
    drive.run(answer)
    drive.run(later)
    assert [r["id"] for r in drive.replies] == ["q2", "q1"]


def test_in_flight_results_are_checked_and_the_default_stays_one_at_a_time() -> None:
    core = Scheduler(settings(skip_stale=True), max_in_flight=2)
    core.add_stream("cam")
    drive = Driver(core)
    for i in range(3):
        drive.frame("cam", i, float(i))
    (caption,) = _handed_out(drive, Caption)
    drive.run(caption)
    with pytest.raises(RuntimeError, match="not the action handed out"):
        core.caption_failed(caption)  # reported twice
    with pytest.raises(ValueError, match="max_in_flight"):
        Scheduler(settings(), max_in_flight=0)
    one = Scheduler(settings(skip_stale=True))
    one.add_stream("cam")
    drive = Driver(one)
    for i in range(3):
        drive.frame("cam", i, float(i))
    while not isinstance(action := one.next_action(), Caption):
        assert action is not None
        drive.run(action)
    with pytest.raises(RuntimeError, match="not reported yet"):
        one.next_action()
