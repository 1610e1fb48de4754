"""One stream's captioning state (stream/captioning.py), and the core's actions run on the real tiny
model: encode once, cached-embedding captions equal pixel captions, slower-than-real-time encoding."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from model.backends import LocalBackend, load_backend
from stream.captioning import MAX_DUE_WINDOWS, CaptionSettings, StreamCaptions
from stream.sampler import SampledFrame
from stream.scheduler import Action, Answer, Caption, Encode, Reply, Scheduler

PHOTOS = sorted((Path(__file__).parent / "data" / "photos").glob("*.jpg"))


class CountingBackend:
    """The real tiny backend, counting the frames it encodes (what the encode-once cache saves)."""

    def __init__(self, backend: LocalBackend) -> None:
        self.inner = backend
        self.name = backend.name
        self.encoded = 0
        self.before_encode: Callable[[], None] | None = None

    def encode_frames(self, frames, max_slice_nums):  # type: ignore[no-untyped-def]
        if self.before_encode is not None:
            self.before_encode()
        self.encoded += len(frames)
        return self.inner.encode_frames(frames, max_slice_nums)

    def describe(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return self.inner.describe(*args, **kwargs)

    def ask(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return self.inner.ask(*args, **kwargs)


@pytest.fixture(scope="module")
def tiny() -> LocalBackend:
    return load_backend("tiny")


@pytest.fixture
def backend(tiny: LocalBackend) -> CountingBackend:
    return CountingBackend(tiny)


def frames(count: int, size: tuple[int, int] = (96, 64)) -> Iterator[np.ndarray]:
    """Distinct real-photo frames (a crop that moves across the committed photos)."""
    photos = [np.asarray(Image.open(p).convert("RGB")) for p in PHOTOS]
    for i in range(count):
        photo = photos[i % len(photos)]
        x = (i * 7) % max(1, photo.shape[1] - size[0])
        crop = photo[: size[1] * 2, x : x + size[0] * 2]
        yield np.asarray(Image.fromarray(crop).resize(size))


def settings(**overrides: object) -> CaptionSettings:
    base = dict(
        prompt="Describe the {duration} seconds.",
        max_new_tokens=4,
        window=6.0,
        stride=2.0,
        skip_stale=False,
        context_captions=1,
    )
    base.update(overrides)
    return CaptionSettings(**base)  # type: ignore[arg-type]


def run(core: Scheduler, backend: Any) -> list[tuple[Action, Any]]:
    """Run the core's actions on the backend until it has nothing to do (what the shells do); the
    messages as the JSON clients receive."""
    done: list[tuple[Action, Any]] = []
    while (action := core.next_action()) is not None:
        result: Any = None
        if isinstance(action, Encode):
            core.encoded(action, action.run_on(backend), ms=1.0)
        elif isinstance(action, Caption):
            result = core.captioned(action, action.run_on(backend), model_ms=1.0, wall=time.time()).to_dict()
        elif isinstance(action, Answer):
            result = core.answered(action, action.run_on(backend)).to_dict()
        elif isinstance(action, Reply):
            result = action.message.to_dict()
        done.append((action, result))
    return done


# -- one stream's state (no model) ------------------------------------------------------------------
def test_offer_keeps_one_frame_per_bucket_and_queues_its_pixels() -> None:
    stream = StreamCaptions("cam", settings())
    kept = []
    for seq in range(90):  # 30 fps for 3 s
        if stream.offer(seq, seq / 30, 1000 + seq / 30):
            stream.add_pixels(seq, f"pixels {seq}")
            kept.append(seq)
    assert kept == [0, 30, 60]
    assert [(s.seq, p) for s, p in stream.pending] == [(0, "pixels 0"), (30, "pixels 30"), (60, "pixels 60")]
    assert [j.t_end for j in stream.due] == [2.0] and stream.latest_t == pytest.approx(89 / 30)


def test_the_cache_keeps_only_what_a_window_or_an_ask_can_use() -> None:
    stream = StreamCaptions("cam", settings(window=4.0, stride=4.0))
    for seq in range(20):
        assert stream.offer(seq, float(seq), 0.0)
        stream.add_pixels(seq, None)
        stream.pending.popleft()
        stream.store(seq, f"embedding {seq}", 1.0)
        while stream.take_job() is not None:
            stream.sweep()
    # At t = 19 the next window is (16, 20]; an ask would look at (15, 19]: nothing older is kept.
    assert sorted(stream.cache) == [16, 17, 18, 19]
    stream.held = (SampledFrame(3, 3.0, 0.0),)  # a frame of the window the scheduler has taken
    stream.store(3, "embedding 3", 1.0)
    assert 3 in stream.cache
    stream.held = ()
    stream.sweep()
    assert 3 not in stream.cache


def test_live_takes_the_newest_window_and_due_windows_are_bounded() -> None:
    live = StreamCaptions("cam", settings(skip_stale=True, window=1.0, stride=1.0))
    for seq in range(MAX_DUE_WINDOWS + 11):
        live.offer(seq, float(seq), 0.0)
        live.pixels_lost(seq)
    assert len(live.due) == MAX_DUE_WINDOWS and live.counters.skipped == 10
    job = live.take_job()
    assert job is not None and job.t_end == MAX_DUE_WINDOWS + 10 and live.counters.skipped == 10 + 63
    assert live.take_job() is None


def test_context_is_the_last_captions() -> None:
    stream = StreamCaptions("cam", settings(context_captions=2, context_template="Before: {previous}"))
    assert stream.context() is None
    for text in ("one.", "two.", "three."):
        stream.history.append(text)
    assert stream.context() == "Before: two. three."
    assert StreamCaptions("cam", settings(context_captions=0)).context() is None


# -- the core's actions on the real tiny model -------------------------------------------------------
def test_every_sampled_frame_is_encoded_once_and_cached_captions_equal_pixel_captions(
    backend: CountingBackend, tiny: LocalBackend
) -> None:
    core = Scheduler(settings(), model=backend.name)
    core.add_stream("cam")
    images = list(frames(60))
    done = []
    for i, image in enumerate(images):  # 5 fps for 12 s, captioned as it goes (no skipping)
        if core.offer("cam", i, i / 5, 1000 + i / 5):
            core.add_pixels("cam", i, image)
        done += run(core, backend)
    captions = [(a, m) for a, m in done if isinstance(a, Caption)]
    status = core.status()["cam"]
    assert status["sampled"] == 12
    assert backend.encoded == 12, "each sampled frame went through the vision tower once"
    frames_captioned = sum(len(m["frame_times"]) for _, m in captions)
    assert (
        frames_captioned > 2 * backend.encoded
    )  # overlapping windows reused the cache (no cache: 26 encodes)
    assert status["encodes_per_frame"] == 1.0
    # A cached-embedding caption equals the model card's chat on the same frames' pixels.
    action, message = captions[2]
    pixels = [Image.fromarray(images[f.seq]) for f in action.job.frames]
    context = settings().context_template.format(previous=captions[1][1]["text"])
    assert action.context == context
    direct = tiny.model.chat(
        [{"role": "user", "content": [context, *pixels, action.prompt]}],
        max_new_tokens=4,
        use_image_id=False,
        max_slice_nums=1,
        do_sample=False,
        top_p=None,
        top_k=None,
        temperature=None,
    )
    assert message["text"] == direct
    assert status["cached_frames"] <= core.streams["cam"].sampler.window_capacity


def test_greedy_captions_are_deterministic(backend: CountingBackend) -> None:
    core = Scheduler(settings())
    core.add_stream("cam")
    for i, image in enumerate(frames(10)):
        if core.offer("cam", i, i / 4, 0.0):
            core.add_pixels("cam", i, image)
    encode = core.next_action()
    assert isinstance(encode, Encode)
    embeddings = backend.encode_frames(encode.pixels, 1)
    texts = {backend.describe(embeddings, "Describe.", max_new_tokens=6, decoding="greedy") for _ in range(2)}
    assert len(texts) == 1


def test_windows_and_asks_are_served_when_encoding_is_slower_than_real_time(backend: CountingBackend) -> None:
    """While each batch is encoded, the next 5 s of the stream come in (what the frame thread does
    during a slow batch, made deterministic by offering them from inside the call)."""
    core = Scheduler(settings(window=4.0, stride=4.0, skip_stale=True))
    core.add_stream("cam")
    images = list(frames(200))
    offered = 0

    def offer_seconds(seconds: int) -> None:
        nonlocal offered
        for _ in range(seconds):
            if core.offer("cam", offered, float(offered), 1000.0 + offered):
                core.add_pixels("cam", offered, images[offered])
            offered += 1

    backend.before_encode = lambda: offer_seconds(5)
    offer_seconds(5)
    captions = []
    for _ in range(6):  # the inference loop: one action at a time
        action = core.next_action()
        assert action is not None
        if isinstance(action, Encode):
            core.encoded(action, backend.encode_frames(action.pixels, action.max_slice_nums), ms=1.0)
            action = core.next_action()  # the window taken before the encode, not a newer one
            assert isinstance(action, Caption)
        assert isinstance(action, Caption)
        assert len(action.frames) == 4, (
            f"window {action.job.t_start}-{action.job.t_end} s captioned from nothing"
        )
        text = backend.describe(list(action.embeddings), action.prompt, max_new_tokens=4)
        captions.append(core.captioned(action, text, model_ms=1.0, wall=time.time()))
    assert len(captions) == 6
    # An ask looks at the current window, not at nothing.
    backend.before_encode = None
    core.submit_ask("q", "cam", "What is there?")
    answered = [m for a, m in run(core, backend) if isinstance(a, Answer)]
    assert len(answered) == 1 and len(answered[0]["frame_times"]) >= 3 and answered[0]["text"]
    status = core.status()["cam"]
    assert (
        status["encodes_per_frame"] is not None and status["encodes_per_frame"] <= 1.0
    )  # none encoded twice
    assert status["cached_frames"] <= 8  # and the cache stays bounded
