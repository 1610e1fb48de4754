"""The remote backend against a real llama.cpp server: llama-cpp-python's ``llama_cpp.server`` serving
the tiny MiniCPM-V 2.6 as GGUF (tools/make_gguf.py), its image encoder loaded through ``--clip_model_path``
with the ``minicpm-v-2.6`` chat format. No stand-in: whatever llama.cpp accepts, refuses or streams is
what these tests see.

llama-cpp-python builds llama.cpp from source (about 6 minutes on this machine), so it is not part of
the project's environment. The tests run where two things are given, and are skipped otherwise:

* ``VIDNARRATE_LLAMACPP_PYTHON``: an interpreter with ``llama-cpp-python[server]`` installed;
* ``VIDNARRATE_LLAMACPP_SRC``: llama.cpp's source tree (``vendor/llama.cpp`` of the llama-cpp-python
  sdist), whose converters write the GGUF files.

tools/check_llamacpp.sh sets both up from scratch and runs these tests. tools/make_gguf.py's refusals
are tested without them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from liverun import LiveRun, collect, of_type, short_run_root
from realparts import free_port, kill_group, make_clip

from model.errors import RequestRefused
from model.remote import RemoteBackend
from model.tiny import TINY_CONFIG

ROOT = Path(__file__).resolve().parent.parent
PYTHON = os.environ.get("VIDNARRATE_LLAMACPP_PYTHON", "")
SRC = os.environ.get("VIDNARRATE_LLAMACPP_SRC", "")
N_CTX = 1024  # a 4-frame window takes about 350 tokens; 16 frames do not fit


def _why_not() -> str | None:
    if not PYTHON:
        return "VIDNARRATE_LLAMACPP_PYTHON is not set (an interpreter with llama-cpp-python[server])"
    if not SRC or not (Path(SRC) / "convert_hf_to_gguf.py").is_file():
        return "VIDNARRATE_LLAMACPP_SRC is not a llama.cpp source tree (vendor/llama.cpp of the sdist)"
    found = subprocess.run([PYTHON, "-c", "import llama_cpp.server"], capture_output=True, check=False)
    if found.returncode != 0:
        return f"{PYTHON} cannot import llama_cpp.server: {found.stderr.decode().strip().splitlines()[-1:]}"
    return None


needs_llamacpp = pytest.mark.skipif(bool(_why_not()), reason=str(_why_not()))


def make_gguf(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / "make_gguf.py"), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )


# -- tools/make_gguf.py's refusals (no llama.cpp needed) ------------------------------------------------
def test_make_gguf_names_what_is_missing_in_one_line(tmp_path: Path) -> None:
    not_a_tree = make_gguf("--tiny", str(tmp_path / "out"), "--llama-cpp", str(tmp_path))
    assert not_a_tree.returncode == 2 and len(not_a_tree.stderr.strip().splitlines()) == 1, not_a_tree.stderr
    assert "not a llama.cpp source tree" in not_a_tree.stderr and "convert_hf_to_gguf.py" in not_a_tree.stderr
    tree = tmp_path / "llama.cpp"
    (tree / "tools/mtmd/legacy-models").mkdir(parents=True)
    (tree / "gguf-py").mkdir()
    (tree / "convert_hf_to_gguf.py").touch()
    (tree / "tools/mtmd/legacy-models/minicpmv-convert-image-encoder-to-gguf.py").touch()
    empty = tmp_path / "empty"
    empty.mkdir()
    no_config = make_gguf(str(empty), str(tmp_path / "out"), "--llama-cpp", str(tree))
    assert no_config.returncode == 2 and "no config.json: not a checkpoint folder" in no_config.stderr
    (empty / "config.json").write_text("{}", encoding="utf-8")
    not_minicpmv = make_gguf(str(empty), str(tmp_path / "out"), "--llama-cpp", str(tree))
    assert not_minicpmv.returncode == 2 and "expected 'minicpmv'" in not_minicpmv.stderr, not_minicpmv.stderr
    (empty / "config.json").write_text(json.dumps(TINY_CONFIG.to_dict()), encoding="utf-8")
    no_weights = make_gguf(str(empty), str(tmp_path / "out"), "--llama-cpp", str(tree))
    assert no_weights.returncode == 2 and "no weights" in no_weights.stderr, no_weights.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), "nothing half-written"


class LlamaServer:
    """``python -m llama_cpp.server`` in a process group of its own, on a fixed port (a restart comes
    back where the client looks). ``interrupt`` is its ``--interrupt_requests``: by default a request
    that has to wait for the model cuts the streamed answer in progress short."""

    def __init__(self, model: Path, mmproj: Path, log: Path, *, interrupt: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.args = [
            PYTHON,
            "-m",
            "llama_cpp.server",
            "--model",
            str(model),
            "--clip_model_path",
            str(mmproj),
            "--chat_format",
            "minicpm-v-2.6",
            "--n_ctx",
            str(N_CTX),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--interrupt_requests",
            str(interrupt),
        ]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> LlamaServer:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=out, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"llama_cpp.server exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=2.0) as answer:
                    if answer.status == 200:
                        return self
            except OSError:  # not listening yet
                pass
            time.sleep(0.2)
        raise AssertionError(f"llama_cpp.server did not answer in {timeout} s:\n{self.tail()}")

    def kill(self) -> None:
        if self.proc is not None:
            kill_group(self.proc)
            self.proc = None

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("gguf")
    done = make_gguf("--tiny", str(out), "--llama-cpp", SRC)
    assert done.returncode == 0, done.stderr
    model, mmproj = (Path(line) for line in done.stdout.split())
    return model, mmproj


@pytest.fixture(scope="module")
def server(gguf: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    running = LlamaServer(*gguf, tmp_path_factory.mktemp("llama") / "server.log").start()
    yield running
    running.kill()


def frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (360, 640, 3), dtype=np.uint8) for _ in range(n)]


def flat(colour: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(colour, dtype=np.uint8), (360, 640, 3)).copy()


# -- the conversion --------------------------------------------------------------------------------------
GREEDY_IN_LLAMA_CPP = """
import json, sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=256, verbose=False)
ids = llm.tokenize(sys.argv[2].encode(), add_bos=False, special=True)
llm.eval(ids)
out = []
for _ in range(12):
    out.append(llm.sample(temp=0.0, top_k=1))
    llm.eval([out[-1]])
print(json.dumps({"ids": ids, "out": out}))
"""


@needs_llamacpp
@pytest.mark.integration
@pytest.mark.timeout(600)
def test_the_gguf_language_model_is_ours_token_for_token(tmp_path: Path) -> None:
    """The float32 GGUF in llama.cpp tokenizes a chat turn as our tokenizer does and decodes greedily
    the same 12 tokens as our model: weights, tokenizer and the named pre-tokenizer came through."""
    import torch

    from model.tiny import build_tiny_model

    done = make_gguf("--tiny", str(tmp_path), "--llama-cpp", SRC, "--outtype", "f32")
    assert done.returncode == 0, done.stderr
    text = "<|im_start|>user\nDescribe the yard, then the door.<|im_end|>\n<|im_start|>assistant\n"
    ran = subprocess.run(
        [PYTHON, "-c", GREEDY_IN_LLAMA_CPP, str(tmp_path / "model-f32.gguf"), text],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr
    theirs = json.loads(ran.stdout.strip().splitlines()[-1])
    model = build_tiny_model()
    assert theirs["ids"] == model.tokenizer.encode(text)
    ids = torch.tensor([theirs["ids"]])
    ours = []
    with torch.no_grad():
        for _ in range(12):
            ours.append(int(model.llm(input_ids=ids).logits[0, -1].argmax()))
            ids = torch.cat([ids, torch.tensor([[ours[-1]]])], dim=1)
    assert theirs["out"] == ours


# -- the backend, request by request ------------------------------------------------------------------
@needs_llamacpp
@pytest.mark.integration
@pytest.mark.timeout(900)
def test_llama_cpp_answers_our_window_requests_from_the_frames(server: LlamaServer) -> None:
    backend = RemoteBackend.connect(server.url).for_user("yard")
    try:
        assert backend.model.endswith("model-f16.gguf"), "the one model it serves, from /v1/models"
        assert not backend.media_cache, "llama.cpp is no vLLM: frames go in full"
        # Several images in one user message, streamed back token by token (greedy: the same frames
        # give the same text, other frames another: the images reach the model).
        four = backend.encode_frames(frames(4))
        pieces: list[str] = []
        red = backend.describe(four, "Describe.", context="Earlier: a yard.", on_text=pieces.append)
        assert red and "".join(pieces) == red and len(pieces) > 1, pieces
        again = backend.describe(four, "Describe.", context="Earlier: a yard.")
        assert again == red, "greedy"
        green = backend.encode_frames([flat((20, 200, 40))] * 4)
        other = backend.describe(green, "Describe.", context="Earlier: a yard.")
        assert other != red, "other frames, another answer"
        # Yes/no questions with logprobs: llama.cpp gives them (no refusal, so no first-word fallback).
        scores = backend.yes_probabilities(four[:2], ["Is the door open?", "Is it dark?"])
        assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)
        # A text-only turn (summaries, questions over the past).
        told: list[str] = []
        summary = backend.chat("Summarise: 10:00 a cat sat.", max_new_tokens=8, on_text=told.append)
        assert summary and summary == "".join(told)

        # Two streams' windows at once: the server takes one at a time, the other waits its turn.
        def window(user: str) -> str:
            return backend.for_user(user).describe(four, "Describe.", context="Earlier: a yard.")

        with ThreadPoolExecutor(2) as pool:
            assert list(pool.map(window, ["a", "b"])) == [red, red]
        status = backend.status()
        assert status["state"] == "ok" and status["refused"] == 0 and status["failures"] == 0, status
        assert status["requests"] == 8
    finally:
        backend.close()


@needs_llamacpp
@pytest.mark.integration
@pytest.mark.timeout(900)
def test_by_default_llama_cpp_python_cuts_an_answer_short_for_the_next_request(
    gguf: tuple[Path, Path], tmp_path: Path
) -> None:
    """Without ``--interrupt_requests False`` an answer streaming while another request waits ends
    early with ``[DONE]`` and no ``finish_reason``: the client must not take it for a caption."""
    default = LlamaServer(*gguf, tmp_path / "server.log", interrupt=True).start()
    backend = RemoteBackend.connect(default.url)
    try:
        four = backend.encode_frames(frames(4))

        def window(user: str) -> str:
            try:
                return backend.for_user(user).describe(four, "Describe.")
            except RequestRefused as exc:
                return str(exc)

        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(window, ["a", "b"]))
        assert backend.status()["failures"] >= 1, "a cut answer was noticed and asked again"
        finished = RemoteBackend.connect(default.url).describe(four, "Describe.")
        for answer in answers:
            assert answer == finished or "ended the streamed answer unfinished" in answer, answers
    finally:
        backend.close()
        default.kill()


@needs_llamacpp
@pytest.mark.integration
@pytest.mark.timeout(900)
def test_a_window_beyond_the_server_s_context_is_a_refusal_not_an_outage(server: LlamaServer) -> None:
    """Streaming, llama.cpp answers a prompt beyond ``--n_ctx`` with a 200 and an event stream that
    ends with no chunk at all (without streaming: a 500 "Prompt exceeds n_ctx"): three in a row for one
    request make it that request's refusal, not an outage retried forever."""
    backend = RemoteBackend.connect(server.url)
    try:
        too_many = backend.encode_frames([flat((i * 15, 0, 0)) for i in range(16)])  # about 70 tokens each
        with pytest.raises(RequestRefused, match="ended the streamed answer unfinished"):
            backend.describe(too_many, "Describe.")
        status = backend.status()
        assert status["state"] == "ok" and status["refused"] == 1 and status["failures"] == 2, status
    finally:
        backend.close()


# -- a real run ------------------------------------------------------------------------------------------
ALERT = """
[[alerts]]
name = "anything"
question = "Is anything there?"
threshold = 0.0     # every scored window is positive: the event shows the rule was scored
"""


@needs_llamacpp
@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_run_captions_asks_scores_summarises_and_rides_out_a_server_restart(
    server: LlamaServer, tmp_path: Path
) -> None:
    clip = make_clip(tmp_path / "yard.mp4", size="640x360", fps=25.0, seconds=20.0)
    config = tmp_path / "llama.toml"
    config.write_text(ALERT, encoding="utf-8")
    extra = [
        "--model",
        server.url,
        "--config",
        str(config),
        "--window",
        "4",
        "--stride",
        "4",
        "--loop",
        "--set",
        "captions.stream_tokens=true",
        "--set",
        "summaries.every=8",
        "--set",
        "summaries.max_new_tokens=8",
    ]
    with short_run_root() as root:
        run = LiveRun([f"yard={clip}"], root, extra=extra)
        try:
            run.start()

            def enough(got: list[dict[str, Any]]) -> bool:
                return len(of_type(got, "caption")) >= 2 and bool(
                    of_type(got, "summary") and of_type(got, "event")
                )

            got = collect(run.ws_url, enough, timeout=600)
            assert enough(got), run.log()
            assert of_type(got, "partial"), "tokens streamed"
            for caption in of_type(got, "caption"):
                assert caption["model"].endswith("model-f16.gguf") and caption["text"]
            (start, *_) = [e for e in of_type(got, "event") if e["state"] == "start"]
            assert start["rule"] == "anything" and 0.0 <= start["score"] <= 1.0
            summary = of_type(got, "summary")[0]
            assert summary["stream"] == "yard" and summary["captions"] >= 1
            status = of_type(got, "status")[-1]
            assert status["backend"]["state"] == "ok" and status["backend"]["url"] == server.url
            assert status["backend"]["refused"] == 0, status["backend"]

            ask = {"type": "ask", "id": "q-1", "stream": "yard", "question": "What is in the yard?"}
            asked = collect(
                run.ws_url, lambda g: any(m.get("id") == "q-1" for m in g), timeout=300, send=[ask]
            )
            (answer,) = [m for m in asked if m.get("id") == "q-1"]
            assert answer["type"] == "answer" and answer["text"] and answer["frame_times"], answer

            server.kill()

            def unreachable(got: list[dict[str, Any]]) -> bool:
                return any(
                    (s.get("backend") or {}).get("state") == "unreachable" for s in of_type(got, "status")
                )

            assert unreachable(collect(run.ws_url, unreachable, timeout=180)), run.log()
            server.start()
            healed = collect(run.ws_url, lambda g: len(of_type(g, "caption")) >= 1, timeout=300)
            assert of_type(healed, "caption"), f"captions resume by themselves\n{run.log()}"
            assert run.stop(signal.SIGINT) == 0
        finally:
            run.kill()
            if server.proc is None:
                server.start()
