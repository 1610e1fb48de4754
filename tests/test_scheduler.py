"""stream/scheduler.py: the I/O-free scheduling core, driven by hand (no model: the actions it hands out
are run by a fake backend here; tests/test_captioning.py runs them on the real tiny model)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import pytest

from stream.captioning import MAX_PENDING_FRAMES, CaptionSettings
from stream.change import signature
from stream.democlip import load_photos
from stream.scheduler import Action, Answer, Caption, Encode, Extend, Reply, Scheduler

STATUS_KEYS = {
    "captions",
    "skipped",
    "caption_errors",
    "unchanged",
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
        elif isinstance(action, Extend):
            self.captions.append(self.core.extended(action, wall=2000.0).to_dict())
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


# -- no caption for a scene that did not change (stream.change) -------------------------------------
@dataclass
class Camera:
    """A fixed camera on a real photo: fresh sensor noise every frame, and whatever is drawn on top."""

    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(7))
    scene: np.ndarray = field(
        default_factory=lambda: cv2.resize(load_photos()[0], (320, 180), interpolation=cv2.INTER_AREA)
    )

    def shot(self, *, person: bool = False, brighter: float = 0.0) -> np.ndarray:
        image = self.scene.astype(np.float64) + brighter + self.rng.normal(0, 6, self.scene.shape)
        if person:  # a person-sized block: a tenth of the width, half the height
            image[80:170, 150:182] = (200, 60, 40)
        return np.clip(image, 0, 255).astype(np.uint8)


def feed(drive: Driver, stream: str, seq: int, t: float, image: np.ndarray) -> None:
    """One frame as the shells give it: stream time, then pixels with their change signature."""
    if drive.core.offer(stream, seq, t, 1000.0 + t):
        drive.core.add_pixels(stream, seq, f"{stream}:{seq}", signature(image))


def model_calls(drive: Driver) -> list[Caption]:
    return [a for a in drive.calls if isinstance(a, Caption)]


def test_a_still_scene_is_captioned_once_then_extended_without_model_calls() -> None:
    core = Scheduler(settings(), model="tiny")
    core.add_stream("cam")
    drive, camera = Driver(core), Camera()
    for i in range(31):  # 1 fps, 30 s: windows end at 2, 4, ... 30
        feed(drive, "cam", i, float(i), camera.shot())
        drive.drain()
    assert len(model_calls(drive)) == 1, "only the first window went to the model"
    assert len(drive.captions) == 15
    first, *rest = drive.captions
    assert "unchanged" not in first and first["t_start"] == 0.0 and first["text"] == "cam 0-2"
    for n, caption in enumerate(rest, start=2):
        assert caption["unchanged"] is True
        assert caption["text"] == first["text"], "the same text: it extends the caption"
        assert caption["t_start"] == first["t_start"] and caption["wall_start"] == first["wall_start"]
        assert caption["t_end"] == 2.0 * n and caption["seq"] == n - 1 and caption["skipped"] == 0
        assert caption["frame_times"] == [float(t) for t in range(2 * n - 5, 2 * n + 1) if t >= 0]
        assert caption["frames"] == len(caption["frame_times"]) and caption["wall_end"] == 1000.0 + 2 * n
        assert "model_ms" not in caption and caption["latency_ms"] == (2000.0 - caption["wall_end"]) * 1000
    status = core.status()["cam"]
    assert (status["captions"], status["unchanged"], status["lag_s"]) == (1, 14, 0.0)
    assert status["encodes_per_frame"] == 1.0, "frames are still encoded once each (asks need them)"


def test_a_window_with_a_change_is_captioned_and_gating_resumes_once_the_scene_is_still() -> None:
    core = Scheduler(settings())
    core.add_stream("cam")
    drive, camera = Driver(core), Camera()
    for i in range(41):  # a person stands in view from 20 s to 24 s
        feed(drive, "cam", i, float(i), camera.shot(person=20 <= i <= 24))
        drive.drain()
    by_end = {c["t_end"]: c for c in drive.captions}
    assert len(by_end) == 20
    with_person = [end for end in by_end if any(20 <= t <= 24 for t in by_end[end]["frame_times"])]
    assert with_person == [20.0, 22.0, 24.0, 26.0, 28.0]
    for end in with_person:
        assert "unchanged" not in by_end[end], f"the window ending at {end} s shows the person"
    # After the person left, windows are compared with the last captioned one (which showed the
    # person), so the first still window is captioned afresh and the ones after it extend that one.
    assert "unchanged" not in by_end[30.0] and by_end[30.0]["text"] == "cam 24-30"
    after = [by_end[end] for end in (32.0, 34.0, 36.0, 38.0, 40.0)]
    assert all(c["unchanged"] and c["text"] == "cam 24-30" and c["t_start"] == 24.0 for c in after)
    assert all(by_end[end].get("unchanged") for end in range(4, 20, 2))
    assert core.status()["cam"]["unchanged"] == 8 + 5
    # the caption after the event continues from the text before it (context is kept as captioned)
    assert model_calls(drive)[1].context == settings().context_template.format(previous="cam 0-2")


def test_a_slow_drift_is_captioned_once_it_adds_up() -> None:
    """Brightness rises 1 level a second: no two neighbouring windows differ, but a window drifts
    away from the last captioned one, which is what it is compared with."""
    core = Scheduler(settings())
    core.add_stream("cam")
    drive, camera = Driver(core), Camera()
    for i in range(121):
        feed(drive, "cam", i, float(i), camera.shot(brighter=float(i)))
        drive.drain()
    captioned = [c["t_end"] for c in drive.captions if "unchanged" not in c]
    assert len(captioned) >= 4 and sum(1 for c in drive.captions if c.get("unchanged")) >= 30
    gaps = [b - a for a, b in zip(captioned, captioned[1:], strict=False)]
    assert max(gaps) <= 24.0, f"the drift was captioned every {gaps} s"
    assert captioned[-1] >= 100.0


def test_gating_is_off_at_threshold_0_or_without_signatures() -> None:
    for threshold, signed in ((0.0, True), (0.004, False)):
        core = Scheduler(settings(unchanged_threshold=threshold))
        core.add_stream("cam")
        drive, camera = Driver(core), Camera()
        for i in range(13):
            if signed:
                feed(drive, "cam", i, float(i), camera.shot())
            else:
                drive.frame("cam", i, float(i))
            drive.drain()
        assert len(model_calls(drive)) == 6 and not any(c.get("unchanged") for c in drive.captions)
        assert core.streams["cam"].signatures == {}, "no signature is kept where gating is off"


def test_a_window_captioned_without_signatures_supersedes_the_reference() -> None:
    core = Scheduler(settings())
    core.add_stream("cam")
    drive, camera = Driver(core), Camera()
    for i in range(5):
        feed(drive, "cam", i, float(i), camera.shot())
        drive.drain()
    assert [c.get("unchanged", False) for c in drive.captions] == [False, True]
    for i in range(5, 7):  # frames given without a signature: the window ending at 6 s is captioned
        drive.frame("cam", i, float(i))
        drive.drain()
    for i in range(7, 19):  # signatures again; the windows up to 12 s still hold unsigned frames
        feed(drive, "cam", i, float(i), camera.shot())
        drive.drain()
    # 6 to 10 s: captioned (unsigned frames), no reference after them; 12 s (frames 7-12): captioned,
    # the new reference; 14 to 18 s extend it
    assert [c.get("unchanged", False) for c in drive.captions] == [False, True] + [False] * 4 + [True] * 3
    assert all(c["text"] == "cam 6-12" for c in drive.captions[-3:]), "never the text of 0-2 s again"


def test_a_refused_window_is_no_reference_and_asks_are_answered_while_gated() -> None:
    core = Scheduler(settings())
    core.add_stream("cam")
    drive, camera = Driver(core, refuse=True), Camera()
    for i in range(5):
        feed(drive, "cam", i, float(i), camera.shot())
        drive.drain()
    assert len(model_calls(drive)) == 2 and drive.captions == []  # refused: nothing to extend
    drive.refuse = False
    for i in range(5, 11):
        feed(drive, "cam", i, float(i), camera.shot())
        drive.drain()
    assert [c.get("unchanged", False) for c in drive.captions] == [False, True, True]
    core.submit_ask("q", "cam", "Anyone there?")
    drive.drain()
    assert drive.replies[-1]["id"] == "q" and drive.replies[-1]["text"] == "answer to Anyone there?"
    # bounded: only the signatures a window or an ask can still use, and the reference's own
    assert len(core.streams["cam"].signatures) <= core.streams["cam"].sampler.window_capacity


def test_live_mode_gates_the_newest_window_of_each_stream_and_counts_per_stream() -> None:
    core = Scheduler(settings(skip_stale=True))
    for name in ("door", "yard"):
        core.add_stream(name)
    drive, camera = Driver(core), Camera()
    for i in range(21):
        feed(drive, "door", i, float(i), camera.shot())
        feed(drive, "yard", i, float(i), camera.shot(person=i % 2 == 1))  # someone pacing
        drive.drain()
    status = core.status()
    assert status["door"]["unchanged"] == 9 and status["door"]["captions"] == 1
    assert status["yard"]["unchanged"] == 0 and status["yard"]["captions"] == 10


def test_alert_rules_score_each_captioned_window_from_its_cached_embeddings() -> None:
    from stream.alertrules import AlertRule
    from stream.alerts import AlertCore
    from stream.scheduler import EvaluateRules

    rules = [
        AlertRule(name="person", question="Is a person in view?", off_after=1, cooldown=0.0),
        AlertRule(name="car", question="Is a car in view?", streams=("yard",)),
        AlertRule(name="late", pattern=r"-[6-9]$"),  # on the caption text: no model call
    ]
    core = Scheduler(settings(), alerts=AlertCore(rules, run_id="run1"))
    core.add_stream("cam")
    drive = Driver(core)
    core.add_thumbnail("cam", 1.0, "jpeg-at-1")
    core.add_thumbnail("cam", 2.0, "jpeg-at-2")
    core.add_thumbnail("cam", 3.0, "jpeg-at-3")  # after the first window's end: not its thumbnail
    scores = iter([0.9, 0.2, 0.8])
    evaluated: list[EvaluateRules] = []
    events = []
    for i in range(7):
        drive.frame("cam", i, float(i))
        while (action := core.next_action()) is not None:
            if isinstance(action, EvaluateRules):
                evaluated.append(action)
                core.rules_evaluated(action, [next(scores)], model_ms=8.0)
            else:
                drive.calls.append(action)
                drive.run(action)
                if isinstance(action, Caption):
                    # the window's rules come right after its caption, before anything else
                    following = core.next_action()
                    assert isinstance(following, EvaluateRules) and following.job == action.job
                    assert following.embeddings == action.embeddings
                    evaluated.append(following)
                    core.rules_evaluated(following, [next(scores)], model_ms=8.0)
            events.extend(core.take_events())
    assert [(a.rules, a.questions) for a in evaluated] == [(("person",), ("Is a person in view?",))] * 3
    assert [(e.rule, e.state.value, e.text, e.score) for e in events] == [
        ("person", "start", "cam 0-2", 0.9),
        ("person", "end", "cam 0-4", 0.2),
        ("late", "start", "cam 0-6", 1.0),
        ("person", "start", "cam 0-6", 0.8),
    ]
    assert events[0].thumbnail == "jpeg-at-2" and events[0].event_id == "run1-cam-person-1"
    status = core.status()["cam"]
    assert (status["rules_ms"], status["rules_model_ms"], status["rule_windows"]) == (8.0, 8.0, 3)
    assert status["open_events"] == 2
    # The stream ends: its last window is captioned and scored, then its open events end.
    drive.frame("cam", 7, 7.0)
    core.end_stream("cam")
    assert not core.drained()
    ended = []
    while (action := core.next_action()) is not None:
        if isinstance(action, EvaluateRules):
            assert not core.drained(), "rules still to score: not drained"
            core.rules_evaluated(action, [0.9], model_ms=8.0)
        else:
            drive.run(action)
        ended.extend(core.take_events())
    ended.extend(core.take_events())
    assert [(e.rule, e.state.value) for e in ended] == [
        ("late", "update"),
        ("person", "update"),
        ("late", "end"),
        ("person", "end"),
    ]
    assert core.drained() and core.stop_alerts() == []


def test_the_run_stopping_ends_open_events_and_a_refused_window_keeps_the_state() -> None:
    from stream.alertrules import AlertRule
    from stream.alerts import AlertCore
    from stream.scheduler import EvaluateRules

    core = Scheduler(settings(), alerts=AlertCore([AlertRule(name="p", question="P?")], run_id="r"))
    core.add_stream("cam")
    drive = Driver(core)
    refuse = False
    for i in range(5):
        drive.frame("cam", i, float(i))
        while (action := core.next_action()) is not None:
            if isinstance(action, EvaluateRules):
                if refuse:
                    assert core.rules_failed(action) == 1
                else:
                    core.rules_evaluated(action, [1.0], model_ms=3.0)
                    refuse = True
            else:
                drive.run(action)
    started = core.take_events()
    assert [e.state.value for e in started] == ["start"]
    assert core.status()["cam"]["rule_errors"] == 1
    (end,) = core.stop_alerts()
    assert (end.state.value, end.event_id) == ("end", started[0].event_id)


def test_without_rules_no_rule_figures_and_no_events() -> None:
    core = Scheduler(settings())
    core.add_stream("cam")
    drive = Driver(core)
    for i in range(4):
        drive.frame("cam", i, float(i))
        drive.drain()
    assert set(core.status()["cam"]) == STATUS_KEYS
    assert core.take_events() == [] and core.stop_alerts() == []


def test_unchanged_windows_are_scored_only_by_rules_that_ask_for_them() -> None:
    """A still scene: the model captions the first window, the rest are ``unchanged``. A rule with
    ``on_unchanged`` keeps scoring them (on the frames already encoded, and by its pattern on the kept
    text), so its event stays open; a rule without it sees one window and its event ends only when
    the stream does."""
    from stream.alertrules import AlertRule
    from stream.alerts import AlertCore
    from stream.scheduler import EvaluateRules

    rules = [
        AlertRule(name="watch", question="Anyone?", on_unchanged=True),
        AlertRule(name="once", question="Anyone?"),
        AlertRule(name="text", pattern="cam", on_unchanged=True),
    ]
    core = Scheduler(settings(), alerts=AlertCore(rules, run_id="r"))
    core.add_stream("cam")
    drive, camera = Driver(core), Camera()
    evaluated: list[EvaluateRules] = []
    events = []
    for i in range(13):
        if core.offer("cam", i, float(i), 1000.0 + i):
            core.add_pixels("cam", i, f"cam:{i}", signature(camera.shot()))
        while (action := core.next_action()) is not None:
            if isinstance(action, EvaluateRules):
                evaluated.append(action)
                core.rules_evaluated(action, [1.0] * len(action.rules), model_ms=1.0)
            else:
                drive.calls.append(action)
                drive.run(action)
            events.extend(core.take_events())
    assert len(model_calls(drive)) == 1 and sum(1 for c in drive.captions if c.get("unchanged")) == 5
    assert evaluated[0].rules == ("watch", "once")
    assert all(a.rules == ("watch",) for a in evaluated[1:]) and len(evaluated) == 6
    assert all(a.embeddings and len(a.embeddings) == len(a.frames) for a in evaluated)
    assert [(e.rule, e.state.value) for e in events if e.state.value != "update"] == [
        ("text", "start"),
        ("watch", "start"),
        ("once", "start"),
    ]
    assert sum(1 for e in events if e.rule == "watch" and e.state.value == "update") == 5


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


def test_while_a_batch_is_in_flight_only_the_frames_that_came_in_are_encoded() -> None:
    """The local model's batched generation runs beside the model loop, which meanwhile asks
    :meth:`Scheduler.next_encode`: the new frames are encoded, but no window or ask is handed out
    until the batch is reported; then each stream's newest window goes, its frames already encoded."""
    core = Scheduler(settings(skip_stale=True), max_in_flight=4)
    for name in ("a", "b"):
        core.add_stream(name)
    drive = Driver(core)
    for i in range(3):
        for name in ("a", "b"):
            drive.frame(name, i, float(i))
    batch = _handed_out(drive, Caption)
    assert sorted(c.stream for c in batch) == ["a", "b"]
    for i in range(3, 6):  # each stream's next windows come due while the batch generates
        for name in ("a", "b"):
            drive.frame(name, i, float(i))
    core.submit_ask("q", "a", "what now?")
    encode = core.next_encode()
    assert isinstance(encode, Encode) and sorted(f.seq for f in encode.frames) == [3, 3, 4, 4, 5, 5]
    with pytest.raises(RuntimeError, match="Encode is not reported yet"):
        core.next_encode()
    drive.run(encode)
    assert core.next_encode() is None, "nothing else is handed out while the batch is in flight"
    for caption in batch:
        drive.run(caption)
    after = []
    while (action := core.next_action()) is not None:
        assert not isinstance(action, Encode), "the new windows' frames were encoded beside the batch"
        after.append(action)
    assert isinstance(after[0], Answer) and after[0].id == "q"
    newest = [a for a in after if isinstance(a, Caption)]
    assert [(c.stream, c.job.t_end) for c in newest] == [("b", 4.0)], "a is busy answering the ask"
    # One at a time on the same thread: the caption is in flight too, so frames are encoded beside it.
    one = Scheduler(settings(skip_stale=True), pipelined=True)
    one.add_stream("a")
    drive = Driver(one)
    for i in range(3):
        drive.frame("a", i, float(i))
    (caption,) = _handed_out(drive, Caption)
    drive.frame("a", 3, 3.0)
    encode = one.next_encode()
    assert isinstance(encode, Encode) and [f.seq for f in encode.frames] == [3]


def test_rule_scoring_in_flight_holds_only_its_stream_and_keeps_window_order() -> None:
    from stream.alertrules import AlertRule
    from stream.alerts import AlertCore
    from stream.scheduler import EvaluateRules

    rules = [AlertRule(name="person", question="Is a person in view?", streams=("a",))]
    core = Scheduler(settings(skip_stale=True), alerts=AlertCore(rules, run_id="r"), max_in_flight=2)
    for name in ("a", "b"):
        core.add_stream(name)
    drive = Driver(core)
    for i in range(3):
        for name in ("a", "b"):
            drive.frame(name, i, float(i))
    captions = {c.stream: c for c in _handed_out(drive, Caption)}
    drive.run(captions["a"])
    (rules_a,) = _handed_out(drive, EvaluateRules)
    assert rules_a.stream == "a" and core.busy() == {"a", "b"}, "a's scoring keeps a busy"
    drive.run(captions["b"])
    for i in range(3, 5):
        for name in ("a", "b"):
            drive.frame(name, i, float(i))
    (next_b,) = _handed_out(drive, Caption)
    assert next_b.stream == "b", "b's windows go on while a's rules are in flight; a's wait"
    assert _handed_out(drive, Caption) == [], "both slots taken (max_in_flight)"
    core.rules_evaluated(rules_a, [0.9], model_ms=5.0)
    drive.run(next_b)
    (later,) = _handed_out(drive, Caption)
    assert later.stream == "a" and later.job.t_end == 4.0, "scored: a's newest window goes"
    assert core.take_events()[0].rule == "person", "the scores came in"


def test_a_summary_turn_in_flight_holds_no_stream_and_no_second_turn_starts() -> None:
    from stream.textwork import Summarize, TextSettings, TextWork

    text = TextWork(TextSettings(every=2.0, preset="cctv"), lambda s: len(s.split()), 4000)
    core = Scheduler(settings(skip_stale=False, window=2.0, stride=2.0), text=text, max_in_flight=3)
    core.add_stream("cam")
    drive = Driver(core)
    turns: list[Summarize] = []
    for i in range(12):  # a summary comes due every 2 s of captions; none is reported meanwhile
        drive.frame("cam", i, float(i))
        while (action := core.next_action()) is not None:
            if isinstance(action, Summarize):
                turns.append(action)
            else:
                drive.run(action)  # captions in flight are reported at once here
    assert len(turns) == 1, "one summary turn at a time"
    assert len(drive.captions) >= 5, "the stream's windows went on while its summary was in flight"
    assert not text.idle and not core.drained()
    core.summarized(turns[0], "a summary")
    assert isinstance(core.next_action(), Summarize), "the next summary, due meanwhile, starts now"


def test_a_frame_the_model_could_not_encode_is_lost_alone_and_its_batch_mates_are_used() -> None:
    core = Scheduler(settings(window=2.0, stride=2.0))
    core.add_stream("cam")
    core.add_stream("door")
    for seq, t in enumerate([0.0, 1.0, 2.0]):
        for stream in ("cam", "door"):
            assert core.offer(stream, seq, t, 1000.0 + t)
            core.add_pixels(stream, seq, f"{stream}:{seq}")
    encode = core.next_action()
    assert isinstance(encode, Encode)
    assert {(f.stream, f.seq) for f in encode.frames} == {(s, q) for s in ("cam", "door") for q in range(3)}
    core.encoded(
        encode, [None if f.pixels == "cam:2" else Embedding(f.pixels) for f in encode.frames], ms=5.0
    )
    drive = Driver(core)
    drive.drain()
    by_stream = {c["stream"]: c["frame_times"] for c in drive.captions}
    assert by_stream == {"cam": [1.0], "door": [1.0, 2.0]}  # the window (0, 2]: only cam's 2 is gone
    assert not any(isinstance(a, Encode) for a in drive.calls)  # no frame is encoded twice
    assert core.status()["cam"]["missing_frames"] == 1 and core.status()["door"]["missing_frames"] == 0
