"""model/remote.py and model/chatwire.py: the backend for OpenAI-compatible servers, from request
building to real runs.

vLLM, SGLang and LMDeploy need a GPU and Ollama is not installable here; llama.cpp's server runs in
tests/test_llamacpp_server.py when it has been built. Here the server is the stand-in of
tests/openai_standin.py, a real HTTP server that validates every request against the openai package's
own types and streams SSE as the spec says. The backend talks to it through the real openai client,
the CLI through real processes.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import openai
import pytest
from liverun import VIDNARRATE, LiveRun, collect, of_type, short_run_root, wait_for
from openai_standin import StandIn
from realparts import free_port, make_clip

from model.chatwire import (
    RemoteFrame,
    encode_frame,
    image_part,
    sampling_params,
    server_reason,
    subsample,
    window_message,
    yes_probability,
)
from model.errors import RequestRefused, ServerNotReady, ServerSetupError
from model.remote import RemoteBackend, make_client, wait_for_models
from model.remotestate import MediaCache, next_pause, retry_after
from stream.bus import RunPaths, Subscriber
from stream.config import RemoteConfig, apply_overrides, is_remote_model, load_config
from stream.errors import ConfigError
from stream.messages import Caption as CaptionMessage
from stream.pipeline import inference_options


def frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (360, 640, 3), dtype=np.uint8) for _ in range(n)]


def fake(i: int) -> RemoteFrame:
    return RemoteFrame(url=f"data:image/jpeg;base64,{i}", uuid=f"u{i}", width=4, height=4)


_OPENED: list[RemoteBackend] = []


def connect(url: str, **settings: Any) -> RemoteBackend:
    """``RemoteBackend.connect``, closed after the test (its HTTP connections with it)."""
    backend = RemoteBackend.connect(url, **settings)
    _OPENED.append(backend)
    return backend


@pytest.fixture(autouse=True)
def close_backends() -> Iterator[None]:
    yield
    while _OPENED:
        _OPENED.pop().close()


@pytest.fixture
def standin() -> Iterator[StandIn]:
    server = StandIn(answer="fixed", text="A person walks.").start()
    yield server
    server.down()


@pytest.fixture
def vllm() -> Iterator[StandIn]:
    server = StandIn(answer="fixed", text="A person walks.", owned_by="vllm").start()
    yield server
    server.down()


# -- request building (no server) -------------------------------------------------------------------
def test_a_window_is_one_user_message_context_then_frames_then_prompt() -> None:
    message = window_message([fake(1), fake(2)], "Describe.", context="Earlier: a cat.", max_images=16)
    assert message["role"] == "user"
    assert message["content"] == [
        {"type": "text", "text": "Earlier: a cat."},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,1"}},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,2"}},
        {"type": "text", "text": "Describe."},
    ]
    bare = window_message([fake(1)], "Describe.", context=None, max_images=16)
    assert [p["type"] for p in bare["content"]] == ["image_url", "text"]


def test_frames_beyond_max_images_are_subsampled_uniformly_keeping_the_newest() -> None:
    picked = subsample(list(range(40)), 16)
    assert len(picked) == 16 and picked[0] == 0 and picked[-1] == 39
    gaps = {b - a for a, b in zip(picked, picked[1:], strict=False)}
    assert gaps <= {2, 3}, "evenly spread"
    assert subsample(list(range(5)), 16) == [0, 1, 2, 3, 4]
    assert subsample(list(range(5)), 1) == [4]
    message = window_message([fake(i) for i in range(20)], "p", context=None, max_images=4)
    urls = [p["image_url"]["url"] for p in message["content"] if p["type"] == "image_url"]
    assert urls == [f"data:image/jpeg;base64,{i}" for i in (0, 6, 13, 19)]


def test_vllm_media_parts_carry_the_uuid_and_omit_what_the_server_holds() -> None:
    frame = fake(7)
    assert image_part(frame, with_uuid=False, held=False) == {
        "type": "image_url",
        "image_url": {"url": frame.url},
    }
    assert image_part(frame, with_uuid=True, held=False)["uuid"] == "u7"
    assert image_part(frame, with_uuid=True, held=True) == {
        "type": "image_url",
        "image_url": None,
        "uuid": "u7",
    }


def test_a_frame_is_downscaled_and_jpeg_encoded_once_into_its_data_uri() -> None:
    (pixels,) = frames(1)
    frame = encode_frame(pixels, 448, 85)
    assert (frame.width, frame.height) == (448, 252)
    assert frame.url.startswith("data:image/jpeg;base64,/9j/")
    assert encode_frame(pixels, 448, 85).uuid == frame.uuid, "the id is the content's"
    assert encode_frame(frames(1, seed=1)[0], 448, 85).uuid != frame.uuid
    small = encode_frame(pixels[:100, :100], 448, 85)
    assert (small.width, small.height) == (100, 100), "never upscaled"


def test_yes_probability_from_logprobs_else_the_first_word() -> None:
    top = [("Yes", math.log(0.6)), (" no", math.log(0.2)), ("Maybe", math.log(0.2))]
    assert yes_probability(top, "Yes") == pytest.approx(0.75)
    assert yes_probability(None, "Yes, there is.") == 1.0
    assert yes_probability([], "no") == 0.0
    assert yes_probability(None, "") == 0.0


def test_decodings_map_to_chat_parameters() -> None:
    assert sampling_params("greedy") == {"temperature": 0.0}
    assert sampling_params("sampling") == {"temperature": 0.7, "top_p": 0.8}
    with pytest.raises(ValueError, match="decoding 'fast'"):
        sampling_params("fast")


def test_the_server_s_reason_is_read_from_openai_and_vllm_error_bodies() -> None:
    request = openai.DefaultHttpxClient().build_request("POST", "http://x/v1/chat/completions")
    import httpx2

    def error(body: Any) -> openai.APIStatusError:
        response = httpx2.Response(400, request=request, json=body)
        return openai.BadRequestError("Error code: 400", response=response, body=body)

    assert server_reason(error({"message": "too long", "type": "BadRequestError"})) == "too long"
    assert server_reason(error({"error": {"message": "bad image"}})) == "bad image"


def test_model_remote_settings_come_from_a_file_flags_or_set_and_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "remote.toml"
    path.write_text(
        '[model]\nname = "http://gpu:8000/v1"\n[model.remote]\nmodel = "minicpm"\nmax_images = 8\n'
    )
    config = load_config(path)
    assert is_remote_model(config.model.name) and not is_remote_model("openbmb/MiniCPM-V-2_6")
    assert config.model.remote == RemoteConfig(model="minicpm", max_images=8)
    config = apply_overrides(config, ["model.remote.jpeg_quality=70", "model.remote.timeout=5"])
    assert (config.model.remote.jpeg_quality, config.model.remote.timeout) == (70, 5.0)
    with pytest.raises(ConfigError, match=r"model.remote.max_concurrency: 0 is out of range \[1, 256\]"):
        apply_overrides(config, ["model.remote.max_concurrency=0"])
    with pytest.raises(ConfigError, match="unknown key model.remote.url"):
        apply_overrides(config, ["model.remote.url=x"])
    options = inference_options(config, run_id="r", run_dir=str(tmp_path), streams={"cam": "ring"})
    assert options.model == "http://gpu:8000/v1" and options.remote.jpeg_quality == 70
    assert RemoteConfig().resolved_api_key() == os.environ.get("OPENAI_API_KEY", "")
    assert RemoteConfig(api_key="k").resolved_api_key() == "k"


# -- the backend against the stand-in ---------------------------------------------------------------
def test_a_caption_streams_its_tokens_and_carries_the_stream_as_user() -> None:
    server = StandIn(answer="tiny").start()  # the tiny model answers from the images it decodes
    try:
        backend = connect(server.url, max_images=3).for_user("yard")
        assert backend.model == server.model and not backend.media_cache, "the one model it serves"
        encoded = backend.encode_frames(frames(5))
        pieces: list[str] = []
        text = backend.describe(
            encoded, "Describe.", context="Earlier: x", max_new_tokens=6, on_text=pieces.append
        )
        assert text and "".join(pieces) == text, "streamed to on_text"
        (record,) = server.chat_records()
        assert record.user == "yard" and record.stream and record.max_tokens == 6
        assert record.order == ["text", "image_url", "image_url", "image_url", "text"]
        assert record.texts == ["Earlier: x", "Describe."]
        assert [size for _, size in record.images] == [len(encoded[i].url) for i in (0, 2, 4)]
        assert backend.status()["state"] == "ok" and backend.status()["requests"] == 1
    finally:
        server.down()


def test_vllm_gets_each_frame_once_and_its_uuid_after(vllm: StandIn) -> None:
    backend = connect(vllm.url).for_user("cam")
    assert backend.media_cache, "the server said it is vLLM"
    encoded = backend.encode_frames(frames(8))
    for start in range(0, 5):  # overlapping windows of 4 frames, one frame newer each time
        assert backend.describe(encoded[start : start + 4], "Describe.") == "A person walks."
    sent: dict[str, int] = {}
    for record in vllm.chat_records():
        for uuid, size in record.images:
            assert uuid is not None
            sent[uuid] = sent.get(uuid, 0) + (size > 0)
    assert sent == {f.uuid: 1 for f in encoded}, "every frame's bytes went over the wire exactly once"


def test_a_server_that_lost_its_media_cache_gets_the_frames_again(vllm: StandIn) -> None:
    backend = connect(vllm.url)
    encoded = backend.encode_frames(frames(3))
    backend.describe(encoded, "Describe.")
    vllm.down()
    vllm.up()  # a restarted server: its cache is empty, the backend still thinks it holds them
    assert backend.describe(encoded, "Describe.") == "A person walks."
    # The uuid-only request was refused (a cache miss: the stand-in records only what it accepts),
    # then the frames went again in full.
    first, resent = vllm.chat_records()
    assert [uuid for uuid, _ in resent.images] == [uuid for uuid, _ in first.images]
    assert all(size > 0 for _, size in resent.images)
    assert backend.status()["media_cache_misses"] == 1 and backend.status()["refused"] == 0


def test_media_ids_are_given_up_on_a_server_that_never_finds_them(caplog: pytest.LogCaptureFixture) -> None:
    server = StandIn(answer="fixed", text="A person walks.", owned_by="vllm", keep_media=False).start()
    try:
        backend = connect(server.url).for_user("cam")
        encoded = backend.encode_frames(frames(6))
        for start in range(4):
            assert backend.describe(encoded[start : start + 3], "Describe.") == "A person walks."
        assert backend.status()["media_cache_misses"] == 3 and not backend.media_cache
        assert "frames go in full" in caplog.text
        last = server.chat_records()[-1]
        assert all(uuid is None and size > 0 for uuid, size in last.images), "no ids once given up"
    finally:
        server.down()


def test_the_pause_before_asking_again_is_the_retry_after_else_a_doubling_backoff() -> None:
    assert next_pause(0.5, None) == (0.5, 1.0)
    assert next_pause(8.0, None) == (8.0, 10.0), "doubling stops at 10 s"
    assert next_pause(10.0, None) == (10.0, 10.0)
    assert next_pause(2.0, 7.0) == (7.0, 2.0), "the server's wait, the backoff kept for later"
    assert next_pause(2.0, 0.0) == (0.5, 2.0), "a Retry-After of 0 must not spin"


def test_given_up_media_ids_come_back_after_their_time_or_at_once_after_an_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = MediaCache(True, reprobe_after=600.0, url="http://gpu-3:8000/v1")
    assert cache.enabled(0.0) and not MediaCache(False).enabled(0.0)
    cache.add(["u1"])
    assert [cache.missed(t) for t in (1.0, 2.0, 3.0)] == [False, False, True], "3 in a row give up"
    assert not cache.enabled(3.0) and not cache.enabled(602.9) and "u1" not in cache
    with caplog.at_level(logging.INFO, logger="model.remote"):
        assert cache.enabled(603.0), "tried again 600 s later"
    assert "model server http://gpu-3:8000/v1: media uuids are tried again" in caplog.text
    cache.missed(604.0)
    cache.found()  # a hit ends the misses in a row
    assert [cache.missed(t) for t in (605.0, 606.0, 607.0)] == [False, False, True]
    cache.add(["u2"])
    cache.reset()  # a request went through after an outage: maybe another server
    assert cache.enabled(607.0) and "u2" not in cache and cache.misses == 0


def test_media_ids_are_tried_again_when_the_server_is_back_from_an_outage() -> None:
    server = StandIn(answer="fixed", text="A person walks.", owned_by="vllm", keep_media=False).start()
    try:
        backend = connect(server.url, timeout=5.0).for_user("cam")
        encoded = backend.encode_frames(frames(6))
        for start in range(4):
            backend.describe(encoded[start : start + 3], "Describe.")
        assert not backend.media_cache, "given up on a server that never finds them"
        server.down()  # replaced by one that keeps them (an upgraded vLLM, say)
        server.keep_media = True
        result: list[str] = []
        worker = threading.Thread(target=lambda: result.append(backend.describe(encoded[:3], "Describe.")))
        worker.start()
        wait_for(lambda: backend.status()["state"] == "unreachable", 30, "the outage")
        server.up()
        worker.join(60)
        assert result == ["A person walks."] and backend.media_cache, "ids on again after the outage"
        backend.describe(encoded[2:5], "Describe.")
        backend.describe(encoded[3:6], "Describe.")
        with_ids, reused = server.chat_records()[-2:]
        assert all(uuid is not None and size > 0 for uuid, size in with_ids.images)
        assert [size > 0 for _, size in reused.images] == [False, False, True], "held frames by uuid only"
    finally:
        server.down()


def test_the_per_request_log_line_is_quiet_for_our_server_only(
    standin: StandIn, caplog: pytest.LogCaptureFixture
) -> None:
    other = StandIn(answer="fixed").start()
    try:
        backend = RemoteBackend.connect(standin.url)
        assert logging.getLogger("httpx2").level == logging.NOTSET, "no level set process-wide"
        caplog.set_level(logging.INFO, logger="httpx2")
        backend.chat("Hello.")
        with httpx2.Client() as client:
            client.get(other.url + "/models")
        lines = [r.getMessage() for r in caplog.records if r.name == "httpx2"]
        assert not any("chat/completions" in line for line in lines), lines
        assert any(other.url in line for line in lines), "another client of the library keeps its line"
        backend.close()
        caplog.clear()
        with httpx2.Client() as client:
            client.get(standin.url + "/models")
        assert any(standin.url in r.getMessage() for r in caplog.records), "the filter left with the backend"
    finally:
        other.down()


def test_yes_probabilities_by_logprobs_or_by_the_first_word(standin: StandIn) -> None:
    backend = connect(standin.url).for_user("door")
    encoded = backend.encode_frames(frames(2))
    standin.yes_p = 0.3
    assert backend.yes_probabilities(encoded, ["Is the door open?", "Is it dark?"]) == [
        pytest.approx(0.3),
        pytest.approx(0.3),
    ]
    record = standin.chat_records()[-1]
    assert record.logprobs and record.max_tokens == 1 and not record.stream and record.user == "door"
    assert record.texts[-1] == "Is it dark? Answer yes or no."
    standin.logprobs, standin.yes_p = False, 0.9  # a server without logprobs: the word decides
    assert backend.yes_probabilities(encoded, ["Is the door open?"]) == [1.0]


def test_a_server_that_refuses_logprobs_is_asked_by_the_word() -> None:
    server = StandIn(answer="fixed", refuse_logprobs=True).start()
    try:
        backend = connect(server.url)
        encoded = backend.encode_frames(frames(1))
        assert backend.yes_probabilities(encoded, ["Is it open?", "Is it dark?"]) == [1.0, 1.0]
        assert [r.logprobs for r in server.chat_records()] == [False, False], "asked once with them"
    finally:
        server.down()


def test_a_question_refused_with_and_without_logprobs_leaves_them_on(standin: StandIn) -> None:
    backend = connect(standin.url)
    encoded = backend.encode_frames(frames(1))
    standin.fail(400, "This model's maximum context length is 8192 tokens.", times=2)
    with pytest.raises(RequestRefused, match="maximum context length"):
        backend.yes_probabilities(encoded, ["Is it open?"])
    assert backend.yes_probabilities(encoded, ["Is it open?"]) == [pytest.approx(0.8)], "by logprobs"
    assert [r.logprobs for r in standin.chat_records()] == [True, False, True]


def test_chat_is_a_text_only_turn(standin: StandIn) -> None:
    backend = connect(standin.url)
    pieces: list[str] = []
    assert (
        backend.chat("Summarise: a cat sat.", max_new_tokens=40, on_text=pieces.append) == "A person walks."
    )
    (record,) = standin.chat_records()
    assert record.images == [] and record.texts == ["Summarise: a cat sat."] and record.user is None
    assert pieces == ["A pe", "rson", " wal", "ks."], "each SSE chunk as it came"


def test_a_refused_request_names_the_server_s_reason() -> None:
    server = StandIn(answer="fixed", max_images=2).start()  # vLLM's --limit-mm-per-prompt
    try:
        backend = connect(server.url, max_images=4)
        with pytest.raises(RequestRefused, match=r"refused the request \(400\): At most 2 image\(s\)"):
            backend.describe(backend.encode_frames(frames(4)), "Describe.")
        server.fail(400, "This model's maximum context length is 8192 tokens.")
        with pytest.raises(RequestRefused, match="maximum context length is 8192"):
            backend.describe(backend.encode_frames(frames(1)), "Describe.")
        assert backend.status()["refused"] == 2 and backend.status()["state"] == "ok"
    finally:
        server.down()


def test_an_outage_is_retried_until_the_server_is_back(standin: StandIn) -> None:
    backend = connect(standin.url, timeout=5.0)
    encoded = backend.encode_frames(frames(2))
    standin.fail(503, "overloaded", times=2)
    assert backend.describe(encoded, "Describe.") == "A person walks.", "5xx: retried"
    assert backend.status()["failures"] == 2
    standin.down()
    result: list[str] = []
    worker = threading.Thread(target=lambda: result.append(backend.describe(encoded, "Describe.")))
    worker.start()
    wait_for(lambda: backend.status()["state"] == "unreachable", 30, "the backend to see the outage")
    assert "unreachable" in str(backend.status()["error"])
    standin.up()
    worker.join(60)
    assert result == ["A person walks."] and backend.status()["state"] == "ok"


def test_retry_after_is_read_as_seconds_an_http_date_or_openai_s_milliseconds() -> None:
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert retry_after(httpx2.Headers({"Retry-After": "7"}), now) == 7.0
    assert retry_after(httpx2.Headers({"retry-after": date}), now) == pytest.approx(30.0)
    assert retry_after(httpx2.Headers({"retry-after-ms": "250", "Retry-After": "7"}), now) == 0.25
    assert (
        retry_after(httpx2.Headers({"Retry-After": email.utils.formatdate(now - 5, usegmt=True)}), now) == 0
    )
    assert retry_after(httpx2.Headers({"Retry-After": "86400"}), now) == 120.0, "capped"
    assert retry_after(httpx2.Headers({"Retry-After": "soon"}), now) is None
    assert retry_after(httpx2.Headers({"Retry-After": "nan"}), now) is None
    assert retry_after(httpx2.Headers({}), now) is None


def test_a_429_is_rate_limited_not_unreachable_and_waits_the_server_s_retry_after(standin: StandIn) -> None:
    backend = connect(standin.url, timeout=5.0)
    encoded = backend.encode_frames(frames(1))
    standin.fail(429, "Rate limit reached for requests", times=1, headers={"Retry-After": "2"})
    result: list[str] = []
    worker = threading.Thread(target=lambda: result.append(backend.describe(encoded, "Describe.")))
    worker.start()
    wait_for(lambda: backend.status()["state"] == "rate_limited", 30, "the backend to show the 429")
    assert "Rate limit reached" in str(backend.status()["error"]) and "after 2 s" in str(
        backend.status()["error"]
    )
    worker.join(60)
    assert result == ["A person walks."], "the request went through by itself"
    limited, retried = standin.chat_records()
    assert retried.at - limited.at >= 1.9, "waited the 2 s Retry-After (the backoff would be 0.5 s)"
    # An HTTP-date Retry-After, 3 s ahead (whole seconds: at least 2 s from now).
    standin.fail(
        429, "slow down", headers={"Retry-After": email.utils.formatdate(time.time() + 3, usegmt=True)}
    )
    assert backend.describe(encoded, "Describe.") == "A person walks."
    limited, retried = standin.chat_records()[-2:]
    assert retried.at - limited.at >= 1.9
    status = backend.status()
    assert (status["state"], status["rate_limited"], status["failures"], status["refused"]) == ("ok", 2, 0, 0)


def test_a_429_without_retry_after_backs_off_and_shows_rate_limited(standin: StandIn) -> None:
    backend = connect(standin.url, timeout=5.0)
    encoded = backend.encode_frames(frames(1))
    standin.fail(429, "Too Many Requests", times=3)  # retried after 0.5, 1 and 2 s
    result: list[str] = []
    worker = threading.Thread(target=lambda: result.append(backend.describe(encoded, "Describe.")))
    worker.start()
    wait_for(lambda: backend.status()["state"] == "rate_limited", 30, "the backend to show the 429")
    worker.join(60)
    assert result == ["A person walks."] and backend.status()["state"] == "ok"
    at = [r.at for r in standin.chat_records()]
    gaps = np.diff(at)
    assert len(gaps) == 3 and gaps[0] >= 0.45 and gaps[1] >= 0.95 and gaps[2] >= 1.95, gaps
    assert backend.status()["rate_limited"] == 3 and backend.status()["failures"] == 0


def test_a_500_or_an_unfinished_stream_that_keeps_coming_for_one_request_is_its_refusal(
    standin: StandIn,
) -> None:
    """llama.cpp's server answers a prompt beyond its context with a 500, or, streaming, with an
    answer that just ends (seen with the real one, tests/test_llamacpp_server.py): retrying it
    forever would stall its stream."""
    backend = connect(standin.url)
    encoded = backend.encode_frames(frames(1))
    standin.fail(500, "Prompt exceeds n_ctx: 8200 > 8192", times=3)
    with pytest.raises(RequestRefused, match=r"server error 500: Prompt exceeds n_ctx"):
        backend.describe(encoded, "Describe.")
    assert backend.status()["failures"] == 2 and backend.status()["refused"] == 1
    assert backend.status()["state"] == "ok", "the server answered"
    standin.fail(500, "a hiccup", times=2)
    assert backend.describe(encoded, "Describe.") == "A person walks.", "fewer in a row: retried"
    # Streaming, llama.cpp just ends the answer before its first chunk instead.
    standin.unfinished_streams = 3
    with pytest.raises(RequestRefused, match=r"ended the streamed answer unfinished"):
        backend.describe(encoded, "Describe.")
    standin.unfinished_streams = 2
    assert backend.describe(encoded, "Describe.") == "A person walks.", "fewer in a row: retried"
    assert backend.status()["refused"] == 2 and backend.status()["state"] == "ok"
    # A server that fails every request so (a dead engine behind a live HTTP front) is shown as
    # down, while each request is still refused rather than held.
    standin.fail(500, "engine dead", times=9)
    for _ in range(3):
        with pytest.raises(RequestRefused, match="engine dead"):
            backend.describe(encoded, "Describe.")
    status = backend.status()
    assert status["state"] == "unreachable" and "fails every request" in str(status["error"]), status
    assert backend.describe(encoded, "Describe.") == "A person walks."
    assert backend.status()["state"] == "ok", "one answer: up again"


def test_an_answer_cut_mid_stream_is_asked_again_without_repeating_a_piece(standin: StandIn) -> None:
    backend = connect(standin.url)
    standin.cut_streams = 1
    pieces: list[str] = []
    assert (
        backend.describe(backend.encode_frames(frames(1)), "Describe.", on_text=pieces.append)
        == "A person walks."
    )
    assert "".join(pieces) == "A person walks.", pieces
    assert pieces[0] == "A pe" and len(standin.chat_records()) == 2 and backend.status()["failures"] == 1


def test_an_interrupt_ends_the_retries(standin: StandIn) -> None:
    backend = connect(standin.url)
    standin.down()
    stop = threading.Event()
    backend.set_interrupt(stop.is_set)
    result: list[str] = []
    worker = threading.Thread(target=lambda: result.append(backend.describe([], "Describe.")))
    worker.start()
    wait_for(lambda: backend.status()["state"] == "unreachable", 30, "the outage")
    stop.set()
    worker.join(10)
    assert result == [""] and not worker.is_alive()


def test_connect_says_in_one_line_why_a_server_cannot_be_used() -> None:
    server = StandIn(api_key="sekrit", extra_models=("other",)).start()
    try:
        with pytest.raises(ServerSetupError, match="API key was refused"):
            RemoteBackend.connect(server.url, api_key="wrong")
        with pytest.raises(ServerSetupError, match="serves 2 models .*name one with model.remote.model"):
            RemoteBackend.connect(server.url, api_key="sekrit")
        with pytest.raises(ServerSetupError, match="does not serve model.remote.model 'nope'"):
            RemoteBackend.connect(server.url, api_key="sekrit", model="nope")
        assert connect(server.url, api_key="sekrit", model="other").model == "other"
    finally:
        server.down()
    with pytest.raises(ServerSetupError, match="unreachable"):
        RemoteBackend.connect(f"http://127.0.0.1:{free_port()}/v1")


def test_a_server_still_loading_is_waited_for_at_start_and_one_that_stays_so_is_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """llama.cpp's server answers 503 "Loading model" until its model is loaded, a proxy may answer
    429: connecting asks again (the Retry-After honoured) instead of giving up on the first answer."""
    server = StandIn().start()
    slept: list[float] = []
    try:
        server.fail_models(429, "slow down", times=1)
        server.fail_models(503, "Loading model", times=2, headers={"Retry-After": "2"})
        client = make_client(server.url, "", 10.0, lambda n: None)
        with caplog.at_level(logging.WARNING, logger="model.remote"):
            served = wait_for_models(client, server.url, 60.0, sleep=slept.append)
        assert [m.id for m in served] == [server.model]
        assert slept == [0.5, 2.0, 2.0], "the backoff (a 429 without Retry-After), then the 503s' own"
        waiting = [r.getMessage() for r in caplog.records if "asking again" in r.getMessage()]
        assert len(waiting) == 1 and "answered 429: slow down" in waiting[0]
        server.fail_models(503, "Loading model", times=1000)
        with pytest.raises(
            ServerNotReady, match=r"answered 503: Loading model \(still, after waiting 1\.5 s\)"
        ):
            RemoteBackend.connect(server.url, startup_wait=1.5)
        server.model_faults.clear()
        server.fail_models(500, "engine died")  # not a wait: the server is broken
        with pytest.raises(ServerSetupError, match="answered 500: engine died") as refused:
            RemoteBackend.connect(server.url)
        assert not isinstance(refused.value, ServerNotReady)
        client.close()
    finally:
        server.down()


# -- through the real CLI ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    return {
        "yard": make_clip(folder / "yard.mp4", size="640x360", fps=25.0, seconds=20.0),
        "door": make_clip(folder / "door.mp4", size="320x240", fps=25.0, seconds=20.0),
    }


@pytest.mark.integration
def test_a_server_that_cannot_be_used_stops_the_run_with_one_line(
    tmp_path: Path, clips: dict[str, Path]
) -> None:
    server = StandIn(api_key="sekrit").start()
    try:

        def run(*args: str, key: str = "") -> subprocess.CompletedProcess[str]:
            env = {**os.environ, "VIDNARRATE_RUN_ROOT": str(tmp_path / "runs"), "OPENAI_API_KEY": key}
            argv = [str(VIDNARRATE), "run", "--source", str(clips["yard"]), *args]
            return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)

        down = run("--model", f"http://127.0.0.1:{free_port()}/v1")
        assert down.returncode == 2 and len(down.stderr.strip().splitlines()) == 1, down.stderr
        assert "unreachable" in down.stderr
        refused = run("--model", server.url, key="wrong")
        assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert "API key was refused" in refused.stderr
        unknown = run("--model", server.url, "--set", "model.remote.model=llava", key="sekrit")
        assert unknown.returncode == 2 and len(unknown.stderr.strip().splitlines()) == 1, unknown.stderr
        assert "does not serve model.remote.model 'llava'" in unknown.stderr
        assert server.chat_records() == [], "nothing started"
    finally:
        server.down()


REMOTE_RUN = ["--window", "4", "--stride", "2", "--loop", "--set", "captions.stream_tokens=true"]


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_two_streams_caption_through_the_server_with_partials(clips: dict[str, Path]) -> None:
    server = StandIn(answer="tiny", owned_by="vllm").start()
    try:
        with short_run_root() as root:
            run = LiveRun(
                [f"yard={clips['yard']}", f"door={clips['door']}"],
                root,
                extra=["--model", server.url, *REMOTE_RUN],
            )
            try:
                run.start()

                def enough(got: list[dict[str, Any]]) -> bool:
                    return all(len(of_type(got, "caption", s)) >= 2 for s in ("yard", "door"))

                got = collect(run.ws_url, enough, timeout=240)
                assert enough(got), run.log()
                assert {m["stream"] for m in of_type(got, "partial")} == {"yard", "door"}
                for caption in of_type(got, "caption"):
                    assert caption["model"] == server.model and caption["text"]
                status = of_type(got, "status")[-1]
                assert status["backend"]["state"] == "ok" and status["backend"]["url"] == server.url
                for name in ("yard", "door"):
                    assert status["streams"][name]["encodes_per_frame"] == 1.0
                ask = {"type": "ask", "id": "q-1", "stream": "door", "question": "Who is at the door?"}
                asked = collect(
                    run.ws_url,
                    lambda got: any(m.get("id") == "q-1" for m in got),
                    timeout=120,
                    send=[ask],
                )
                (answer,) = [m for m in asked if m.get("id") == "q-1"]
                assert answer["type"] == "answer" and answer["stream"] == "door" and answer["frame_times"]
                assert any(
                    r.texts[-1] == "Who is at the door?" and r.user == "door" for r in server.chat_records()
                )
                users = {r.user for r in server.chat_records()}
                assert users == {"yard", "door"}, "each request names its stream"
                # The tiny model takes seconds a window on these cores: both streams' windows were in
                # flight together, never two of one stream.
                assert server.max_in_flight == 2
                assert run.stop() == 0
            finally:
                run.kill()
    finally:
        server.down()


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_refusal_is_a_caption_error_and_an_outage_heals_by_itself(clips: dict[str, Path]) -> None:
    server = StandIn(answer="fixed", text="A yard.").start()
    try:
        with short_run_root() as root:
            run = LiveRun([f"yard={clips['yard']}"], root, extra=["--model", server.url, *REMOTE_RUN])
            try:
                run.start()
                captions = lambda got: of_type(got, "caption", "yard")  # noqa: E731
                got = collect(run.ws_url, lambda g: len(captions(g)) >= 1, timeout=120)
                assert captions(got), run.log()
                server.fail(400, "This model's maximum context length is 8192 tokens.")

                def refused(got: list[dict[str, Any]]) -> bool:
                    return any(
                        s["streams"].get("yard", {}).get("caption_errors") for s in of_type(got, "status")
                    )

                got = collect(run.ws_url, refused, timeout=120)
                yard = [s for s in of_type(got, "status") if refused([s])][-1]["streams"]["yard"]
                assert "maximum context length is 8192" in yard["last_caption_error"]
                assert run.proc is not None and run.proc.poll() is None, "not a crash"

                server.down()

                def unreachable(got: list[dict[str, Any]]) -> bool:
                    return any(
                        (s.get("backend") or {}).get("state") == "unreachable" for s in of_type(got, "status")
                    )

                assert unreachable(collect(run.ws_url, unreachable, timeout=120)), run.log()
                server.up()

                def healed(got: list[dict[str, Any]]) -> bool:  # a status at ~1 Hz may trail the captions
                    ok = any((s.get("backend") or {}).get("state") == "ok" for s in of_type(got, "status"))
                    return len(captions(got)) >= 2 and ok

                assert healed(collect(run.ws_url, healed, timeout=120)), "captions resume by themselves"
                assert run.stop() == 0
            finally:
                run.kill()
    finally:
        server.down()


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_file_run_through_a_server_stops_by_itself_after_its_tail_caption(tmp_path: Path) -> None:
    """A 7-s file without --loop, captioned by a server that takes 2 s a window (on the pool): the
    run ends by itself, exit 0, once the tail window's caption is published (heard on the inference
    process's own bus)."""
    clip = make_clip(tmp_path / "short.mp4", size="320x240", fps=25.0, seconds=7.0)
    server = StandIn(answer="fixed", text="The tail.", delay=2.0).start()
    try:
        with short_run_root() as root:
            extra = ["--model", server.url, "--window", "4", "--stride", "4"]
            run = LiveRun([f"short={clip}"], root, extra=extra).launch()
            assert run.proc is not None
            bus: Subscriber | None = None
            try:
                wait_for(lambda: bool(run.run_dirs), 30, "the run directory")
                run_dir = run.run_dirs[0]
                bus = Subscriber(
                    [RunPaths(run_id=run_dir.name, run_dir=run_dir).publisher_endpoint("inference")]
                )
                assert run.proc.wait(150) == 0, run.log()
                heard = []
                while (message := bus.recv(timeout=1.0)) is not None:
                    heard.append(message)
            finally:
                if bus is not None:
                    bus.close()
                run.kill()
            captions = [m for m in heard if isinstance(m, CaptionMessage) and m.stream == "short"]
            assert captions and captions[-1].t_end > 4.5, f"the tail is captioned: {captions}\n{run.log()}"
            assert all(c.text == "The tail." for c in captions)
    finally:
        server.down()


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_ctrl_c_does_not_wait_for_a_slow_server(clips: dict[str, Path]) -> None:
    """A request blocked reading a server that takes a minute cannot be woken; Ctrl-C stops the
    run at once all the same (well within the supervisor's 5-s kill)."""
    server = StandIn(answer="fixed", delay=60.0).start()
    try:
        with short_run_root() as root:
            run = LiveRun([f"yard={clips['yard']}"], root, extra=["--model", server.url, *REMOTE_RUN])
            try:
                run.start()
                wait_for(lambda: server.in_flight >= 1, 120, "a request in flight")
                asked = time.monotonic()
                assert run.stop() == 0, run.log()
                assert time.monotonic() - asked < 4.0, run.log()
                assert "killed" not in run.log().lower(), run.log()
            finally:
                run.kill()
    finally:
        server.down()


def _is_rule(record: Any) -> bool:
    return bool(record.max_tokens == 1 and record.texts and record.texts[-1].endswith("yes or no."))


def _is_summary(record: Any) -> bool:
    return not record.images and not _is_rule(record)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_slow_rule_and_summary_requests_hold_no_other_stream_s_captions(
    tmp_path: Path, clips: dict[str, Path]
) -> None:
    """A server that sits on alert-rule and summary requests: those go to the request pool like
    captions, so while both kinds are held the other stream's captions keep coming; once they are
    answered the stream the rule was for captions again."""
    config = tmp_path / "rules.toml"
    config.write_text('[[alerts]]\nname = "visitor"\nstreams = ["door"]\nquestion = "Is someone there?"\n')
    server = StandIn(answer="fixed", text="A yard.").start()
    server.hold = lambda record: _is_rule(record) or _is_summary(record)
    try:
        with short_run_root() as root:
            extra = ["--model", server.url, "--config", str(config), "--set", "summaries.every=4"]
            run = LiveRun([f"yard={clips['yard']}", f"door={clips['door']}"], root, extra=extra + REMOTE_RUN)
            try:
                run.start()

                def both_held() -> bool:
                    held = list(server.holding)
                    return any(_is_rule(r) and r.user == "door" for r in held) and any(map(_is_summary, held))

                wait_for(both_held, 180, "a rule request and a summary request held by the server")
                got = collect(run.ws_url, lambda g: len(of_type(g, "caption", "yard")) >= 2, timeout=120)
                assert len(of_type(got, "caption", "yard")) >= 2, run.log()
                assert both_held(), "the captions came while both requests were still held"
                server.release.set()
                got = collect(run.ws_url, lambda g: bool(of_type(g, "caption", "door")), timeout=120)
                assert of_type(got, "caption", "door"), "door captions again once its rule is answered"
                assert run.stop() == 0, run.log()
            finally:
                server.release.set()
                run.kill()
    finally:
        server.release.set()
        server.down()


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_caption_and_summarize_through_a_server(tmp_path: Path) -> None:
    """``vidnarrate caption FILE --model URL``: every window of the file captioned by the server (the
    same backend as ``run``: its frames as data URIs, ``user`` the file's stream name), the summary
    from it too, and ``summarize --model URL`` over the stored captions; a server that cannot be used
    is one line and exit 2 before anything is written."""
    clip = make_clip(tmp_path / "walk.mp4", size="320x240", fps=10.0, seconds=20.0)
    out, summary, store = tmp_path / "walk.jsonl", tmp_path / "walk.md", tmp_path / "store.db"
    server = StandIn(answer="fixed", text="Someone walks past.").start()
    try:
        argv = [str(VIDNARRATE), "caption", str(clip), "--model", server.url, "--out", str(out)]
        done = subprocess.run(
            [*argv, "--summary", str(summary), "--store", str(store)],
            capture_output=True,
            text=True,
            timeout=240,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        captions = [json.loads(line) for line in out.read_text().splitlines()]
        assert captions and all(c["text"] == "Someone walks past." for c in captions)
        assert all(c["model"] == server.model for c in captions) and captions[-1]["t_end"] == 20.0
        records = server.chat_records()
        windows = [r for r in records if r.images]
        assert len(windows) == len(captions) - sum(1 for c in captions if c.get("unchanged"))
        assert {r.user for r in windows} == {"walk"}
        assert any(not r.images for r in records), "the summary is a text-only turn"
        assert "Someone walks past." in summary.read_text()
        asked = len(server.chat_records())
        summarize = [
            str(VIDNARRATE),
            "summarize",
            "--store",
            str(store),
            "--model",
            server.url,
            "--no-progress",
        ]
        done = subprocess.run(summarize, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert done.returncode == 0 and "Someone walks past." in done.stdout, done.stderr[-3000:]
        assert any(not r.images for r in server.chat_records()[asked:]), "summarised by the server"
        server.down()
        out.unlink()
        down = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert down.returncode == 2 and len(down.stderr.strip().splitlines()) == 1, down.stderr
        assert "unreachable" in down.stderr and not out.exists()
    finally:
        server.down()
