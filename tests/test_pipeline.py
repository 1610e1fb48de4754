"""The live pipeline through real processes: ``vidnarrate run`` on two files played as live (looped),
the tiny model, real websocket clients. One run serves the tests of this module in order; the last
one stops it with Ctrl-C and checks that nothing is left behind."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import socket
import struct
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from liverun import LiveRun, collect, descendants, of_type, shm_rings, short_run_root, wait_for
from realparts import load_tool, make_clip

from stream.bus import RunPaths, Subscriber
from stream.inference import READY_FILE
from stream.messages import Caption

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(400)]

WINDOW = 8.0
STRIDE = 4.0


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    return {
        "yard": make_clip(folder / "yard.mp4", size="640x360", fps=30.0, seconds=20.0),
        "door": make_clip(folder / "door.mp4", size="320x240", fps=25.0, seconds=20.0),
        "short": make_clip(folder / "short.mp4", size="320x240", fps=25.0, seconds=7.0),
    }


@pytest.fixture(scope="module")
def live(clips: dict[str, Path]) -> Iterator[LiveRun]:
    with short_run_root() as root:
        run = LiveRun(
            [f"yard={clips['yard']}", f"door={clips['door']}"],
            root,
            extra=["--window", str(WINDOW), "--stride", str(STRIDE), "--loop"],
        )
        run.start()
        yield run
        run.kill()


def check_caption(message: dict[str, Any]) -> None:
    assert isinstance(message["seq"], int) and message["seq"] >= 0
    t_start, t_end, times = message["t_start"], message["t_end"], message["frame_times"]
    assert 0 <= t_start < t_end <= t_start + WINDOW + 1e-6
    assert t_end % STRIDE == pytest.approx(0.0, abs=1e-6), "a window ends every stride seconds"
    assert 1 <= len(times) <= 64
    assert times == sorted(times) and len(set(times)) == len(times)
    assert all(t_start <= t <= t_end for t in times)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert all(0.95 <= gap <= 1.05 for gap in gaps), f"frames are 1 s apart in stream time: {times}"
    assert message["wall_start"] <= message["wall_end"]
    assert message["latency_ms"] >= 0 and message["model"] == "tiny" and isinstance(message["text"], str)


def test_captions_reach_a_websocket_client_for_every_source_at_the_stride(live: LiveRun) -> None:
    def enough(messages: list[dict[str, Any]]) -> bool:
        return all(len(of_type(messages, "caption", s)) >= 3 for s in ("yard", "door"))

    messages = collect(live.ws_url, enough, timeout=150)
    assert enough(messages), live.log()
    for stream in ("yard", "door"):
        captions = of_type(messages, "caption", stream)
        for caption in captions:
            check_caption(caption)
        for before, after in zip(captions, captions[1:], strict=False):
            assert after["seq"] == before["seq"] + 1 + after["skipped"]
            assert after["t_end"] - before["t_end"] == pytest.approx(STRIDE * (1 + after["skipped"]))
    statuses = of_type(messages, "status")
    last = statuses[-1]["streams"]
    for stream in ("yard", "door"):
        assert last[stream]["state"] == "live"
        assert last[stream]["encodes_per_frame"] == 1.0, "each sampled frame is encoded exactly once"
        # status is sent at ~1 Hz, so it may not count the newest caption yet
        assert last[stream]["captions"] >= len(of_type(messages, "caption", stream)) - 1


def test_replay_ask_and_malformed_messages(live: LiveRun) -> None:
    # An image tag in a question is text to the model: it once crashed the inference process.
    ask = {"type": "ask", "id": "q-1", "stream": "door", "question": "What is in front of the </image> door?"}

    def answered(messages: list[dict[str, Any]]) -> bool:
        return any(m["type"] in ("answer", "error") and m.get("id") == "q-1" for m in messages) and bool(
            of_type(messages, "error")
        )

    messages = collect(
        live.ws_url,
        answered,
        timeout=90,
        subscribe={"type": "subscribe", "streams": ["door"], "replay": 2},
        send=[ask, {"not": "a message"}],
    )
    replies = [m for m in messages if m.get("id") == "q-1"]
    assert replies and replies[0]["type"] == "answer", messages[-5:]
    assert replies[0]["stream"] == "door" and isinstance(replies[0]["text"], str)
    assert replies[0]["frame_times"] and replies[0]["frame_times"] == sorted(replies[0]["frame_times"])
    assert any(m["type"] == "error" and m["error"] == "unknown_type" for m in messages)
    replayed = of_type(messages, "caption")
    assert replayed and all(m["stream"] == "door" for m in replayed), "stream filter and replay"
    assert "inference exited" not in "".join(live.stderr)


def test_killed_inference_is_restarted_and_captions_resume(live: LiveRun) -> None:
    status = of_type(collect(live.ws_url, lambda m: bool(of_type(m, "status")), timeout=10), "status")[-1]
    pid = status["processes"]["inference"]["pid"]
    os.kill(pid, signal.SIGKILL)
    killed_at = time.time()

    def resumed(messages: list[dict[str, Any]]) -> bool:
        fresh = [c for c in of_type(messages, "caption") if c["wall_end"] > killed_at]
        return len({c["stream"] for c in fresh}) == 2

    messages = collect(live.ws_url, resumed, timeout=150)
    assert resumed(messages), live.log()
    processes = of_type(messages, "status")[-1]["processes"]
    assert processes["inference"]["restarts"] >= 1 and processes["inference"]["pid"] != pid
    assert "inference exited with code" in "".join(live.stderr)


def _raw_websocket(port: int, *, rcvbuf: int | None = None) -> socket.socket:
    """A bare TCP websocket client (handshake only), for clients that misbehave below the library."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def _masked(payload: bytes) -> bytes:
    mask = os.urandom(4)
    return bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_a_stalled_client_and_a_client_killed_mid_message_do_not_disturb_the_others(live: LiveRun) -> None:
    stalled = _raw_websocket(live.port, rcvbuf=4096)
    stalled.sendall(_masked(b'{"type":"subscribe","streams":"*","thumbnails":true}'))  # then never reads
    killed = _raw_websocket(live.port)
    killed.sendall(bytes([0x81, 0x80 | 126]) + (300).to_bytes(2, "big") + os.urandom(4) + b"x" * 40)
    killed.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    killed.close()  # RST halfway through the frame it promised
    try:
        started = time.monotonic()
        messages = collect(
            live.ws_url,
            lambda m: all(len(of_type(m, "caption", s)) >= 2 for s in ("yard", "door")),
            timeout=60,
            subscribe={"type": "subscribe", "streams": "*", "thumbnails": True},
        )
        assert all(len(of_type(messages, "caption", s)) >= 2 for s in ("yard", "door")), live.log()
        assert of_type(messages, "thumbnail")
        assert time.monotonic() - started < 45
    finally:
        stalled.close()


def test_ctrl_c_stops_everything_and_leaves_nothing_behind(live: LiveRun) -> None:
    assert live.proc is not None
    children = descendants(live.proc.pid)
    assert len(children) >= 4  # gateway, inference, two captures (plus multiprocessing helpers)
    run_dirs = live.run_dirs
    run_id = run_dirs[0].name[:8]  # ring names carry the run id's first 8 characters
    assert len(shm_rings(run_id)) == 2, "a ring per source while running"
    started = time.monotonic()
    assert live.stop(signal.SIGINT) == 0, live.log()
    assert time.monotonic() - started < 10
    wait_for(
        lambda: (
            not [
                p
                for p in children
                if Path(f"/proc/{p}").exists()
                and "Z" not in Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1][:3]
            ]
        ),
        5,
        "every child process to exit",
    )
    assert shm_rings(run_id) == []
    assert not any(p.exists() for p in run_dirs), "the run directory (zmq sockets) is removed"
    assert "stopped" in "".join(live.stdout)
    tail = "".join(live.stderr)
    assert "Traceback" not in tail and "leaked" not in tail, tail[-3000:]


def _sigterm_pending_or_gone(pid: int) -> bool:
    """Whether a (stopped) process has been sent SIGTERM, or has exited already."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    if fields["State"].strip().startswith("Z"):
        return True
    pending = int(fields["ShdPnd"], 16) | int(fields["SigPnd"], 16)
    return bool(pending & (1 << (signal.SIGTERM - 1)))


def test_ctrl_c_in_the_terminal_while_starting_stops_quietly(tmp_path: Path, clips: dict[str, Path]) -> None:
    """A terminal's Ctrl-C reaches the whole process group, children still starting included: none
    may die of KeyboardInterrupt (traceback, then a restart), and the run must not go on to start.

    "Still starting" is made certain, not timed: the inference process is frozen (SIGSTOP) as soon as
    it exists, so its model cannot be loaded when the Ctrl-C lands, and the Ctrl-C waits for the
    gateway to listen (the moment a run that printed its address early would have printed it). The
    inference is thawed once the run has told it to stop (its SIGTERM is pending)."""
    with short_run_root() as root:
        run = LiveRun([str(clips["yard"])], root, extra=["--model", "tiny"]).launch()
        assert run.proc is not None
        try:

            def inference_pid() -> int | None:
                found = re.search(r"started inference \(pid (\d+)\)", "".join(run.stderr))
                return int(found.group(1)) if found else None

            wait_for(lambda: inference_pid() is not None, 60, "the inference process to start")
            pid = inference_pid()
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)
            try:
                assert not any((d / READY_FILE).exists() for d in run.run_dirs), "the model was up already"
                wait_for(
                    lambda: any((d / "gateway.json").exists() for d in run.run_dirs),
                    60,
                    "the gateway to listen",
                )
                os.killpg(run.proc.pid, signal.SIGINT)
                started = time.monotonic()
                wait_for(lambda: _sigterm_pending_or_gone(pid), 10, "the run to stop the inference process")
            finally:
                with contextlib.suppress(ProcessLookupError):  # SIGTERM ended it frozen (no handler yet)
                    os.kill(pid, signal.SIGCONT)
            assert run.proc.wait(15) == 0, run.log()
            assert time.monotonic() - started < 5, run.log()
            run.wait_output()
        finally:
            run.kill()
        err = "".join(run.stderr)
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
        assert "restarting" not in err, err[-3000:]
        assert "viewer at" not in "".join(run.stdout)
        assert run.run_dirs == [], "the run directory is removed"


def test_a_run_whose_every_source_fails_stops_and_says_so(tmp_path: Path, clips: dict[str, Path]) -> None:
    """The file passes the start-up check, then is gone when its capture opens it (captures start once
    the model is loaded): with no source left, the run stops with exit code 1 instead of idling forever."""
    doomed = tmp_path / "doomed.mp4"
    doomed.write_bytes(clips["yard"].read_bytes())
    with short_run_root() as root:
        run = LiveRun([str(doomed)], root, extra=["--model", "tiny"]).launch()
        assert run.proc is not None
        try:
            wait_for(lambda: "started inference" in "".join(run.stderr), 60, "the inference process to start")
            doomed.unlink()
            assert run.proc.wait(60) == 1, run.log()
            run.wait_output()
        finally:
            run.kill()
        assert "every source failed" in "".join(run.stderr), run.log()
        assert run.run_dirs == []


def test_bad_input_is_refused_before_anything_starts(tmp_path: Path, clips: dict[str, Path]) -> None:
    import subprocess

    from liverun import VIDNARRATE

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "VIDNARRATE_RUN_ROOT": str(tmp_path / "runs")}
        return subprocess.run([str(VIDNARRATE), *args], capture_output=True, text=True, timeout=60, env=env)

    missing = run("run", "--source", str(tmp_path / "nope.mp4"), "--model", "tiny")
    assert missing.returncode == 2 and "nope.mp4" in missing.stderr and "no such file" in missing.stderr
    scheme = run("run", "--source", "gopher://cam/1", "--model", "tiny")
    assert scheme.returncode == 2 and "unsupported scheme gopher://" in scheme.stderr
    key = run("run", "--source", str(clips["yard"]), "--model", "tiny", "--set", "sampler.windw=3")
    assert key.returncode == 2 and "unknown key sampler.windw" in key.stderr
    no_weights = tmp_path / "empty-model"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps({"version": 2.6}))
    weights = run("run", "--source", str(clips["yard"]), "--model", str(no_weights))
    assert weights.returncode == 2 and str(no_weights) in weights.stderr, weights.stderr
    if not torch.cuda.is_available():
        gpu = run("run", "--source", str(clips["yard"]), "--model", "tiny", "--device", "cuda")
        assert gpu.returncode == 2 and "model.device: device 'cuda': CUDA is not available" in gpu.stderr
    camera = run("run", "--source", "webcam:97", "--model", "tiny")
    assert camera.returncode == 2 and "no such camera device /dev/video97" in camera.stderr, camera.stderr
    headless = subprocess.run(
        [str(VIDNARRATE), "run", "--source", "screen", "--model", "tiny"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "DISPLAY"}
        | {"VIDNARRATE_RUN_ROOT": str(tmp_path / "runs")},
    )
    assert headless.returncode == 2 and "DISPLAY is not set" in headless.stderr, headless.stderr
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        busy = run("run", "--source", str(clips["yard"]), "--model", "tiny", "--port", port)
    assert busy.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in busy.stderr, busy.stderr
    host = run("run", "--source", str(clips["yard"]), "--model", "tiny", "--host", "no-such-host.invalid")
    assert host.returncode == 2 and "gateway.host 'no-such-host.invalid'" in host.stderr, host.stderr
    assert not (tmp_path / "runs").exists(), "nothing was started"
    env_long = {**os.environ, "VIDNARRATE_RUN_ROOT": str(tmp_path / ("r" * 80))}
    too_long = subprocess.run(
        [str(VIDNARRATE), "run", "--source", str(clips["yard"]), "--model", "tiny"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env_long,
    )
    assert too_long.returncode == 2 and "too long for zmq ipc socket paths" in too_long.stderr


def test_a_model_that_refuses_every_window_keeps_the_run_alive(clips: dict[str, Path]) -> None:
    """Prompts over model.max_inp_length (8-s windows at 66 tokens a frame > 256): each window is
    counted in caption_errors and asks are answered with model_error; inference is never restarted
    (a restart would reload the model only to fail the same way)."""
    with short_run_root() as root:
        run = LiveRun(
            [f"door={clips['door']}"],
            root,
            extra=["--window", "8", "--stride", "2", "--loop", "--set", "model.max_inp_length=256"],
        )
        run.start()
        try:

            def refused(messages: list[dict[str, Any]]) -> bool:
                status = of_type(messages, "status")
                errors = status[-1]["streams"].get("door", {}).get("caption_errors") if status else None
                return bool(errors and errors >= 2)

            assert "windows that long will not be captioned" in "".join(run.stderr)  # said at start
            messages = collect(run.ws_url, refused, timeout=60)
            assert refused(messages), run.log()
            assert not of_type(messages, "caption")
            ask = {"type": "ask", "id": "q-long", "stream": "door", "question": "What happened?"}
            replies = collect(
                run.ws_url, lambda m: any(x.get("id") == "q-long" for x in m), timeout=30, send=[ask]
            )
            reply = next(m for m in replies if m.get("id") == "q-long")
            assert reply["type"] == "error" and reply["error"] == "model_error", reply
            assert "max_inp_length=256" in reply["message"]
            assert of_type(replies, "status")[-1]["processes"]["inference"]["restarts"] == 0
            assert "inference exited" not in "".join(run.stderr)
        finally:
            run.kill()


def test_a_run_of_files_without_loop_stops_by_itself_after_their_last_captions(
    clips: dict[str, Path],
) -> None:
    """A 7-s file, 4-s windows every 4 s: the window ending at 4 s, then the tail (4-6 s) once the file
    ends. The terminal says the source ended; the run exits 0 once the tail's caption is published
    (heard here on the inference's own bus, where captions leave for every client)."""
    with short_run_root() as root:
        run = LiveRun([f"short={clips['short']}"], root, extra=["--window", "4", "--stride", "4"]).launch()
        assert run.proc is not None
        bus: Subscriber | None = None
        try:
            wait_for(lambda: bool(run.run_dirs), 30, "the run directory")
            run_dir = run.run_dirs[0]
            bus = Subscriber([RunPaths(run_id=run_dir.name, run_dir=run_dir).publisher_endpoint("inference")])
            assert run.proc.wait(150) == 0, run.log()
            run.wait_output()
            heard = []
            while (message := bus.recv(timeout=1.0)) is not None:
                heard.append(message)
        finally:
            if bus is not None:
                bus.close()
            run.kill()
        out = "".join(run.stdout)
        for line in (
            "viewer at",
            "source short ended",
            "every source has ended",
            "last captions are out; stopping",
        ):
            assert line in out, run.log()
        assert out.index("source short ended") < out.index("last captions are out")
        captions = [m for m in heard if isinstance(m, Caption) and m.stream == "short"]
        assert captions, run.log()
        assert captions[-1].t_end > 4.5, f"the tail after the last full window is captioned: {captions}"
        assert "Traceback" not in "".join(run.stderr), run.log()
        assert run.run_dirs == []


def test_keep_serving_keeps_the_viewer_up_after_the_files_end(clips: dict[str, Path]) -> None:
    with short_run_root() as root:
        run = LiveRun(
            [f"short={clips['short']}"], root, extra=["--window", "4", "--stride", "4", "--keep-serving"]
        ).start()
        try:
            wait_for(lambda: "the viewer stays up" in "".join(run.stdout), 150, "the last captions")
            assert run.proc is not None and run.proc.poll() is None, run.log()
            with urllib.request.urlopen(f"http://127.0.0.1:{run.port}/healthz", timeout=10) as health:
                assert health.status == 200 and json.load(health)["ok"] is True
            # The session's store also holds other tests' runs: their captions are replayed first.
            replayed = collect(
                run.ws_url,
                lambda m: bool(of_type(m, "caption", "short")),
                timeout=10,
                subscribe={"type": "subscribe", "streams": "*", "replay": 10},
            )
            assert of_type(replayed, "caption", "short"), "the history is served"
            others = [m for m in of_type(replayed, "caption") if m["stream"] != "short"]
            assert all(m.get("earlier_run") is True for m in others), others
            assert run.stop(signal.SIGINT) == 0, run.log()
        finally:
            run.kill()


def _http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_beyond_loopback_a_token_is_made_unless_no_auth_is_explicit(clips: dict[str, Path]) -> None:
    with short_run_root() as root:
        run = LiveRun([str(clips["yard"])], root, extra=["--host", "0.0.0.0", "--loop"]).start()
        try:
            assert run.url is not None
            token = re.fullmatch(r"http://[^/]+/\?token=([A-Za-z0-9_-]{32,})", run.url)
            assert token, run.url
            base = f"http://127.0.0.1:{run.port}/"
            assert _http_status(base) == 401
            assert _http_status(f"{base}?token=wrong") == 401
            assert _http_status(f"{base}?token={token.group(1)}") == 200
            assert _http_status(f"{base}healthz") == 200, "health stays open"
            lan = f"from other machines: http://{socket.gethostname()}:{run.port}/?token={token.group(1)}"
            wait_for(lambda: lan in "".join(run.stdout), 10, "the address for other machines")
            assert run.stop(signal.SIGINT) == 0, run.log()
        finally:
            run.kill()
        open_run = LiveRun(
            [str(clips["yard"])], root, extra=["--host", "0.0.0.0", "--no-auth", "--loop"]
        ).start()
        try:
            assert open_run.url == f"http://127.0.0.1:{open_run.port}/"
            assert _http_status(open_run.url) == 200
            assert "anyone on the network who can reach port" in "".join(open_run.stderr)
            assert open_run.stop(signal.SIGINT) == 0, open_run.log()
        finally:
            open_run.kill()


def test_a_live_still_camera_gets_unchanged_captions_and_counts_them(tmp_path: Path) -> None:
    """A still camera (a real photo with sensor noise, H.264) played live: after its first caption the
    windows are extended without model calls, seen by a websocket client and in the status board."""
    clip = tmp_path / "still.mp4"
    load_tool("make_still_clip").make_still_clip(clip, seconds=20, fps=5, event=None, noise=6.0)

    def seen(messages: list[dict[str, Any]]) -> bool:
        statuses = [m["streams"].get("still", {}) for m in of_type(messages, "status")]
        return any(c.get("unchanged") for c in of_type(messages, "caption")) and any(
            (s.get("unchanged") or 0) >= 2 for s in statuses
        )

    with short_run_root() as root:
        run = LiveRun([f"still={clip}"], root, extra=["--window", "4", "--stride", "2", "--loop"]).start()
        try:
            messages = collect(run.ws_url, seen, timeout=120)
        finally:
            run.kill()
    assert seen(messages), run.log()
    captions = of_type(messages, "caption", "still")
    first = next(c for c in captions if not c.get("unchanged"))
    for c in captions[captions.index(first) + 1 :]:
        assert c.get("unchanged") and c["text"] == first["text"] and c["t_start"] == first["t_start"], c
        assert c["t_end"] > first["t_end"] and "model_ms" not in c
    status = of_type(messages, "status")[-1]["streams"]["still"]
    assert status["captions"] >= 1 and status["unchanged"] >= 2
