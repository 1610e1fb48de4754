"""Batched captioning across streams (issue 14 part 1): the model loop takes the due windows of
several streams and captions them in one generation of the real tiny model, giving each the text it
would get alone. Frames come through real shared-memory rings, messages over the real zmq bus; the
backend is the real :class:`~model.backends.LocalBackend`, wrapped only to count its calls."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model.backends import LocalBackend, load_backend
from stream.bus import AskReceiver, LockedPublisher, Publisher, RunPaths, Subscriber
from stream.captioning import CaptionSettings
from stream.inference import DRAINED_FILE, InferenceOptions, ModelLoop
from stream.messages import Caption, Partial
from stream.ring import FrameRing, ring_name

DEADLINE_S = 120.0
STREAMS = ("cam0", "cam1", "cam2", "cam3")
SETTINGS = CaptionSettings(prompt="Describe.", window=4.0, stride=2.0, skip_stale=False, max_new_tokens=6)


class CountingBackend:
    """The real tiny model; records each caption call (``describe``: 1, ``describe_batch``: its size).
    Its first encode waits until the test says every stream's frames are in the core, so the windows
    of all streams are due together (as on a busy box), not as the tap happens to read the rings."""

    def __init__(self, real: LocalBackend, all_read: threading.Event) -> None:
        self.real, self.name, self.all_read = real, real.name, all_read
        self.calls: list[int] = []

    def set_interrupt(self, check: Callable[[], bool] | None) -> None:
        self.real.set_interrupt(check)

    def encode_frames(self, frames: Sequence[np.ndarray], max_slice_nums: int) -> list[Any]:
        assert self.all_read.wait(DEADLINE_S)
        return self.real.encode_frames(frames, max_slice_nums)

    def describe(self, frames: Sequence[Any], prompt: str, **kwargs: Any) -> str:
        self.calls.append(1)
        return self.real.describe(frames, prompt, **kwargs)

    def describe_batch(self, items: Sequence[Any], **kwargs: Any) -> list[str]:
        self.calls.append(len(items))
        return self.real.describe_batch(items, **kwargs)


@contextlib.contextmanager
def new_rings() -> Iterator[dict[str, FrameRing]]:
    made = {
        name: FrameRing.create(ring_name(uuid.uuid4().hex, name), slots=32, max_height=64, max_width=64)
        for name in STREAMS
    }
    try:
        yield made
    finally:
        for ring in made.values():
            ring.close()
            ring.unlink()


@contextlib.contextmanager
def model_loop(
    rings: dict[str, FrameRing],
    root: Path,
    backend_for: Callable[[LocalBackend], Any],
    *,
    subscribe: bool = False,
    **options: Any,
) -> Iterator[tuple[ModelLoop, Any, RunPaths, Subscriber | None]]:
    """A model loop over ``rings`` on a thread of its own, publishing on a real bus (a subscriber
    connected first with ``subscribe``), its backend ``backend_for(the tiny model)``; ``options``: the
    inference options beyond these tests' settings. Stopped and closed on leaving; it must have ended
    with 0."""
    run = RunPaths.create(root=root)
    subscriber = Subscriber([run.publisher_endpoint("inference")]) if subscribe else None
    publisher = Publisher(run.publisher_endpoint("inference"), own_context=True)
    if subscriber is not None:
        assert publisher.wait_for_subscriber(10.0)
    asks = AskReceiver(run.asks_endpoint)
    inference = InferenceOptions(
        run_id=run.run_id,
        run_dir=str(run.run_dir),
        streams={name: ring.name for name, ring in rings.items()},
        captions=SETTINGS,
        thumbnails=False,
        **options,
    )
    backend = backend_for(load_backend("tiny", max_inp_length=inference.max_inp_length))
    stop = threading.Event()
    loop = ModelLoop(
        inference, backend, LockedPublisher(publisher), asks, stop, {"model": "tiny", "device": "cpu"}
    )
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(loop.run()), name="model-loop")
    thread.start()
    try:
        yield loop, backend, run, subscriber
    finally:
        stop.set()
        thread.join(30)
        asks.close()
        if subscriber is not None:
            subscriber.close()
        publisher.close()
        run.remove()
    assert result == [0]


def run_loop(
    rings: dict[str, FrameRing],
    root: Path,
    max_batch: int,
    partials: list[Partial] | None = None,
    **more: Any,
) -> tuple[list[Caption], list[int]]:
    """Every stream 0 .. 5.5 s at 2 fps (three windows each), run to the end: the captions, the calls
    (and, given a list, the ``partial`` messages); ``more``: other inference options."""
    for index, ring in enumerate(rings.values()):
        for seq in range(12):
            image = np.full((48, 64, 3), (seq * 10 + index * 60) % 256, np.uint8)
            image[: 8 * (index + 1)] = 255 - image[: 8 * (index + 1)]  # each stream looks its own way
            assert ring.write(image, seq / 2, 1000.0 + seq / 2) == seq
        ring.mark_ended()
    all_read = threading.Event()
    captions: list[Caption] = []
    with model_loop(
        rings,
        root,
        lambda real: CountingBackend(real, all_read),
        subscribe=True,
        stream_tokens=partials is not None,
        max_batch=max_batch,
        **more,
    ) as (loop, backend, run, subscriber):
        assert subscriber is not None
        deadline = time.monotonic() + DEADLINE_S
        while not all_read.is_set():
            with loop.shared.use() as core:
                if all(core.ended(name) for name in STREAMS):
                    all_read.set()
            assert time.monotonic() < deadline, "the tap never read every ring to its end"
            time.sleep(0.01)  # polling a real condition, with a deadline
        expected = 12 - 3 * len(more.get("stream_captions", {}))  # a stream of its own prompt: refused
        while not (run.run_dir / DRAINED_FILE).exists() or len(captions) < expected:
            assert time.monotonic() < deadline, f"only {len(captions)} captions"
            message = subscriber.recv(0.5)
            if isinstance(message, Caption):
                captions.append(message)
            elif isinstance(message, Partial) and partials is not None:
                partials.append(message)
    return captions, backend.calls


def test_due_windows_of_four_streams_are_captioned_in_one_batch_with_the_texts_they_get_alone(
    tmp_path: Path,
) -> None:
    partials: list[Partial] = []
    with new_rings() as rings:
        batched, calls = run_loop(rings, tmp_path, max_batch=4, partials=partials)
    assert calls == [4, 4, 4]  # each round of windows, one of every stream: one generation
    assert sorted((c.stream, c.seq) for c in batched) == [(s, q) for s in STREAMS for q in range(3)]
    for name in STREAMS:  # per stream in order, the tail last
        assert [c.t_end for c in batched if c.stream == name] == [2.0, 4.0, 5.5]
    with new_rings() as rings:  # the same frames again, one window at a time
        alone, calls = run_loop(rings, tmp_path, max_batch=1)
    assert calls == [1] * 12
    texts = {(c.stream, c.seq): c.text for c in alone}
    assert {(c.stream, c.seq): c.text for c in batched} == texts
    assert len(set(texts.values())) > 1  # the streams' captions differ: rows did not get each other's
    # Partials stay per stream: each is the start of its own window's caption, every stream had some.
    assert {p.stream for p in partials} == set(STREAMS)
    assert all(texts[(p.stream, p.seq)].startswith(p.text) and p.text for p in partials)


def test_a_window_the_model_refuses_fails_alone_and_the_rest_of_its_batch_is_captioned(
    tmp_path: Path,
) -> None:
    """cam3's prompt is over the input limit: each batch holding it is refused before any text, its
    windows then run alone, so cam3's are counted as refused and the others' captioned."""
    too_long = replace(SETTINGS, prompt="Describe every word here. " * 120)
    with new_rings() as rings:
        captions, calls = run_loop(
            rings, tmp_path, max_batch=4, stream_captions={"cam3": too_long}, max_inp_length=512
        )
    assert calls == [4, 1, 1, 1, 1] * 3
    assert sorted((c.stream, c.seq) for c in captions) == [(s, q) for s in STREAMS[:3] for q in range(3)]


class BlockingBackend:
    """The real tiny model, whose first caption call (a batch, or one window alone) holds until the
    test has seen a frame encoded beside it, or gives up after ``DEADLINE_S / 4``: the model loop
    must go on encoding while a generation runs."""

    def __init__(self, real: LocalBackend) -> None:
        self.real, self.name = real, real.name
        self.generating = threading.Event()
        self.encoded_beside = threading.Event()
        self.first_done = threading.Event()

    def set_interrupt(self, check: Callable[[], bool] | None) -> None:
        self.real.set_interrupt(check)

    def encode_frames(self, frames: Sequence[np.ndarray], max_slice_nums: int) -> list[Any]:
        if self.generating.is_set() and not self.first_done.is_set():
            self.encoded_beside.set()
        return self.real.encode_frames(frames, max_slice_nums)

    def _hold(self) -> None:
        if not self.first_done.is_set():
            self.generating.set()
            self.encoded_beside.wait(DEADLINE_S / 4)
            self.first_done.set()

    def describe(self, frames: Sequence[Any], prompt: str, **kwargs: Any) -> str:
        self._hold()
        return self.real.describe(frames, prompt, **kwargs)

    def describe_batch(self, items: Sequence[Any], **kwargs: Any) -> list[str]:
        self._hold()
        return self.real.describe_batch(items, **kwargs)


@pytest.mark.parametrize("max_batch", [4, 1])
def test_frames_that_come_in_while_a_batch_generates_are_encoded_beside_it(
    tmp_path: Path, max_batch: int
) -> None:
    """The generation (a batch, or one window at a time) runs on a thread of its own: a frame written
    after it started is encoded before it ends (on the model loop's thread, the encode would wait)."""
    with new_rings() as rings:
        for index, ring in enumerate(rings.values()):
            for seq in range(5):  # 0 .. 2 s: every stream's first window is due
                ring.write(np.full((48, 64, 3), seq * 20 + index * 50, np.uint8), seq / 2, 1000.0 + seq / 2)
        with model_loop(rings, tmp_path, BlockingBackend, max_batch=max_batch) as (_, backend, _, _):
            assert backend.generating.wait(DEADLINE_S), "no caption was ever generated"
            rings["cam0"].write(np.full((48, 64, 3), 222, np.uint8), 3.0, 1003.0)  # a new second
            assert backend.first_done.wait(DEADLINE_S)
            assert backend.encoded_beside.is_set(), "the new frame waited for the generation to end"
