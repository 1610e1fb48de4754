"""The inference process's two threads, driven directly: the frame tap reads a real shared-memory ring
(stream/ring.py) and the model loop publishes on a real zmq bus (stream/bus.py).

The model is a small fake at the backend boundary (:class:`TagBackend`): its "embedding" of a frame
is the grey level the test painted it with, so every caption and answer says exactly which frames
reached the model. The real tiny model runs these same actions in tests/test_captioning.py and
through the whole pipeline in tests/test_pipeline.py.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from stream.bus import AskReceiver, AskSender, LockedPublisher, Publisher, RunPaths, Subscriber
from stream.captioning import CaptionSettings
from stream.frametap import FrameTap, SharedScheduler
from stream.inference import DRAINED_FILE, InferenceOptions, ModelLoop
from stream.messages import Answer, AskRequest, BusMessage, Caption, InferenceStatus, Thumbnail
from stream.ring import FrameRing, ring_name
from stream.scheduler import Scheduler

M = TypeVar("M", bound=BusMessage)
DEADLINE_S = 30.0
SETTINGS = CaptionSettings(prompt="Describe.", window=4.0, stride=2.0, skip_stale=False, max_new_tokens=8)


class TagBackend:
    """A fake caption model: a frame's embedding is its grey level; captions list them."""

    name = "tags"

    def __init__(self) -> None:
        self.encoded: list[int] = []

    def set_interrupt(self, check: Callable[[], bool] | None) -> None:
        pass

    def encode_frames(self, frames: Sequence[np.ndarray], max_slice_nums: int) -> list[int]:
        tags = [int(frame[0, 0, 0]) for frame in frames]
        self.encoded += tags
        return tags

    def describe(self, frames: Sequence[int], prompt: str, **kwargs: Any) -> str:
        return f"{prompt} saw {','.join(map(str, frames))}"

    def ask(self, frames: Sequence[int], question: str, **kwargs: Any) -> str:
        return f"{question} saw {','.join(map(str, frames))}"


def paint(seq: int) -> np.ndarray:
    return np.full((48, 64, 3), seq * 10, np.uint8)


@pytest.fixture
def ring() -> Iterator[FrameRing]:
    ring = FrameRing.create(ring_name(uuid.uuid4().hex, "cam"), slots=32, max_height=64, max_width=64)
    try:
        yield ring
    finally:
        ring.close()
        ring.unlink()


def write(ring: FrameRing, seqs: range, fps: float = 2.0) -> None:
    for seq in seqs:
        assert ring.write(paint(seq), seq / fps, 1000.0 + seq / fps) == seq


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)  # polling a real condition, with a deadline


def test_the_tap_offers_ring_frames_and_ends_the_stream_with_the_ring(
    ring: FrameRing, tmp_path: Path
) -> None:
    core = Scheduler(SETTINGS)
    core.add_stream("cam")
    shared = SharedScheduler(core)
    run = RunPaths.create(root=tmp_path)
    publisher = Publisher(run.publisher_endpoint("inference"), own_context=True)
    options = InferenceOptions(run_id=run.run_id, run_dir=str(run.run_dir), streams={"cam": ring.name})
    wake, stop = threading.Event(), threading.Event()
    tap = FrameTap(shared, {"cam": ring.name}, LockedPublisher(publisher), options, wake, stop)
    write(ring, range(12))  # 6 s at 2 fps
    tap.start()
    try:

        def sampled() -> list[tuple[int, float, int]]:
            with shared.use() as c:
                return [(s.seq, s.t, int(pixels[0, 0, 0])) for s, pixels in c.streams["cam"].pending]

        wait_until(lambda: len(sampled()) == 6, "six sampled frames")
        # One frame per second of stream time, each with its own pixels (copied out of the ring).
        assert sampled() == [(seq, seq / 2, seq * 10) for seq in range(0, 12, 2)]
        assert wake.is_set()
        with shared.use() as c:
            assert [j.t_end for j in c.streams["cam"].due] == [2.0, 4.0] and not c.ended("cam")
        ring.mark_ended()
        wait_until(lambda: _ended(shared), "the stream's end")
        with shared.use() as c:  # the tail after 4 s: a last window ending at the last frame
            assert [(j.t_end, j.frame_times) for j in c.streams["cam"].due][-1] == (5.5, [3.0, 4.0, 5.0])
    finally:
        stop.set()
        tap.join(5)
        publisher.close()
        run.remove()
    assert not tap.is_alive() and tap.error is None


def _ended(shared: SharedScheduler) -> bool:
    with shared.use() as core:
        return core.ended("cam")


def test_the_model_loop_captions_answers_and_flushes_the_tail(ring: FrameRing, tmp_path: Path) -> None:
    run = RunPaths.create(root=tmp_path)
    subscriber = Subscriber([run.publisher_endpoint("inference")])
    publisher = Publisher(run.publisher_endpoint("inference"), own_context=True)
    assert publisher.wait_for_subscriber(10.0)
    asks = AskReceiver(run.asks_endpoint)
    sender = AskSender(run.asks_endpoint)
    options = InferenceOptions(
        run_id=run.run_id, run_dir=str(run.run_dir), streams={"cam": ring.name}, captions=SETTINGS
    )
    backend = TagBackend()
    stop = threading.Event()
    loop = ModelLoop(
        options, backend, LockedPublisher(publisher), asks, stop, {"model": "tags", "device": "cpu"}
    )
    write(ring, range(12))  # 0 .. 5.5 s at 2 fps
    ring.mark_ended()
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(loop.run()), name="model-loop")
    thread.start()
    seen: list[BusMessage] = []

    def receive(kind: type[M]) -> M:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            message = subscriber.recv(1.0)
            if message is not None:
                seen.append(message)
                if isinstance(message, kind):
                    return message
        raise AssertionError(f"no {kind.TYPE} message; saw {[m.TYPE for m in seen]}")

    try:
        captions = [receive(Caption) for _ in range(3)]
        assert [(c.seq, c.t_start, c.t_end, c.frame_times) for c in captions] == [
            (0, 0.0, 2.0, [0.0, 1.0, 2.0]),
            (1, 0.0, 4.0, [1.0, 2.0, 3.0, 4.0]),
            (2, 2.0, 5.5, [3.0, 4.0, 5.0]),  # the tail, flushed when the ring ended
        ]
        assert captions[1].text == "Describe. saw 20,40,60,80" and captions[1].model == "tags"
        assert backend.encoded == [0, 20, 40, 60, 80, 100], "every sampled frame encoded once"
        assert sender.send(AskRequest(id="a1", stream="cam", question="What?", wall=time.time()))
        answer = receive(Answer)
        assert answer.id == "a1" and answer.frame_times == [2.0, 3.0, 4.0, 5.0]
        assert answer.text == "What? saw 40,60,80,100" and answer.error is None
        assert sender.send(AskRequest(id="a2", stream="nope", question="What?", wall=time.time()))
        assert receive(Answer).error == "unknown_stream"
        status = receive(InferenceStatus)
        assert status.state == "ready" and status.streams["cam"]["encodes_per_frame"] == 1.0
        assert (run.run_dir / DRAINED_FILE).exists()  # every source ended and its last window is out
        thumbnail = next(m for m in seen if isinstance(m, Thumbnail))
        assert (thumbnail.t, thumbnail.width, thumbnail.height) == (0.0, 64, 48)
    finally:
        stop.set()
        thread.join(10)
        asks.close()
        sender.close()
        subscriber.close()
        publisher.close()
        run.remove()
    assert result == [0]


def test_a_ring_that_does_not_exist_yet_is_attached_once_it_does(tmp_path: Path) -> None:
    """FrameRing.attach raises RingError for a missing ring: the tap says so once and keeps trying."""
    core = Scheduler(SETTINGS)
    core.add_stream("cam")
    shared = SharedScheduler(core)
    run = RunPaths.create(root=tmp_path)
    publisher = Publisher(run.publisher_endpoint("inference"), own_context=True)
    name = ring_name(uuid.uuid4().hex, "cam")
    options = InferenceOptions(run_id=run.run_id, run_dir=str(run.run_dir), streams={"cam": name})
    stop = threading.Event()
    tap = FrameTap(shared, {"cam": name}, LockedPublisher(publisher), options, threading.Event(), stop)
    tap.start()
    ring = None
    try:
        wait_until(lambda: "cam" in tap.unattached, "the tap to find no ring")
        ring = FrameRing.create(name, slots=8, max_height=64, max_width=64)
        write(ring, range(3))
        wait_until(lambda: core_sampled(shared) == 2, "frames from the ring created late")
    finally:
        stop.set()
        tap.join(5)
        if ring is not None:
            ring.close()
            ring.unlink()
        publisher.close()
        run.remove()
    assert tap.error is None


def core_sampled(shared: SharedScheduler) -> int:
    with shared.use() as core:
        return int(core.status()["cam"]["sampled"])
