"""What ``vidnarrate run`` and ``caption`` check before anything starts: each check is said at once,
in one line naming the thing and the reason (a ``ConfigError``, exit code 2), or as a warning, instead
of a child process failing later or retrying forever.

Ports, hosts and tokens; file, camera and screen sources; the model's weights and device; windows that
cannot fit the model's input; prompts that look like a mistyped preset; a hardware decoder asked for
by name that this machine lacks.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import secrets
import socket
import sys
from pathlib import Path
from typing import Any

from .config import Config, is_remote_model
from .errors import ConfigError, SourceError
from .prompts import preset_typo

# Prompt tokens of one frame piece: 64 placeholder tokens and their <image>/</image> (or <slice>) pair.
_TOKENS_PER_PIECE = 66
_PROMPT_OVERHEAD_TOKENS = 400  # the chat template, the preset prompt, a previous caption


def warn_if_windows_too_long(config: Config, window: float, max_slice_nums: int) -> None:
    """Say at start when a full window may not fit ``model.max_inp_length``: such windows are
    refused by the model (counted in ``caption_errors``) rather than captioned."""
    frames = min(config.sampler.max_frames, int(window * config.sampler.fps) + 1)
    pieces = 1 if max_slice_nums <= 1 else 1 + max_slice_nums
    tokens = frames * pieces * _TOKENS_PER_PIECE + _PROMPT_OVERHEAD_TOKENS
    if tokens > config.model.max_inp_length:
        print(
            f"vidnarrate: warning: a full {window:g}-s window ({frames} frames of up to {pieces} pieces) "
            f"needs up to ~{tokens} prompt tokens, over model.max_inp_length={config.model.max_inp_length}; "
            "windows that long will not be captioned. Lower sampler.window, sampler.max_frames or "
            "model.max_slice_nums, or raise model.max_inp_length.",
            file=sys.stderr,
            flush=True,
        )


def live_windows(config: Config) -> list[float]:
    """Every window length of a live run: the global one and those sources set for themselves (a
    source's longer window may not fit the model's input where the global one does)."""
    own = {s.window for s in config.sources.values() if s.window is not None}
    return sorted({config.sampler.window} | own)


def warn_about_prompt_typos(config: Config) -> None:
    """Warn about every prompt of the run (the global one and each source's own) that looks like a
    mistyped preset name: captioning hours of video with the prompt 'ctv' would be a silent waste."""
    prompts = {"--prompt / captions.prompt": config.captions.prompt}
    prompts.update({f"sources.{name}.prompt": s.prompt for name, s in config.sources.items() if s.prompt})
    for key, prompt in prompts.items():
        problem = preset_typo(prompt)
        if problem is not None:
            print(f"vidnarrate: warning: {key}: {problem}", file=sys.stderr, flush=True)


def check_port_free(host: str, port: int) -> None:
    """Fail now, with the reason, when the gateway could not listen (port taken, unknown host)
    rather than after the model has loaded."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"gateway.host {host!r}: not an address of this machine ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the gateway's listener does
        try:
            probe.bind(address)
        except OSError as exc:
            hint = " (another vidnarrate run? choose another --port)" if exc.errno == errno.EADDRINUSE else ""
            raise ConfigError(f"gateway: cannot listen on {host}:{port}: {exc.strerror}{hint}") from None


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` reaches this machine only ("" listens on every interface)."""
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass  # a name: loopback if every address it has is
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(i[4][0]).split("%")[0]).is_loopback for i in infos)


def choose_token(host: str, configured: str, *, no_auth: bool) -> tuple[str, bool]:
    """The token the gateway requires ("" = none) and whether it was made here. Loopback needs none
    unless one is given; beyond loopback one is made (as Jupyter does) unless ``--no-auth`` says
    explicitly that anyone who can reach the port may watch."""
    if no_auth:
        if configured:
            raise ConfigError(
                "--no-auth, but a token is set (--token, gateway.token or $VIDNARRATE_TOKEN): "
                "drop one of them"
            )
        return "", False
    if configured or is_loopback(host):
        return configured, False
    return secrets.token_urlsafe(24), True


def check_device_source(spec: Any, what: str) -> None:
    """A screen or camera source that cannot exist right now (no X display, no such device node) is
    a mistake in the command line: said now, not after the model loaded (and not retried forever)."""
    from .sources import SourceOptions, open_source

    if spec.kind == "webcam" and sys.platform.startswith("linux"):
        node = spec.target if spec.target.startswith("/") else f"/dev/video{spec.target}"
        if not os.path.exists(node):
            cameras = sorted(str(p) for p in Path("/dev").glob("video*"))
            found = ", ".join(cameras) if cameras else "none"
            raise ConfigError(f"{what}: no such camera device {node} (cameras on this machine: {found})")
    elif spec.kind == "screen":
        try:
            open_source(spec, SourceOptions()).close()
        except SourceError as exc:
            raise ConfigError(str(exc)) from None  # it names the source and the reason already


def check_file(target: str, what: str) -> None:
    """A file source must exist and hold decodable video: said now, before any process starts or
    any model loads, in one line naming the file and the reason."""
    from .offline import check_video_file

    path = Path(target)
    if path.is_dir():
        raise ConfigError(f"{what}: {path} is a directory, not a video file")
    if not path.is_file():
        raise ConfigError(f"{what}: no such file {path}")
    try:
        check_video_file(str(path))
    except SourceError as exc:
        raise ConfigError(str(exc)) from None  # it names the file and the reason already


def check_model_available(name: str, device: str = "auto", key: str = "model.device") -> None:
    """Fail before starting anything when the model cannot run: a device this machine lacks, no
    folder, no weights, a config that is not MiniCPM-V 2.6 (a hub id is downloaded here, in the
    foreground, if it can be). Reads only config and index files: the inference process loads weights."""
    from model.configuration import MiniCPMVConfig
    from model.errors import ModelError
    from model.loading import resolve_checkpoint, resolve_device, weight_files
    from model.processing import ProcessorConfig

    if is_remote_model(name):  # a server is checked by asking it: connect_remote_server
        raise ConfigError(
            f"model {name}: a server's URL, not a local model (ask it with connect_remote_server)"
        )
    try:
        resolve_device(None if device == "auto" else device)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    if name == "tiny":
        return
    try:
        folder = resolve_checkpoint(name)
        MiniCPMVConfig.from_folder(folder)
        ProcessorConfig.from_folder(folder)
        weight_files(folder)
    except (ModelError, OSError) as exc:
        raise ConfigError(
            f"model {name}: {exc}\nFor a smoke run without weights use --model tiny "
            "(random weights: the captions are gibberish by design)."
        ) from None


def check_remote_server(config: Config) -> None:
    """``--model http://HOST:PORT/v1``: the server is asked for its models now, so that one that is
    down, refuses the key or does not serve ``model.remote.model`` is one line and exit 2, before
    anything starts."""
    connect_remote_server(config).close()


def connect_remote_server(config: Config) -> Any:
    """The :class:`~model.remote.RemoteBackend` of ``--model URL`` (``caption`` and ``summarize`` use
    it as their model), or the one line of :func:`check_remote_server` as a ``ConfigError``."""
    from model.errors import ServerSetupError

    from .inference import connect_remote

    try:
        return connect_remote(config.model.name, config.model.remote)
    except ServerSetupError as exc:
        raise ConfigError(str(exc)) from None


def check_capture_hwaccel(config: Config) -> None:
    """``[capture] hwaccel`` naming a device this machine lacks (``cuda`` without an NVIDIA GPU) is
    said now, naming the key and the device; ``auto`` and ``none`` always pass."""
    from .hwdecode import check_hwaccel

    check_hwaccel(config.capture.hwaccel)
