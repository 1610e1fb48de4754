"""Rolling captions with the real tiny model: encode-once cache, newest-window-first, fairness, context."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.backends import LocalBackend, load_backend
from stream.captioning import Captioner, CaptionSettings

PHOTOS = sorted((Path(__file__).parent / "data" / "photos").glob("*.jpg"))


class CountingBackend:
    """The real tiny backend, counting the frames it encodes (what the encode-once cache saves)."""

    def __init__(self, backend: LocalBackend) -> None:
        self.inner = backend
        self.name = backend.name
        self.encoded = 0

    def encode_frames(self, frames, max_slice_nums):  # type: ignore[no-untyped-def]
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


def feed(captioner: Captioner, stream: str, images: list[np.ndarray], fps: float, start_seq: int = 0) -> None:
    worker = captioner.workers[stream]
    for i, image in enumerate(images):
        with worker.lock:
            worker.offer(start_seq + i, i / fps, 1000.0 + i / fps, lambda image=image: image)


def test_every_sampled_frame_is_encoded_once_and_cached_captions_equal_pixel_captions(
    backend: CountingBackend, tiny: LocalBackend
) -> None:
    captioner = Captioner(backend, settings())
    worker = captioner.add_stream("cam")
    images = list(frames(60))
    captions = []
    for i, image in enumerate(images):  # 5 fps for 12 s, captioned as it goes (no skipping)
        with worker.lock:
            worker.offer(i, i / 5, 1000 + i / 5, lambda image=image: image)
        captioner.encode_pending()
        while (job := captioner.next_job()) is not None:
            captions.append((captioner.caption(*job), job[1]))
    assert worker.counters.sampled == 12
    assert backend.encoded == 12, "each sampled frame went through the vision tower once"
    frames_captioned = sum(len(c.frame_times) for c, _ in captions)
    assert (
        frames_captioned > 2 * backend.encoded
    )  # overlapping windows reused the cache (no cache: 26 encodes)
    assert worker.counters.encodes_per_frame() == 1.0
    # A cached-embedding caption equals the model card's chat on the same frames' pixels.
    message, job = captions[2]
    pixels = [Image.fromarray(images[f.seq]) for f in job.frames]
    context = captioner.workers["cam"].settings.context_template.format(previous=captions[1][0].text)
    direct = tiny.model.chat(
        [{"role": "user", "content": [context, *pixels, captioner.prompt_for(job)]}],
        max_new_tokens=4,
        use_image_id=False,
        max_slice_nums=1,
        do_sample=False,
        top_p=None,
        top_k=None,
        temperature=None,
    )
    assert message.text == direct
    # Bounded: only what the window (and nothing else) still needs stays cached.
    assert len(worker.cache) <= worker.sampler.window_capacity


def test_live_mode_captions_the_newest_window_and_counts_the_skipped(backend: CountingBackend) -> None:
    captioner = Captioner(backend, settings(skip_stale=True))
    captioner.add_stream("cam")
    feed(captioner, "cam", list(frames(40)), fps=4.0)  # 10 s: windows ending at 2, 4, 6, 8, 10 are due
    captioner.encode_pending()
    worker, job = captioner.next_job()  # type: ignore[misc]
    assert job.t_end == 8.0 or job.t_end == 10.0
    message = captioner.caption(worker, job)
    assert message is not None
    assert message.seq == job.index - 1
    assert message.skipped == message.seq, "every earlier window was skipped, and said so"
    assert worker.counters.skipped == message.skipped
    assert captioner.next_job() is None, "no backlog is kept"


def test_streams_take_turns(backend: CountingBackend) -> None:
    captioner = Captioner(backend, settings())
    for name in ("a", "b"):
        captioner.add_stream(name)
    feed(captioner, "a", list(frames(40)), fps=4.0)
    feed(captioner, "b", list(frames(40)), fps=4.0)
    captioner.encode_pending()
    order = []
    for _ in range(6):
        worker, job = captioner.next_job()  # type: ignore[misc]
        captioner.caption(worker, job)
        order.append(worker.name)
    assert order[0::2] != order[1::2] and set(order[0::2]) | set(order[1::2]) == {"a", "b"}
    assert order.count("a") == order.count("b") == 3


def test_previous_caption_is_given_as_context(backend: CountingBackend) -> None:
    captioner = Captioner(backend, settings())
    worker = captioner.add_stream("cam")
    assert worker.context() is None
    feed(captioner, "cam", list(frames(20)), fps=4.0)
    captioner.encode_pending()
    first = captioner.caption(*captioner.next_job())  # type: ignore[misc]
    assert first is not None
    assert worker.context() == settings().context_template.format(previous=first.text)


def test_greedy_captions_are_deterministic_and_the_prompt_says_the_duration(backend: CountingBackend) -> None:
    captioner = Captioner(backend, settings())
    worker = captioner.add_stream("cam")
    feed(captioner, "cam", list(frames(20)), fps=4.0)
    captioner.encode_pending()
    _, job = captioner.next_job()  # type: ignore[misc]
    assert captioner.prompt_for(job) == f"Describe the {job.t_end - job.t_start:.0f} seconds."
    used, embeddings = worker.embeddings_for(job.frames)
    texts = {backend.describe(embeddings, "Describe.", max_new_tokens=6, decoding="greedy") for _ in range(2)}
    assert len(texts) == 1


def test_answer_uses_the_current_window(backend: CountingBackend) -> None:
    captioner = Captioner(backend, settings())
    worker = captioner.add_stream("cam")
    with pytest.raises(LookupError, match="no frames"):
        captioner.answer(worker, "Anything?")
    feed(captioner, "cam", list(frames(40)), fps=4.0)
    captioner.encode_pending()
    text, used = captioner.answer(worker, "What is there?")
    assert isinstance(text, str)
    times = [f.t for f in used]
    # 1-fps samples of the last 6 s: the stream is at t = 9.75, so (3.75, 9.75]
    assert times == [4.0, 5.0, 6.0, 7.0, 8.0, 9.0]


class SlowerThanRealTime(CountingBackend):
    """The real tiny backend on a machine too slow for real time: while each batch is encoded, the
    next ``arrive`` seconds of the stream come in (what the frame thread does during a slow batch,
    made deterministic by offering them from inside the call)."""

    def __init__(self, backend: LocalBackend, captioner_stream: tuple[Captioner, str], arrive: int) -> None:
        super().__init__(backend)
        self.captioner, self.stream = captioner_stream
        self.arrive = arrive
        self.images = list(frames(200))
        self.next_seq = 0

    def offer_seconds(self, seconds: int) -> None:
        worker = self.captioner.workers[self.stream]
        for _ in range(seconds):
            seq, image = self.next_seq, self.images[self.next_seq]
            with worker.lock:
                worker.offer(seq, float(seq), 1000.0 + seq, lambda image=image: image)
            self.next_seq += 1

    def encode_frames(self, frames, max_slice_nums):  # type: ignore[no-untyped-def]
        self.offer_seconds(self.arrive)
        return super().encode_frames(frames, max_slice_nums)


def test_windows_and_asks_are_served_when_encoding_is_slower_than_real_time(tiny: LocalBackend) -> None:
    captioner = Captioner(None, settings(window=4.0, stride=4.0, skip_stale=True))
    worker = captioner.add_stream("cam")
    slow = SlowerThanRealTime(tiny, (captioner, "cam"), arrive=5)
    captioner.backend = slow
    slow.offer_seconds(5)
    captions = []
    for _ in range(6):  # the inference loop: encode what is queued, then caption the newest due window
        captioner.encode_pending()
        taken = captioner.next_job()
        if taken is not None:
            message = captioner.caption(*taken)
            assert message is not None, f"window {taken[1].t_start}-{taken[1].t_end} s captioned from nothing"
            assert message.frames == len(taken[1].frames) == 4
            captions.append(message)
    assert len(captions) >= 5
    # An ask while frames keep coming looks at the current window, not at nothing.
    text, used = captioner.answer(worker, "What is there?")
    assert isinstance(text, str) and len(used) >= 3
    assert worker.counters.encodes_per_frame(len(worker.pending)) <= 1.0  # nothing encoded twice
    assert len(worker.cache) <= 8 and not worker.pinned  # and the cache stays bounded
