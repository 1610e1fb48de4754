"""Typed, strict configuration.

The dataclasses below hold the defaults; ``config/default.toml`` documents every key with the same
values (a test keeps the two equal). A user file only needs the keys it changes. Loading is strict:
an unknown section or key, a wrong type or an out-of-range value raises :class:`ConfigError` naming
the file, the key and the reason. CLI flags override through :func:`apply_overrides` with dotted keys
(``captions.prompt=cctv``), checked the same way.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, get_type_hints

from .errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
DEFAULT_CONFIG_FILE = CONFIG_DIR / "default.toml"
PROMPTS_FILE = CONFIG_DIR / "prompts.toml"


@dataclass(frozen=True)
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    token: str = ""
    client_queue: int = 256
    replay: int = 100
    max_message_bytes: int = 65536

    def check(self) -> None:
        _check_range("gateway.port", self.port, 0, 65535)
        _check_range("gateway.client_queue", self.client_queue, 1, 1_000_000)
        _check_range("gateway.replay", self.replay, 0, 100_000)
        _check_range("gateway.max_message_bytes", self.max_message_bytes, 256, 64 * 1024 * 1024)

    def resolved_token(self) -> str:
        return self.token or os.environ.get("VIDNARRATE_TOKEN", "")


@dataclass(frozen=True)
class CaptureConfig:
    max_side: int = 1344
    ring_slots: int = 8
    realtime: bool = True
    loop_files: bool = False
    open_timeout: float = 10.0
    read_timeout: float = 5.0
    backoff_initial: float = 0.5
    backoff_max: float = 10.0
    screen_fps: float = 5.0

    def check(self) -> None:
        _check_range("capture.max_side", self.max_side, 28, 8192)
        _check_range("capture.ring_slots", self.ring_slots, 2, 1024)
        _check_range("capture.open_timeout", self.open_timeout, 0.1, 3600)
        _check_range("capture.read_timeout", self.read_timeout, 0.1, 3600)
        _check_range("capture.backoff_initial", self.backoff_initial, 0.01, 3600)
        _check_range("capture.backoff_max", self.backoff_max, self.backoff_initial, 3600)
        _check_range("capture.screen_fps", self.screen_fps, 0.1, 120)


@dataclass(frozen=True)
class SamplerConfig:
    fps: float = 1.0
    window: float = 16.0
    stride: float = 4.0
    max_frames: int = 64

    def check(self) -> None:
        _check_range("sampler.fps", self.fps, 0.01, 30)
        _check_range("sampler.window", self.window, 0.1, 3600)
        _check_range("sampler.stride", self.stride, 0.1, 3600)
        _check_range("sampler.max_frames", self.max_frames, 1, 64)  # the model card's video cap


@dataclass(frozen=True)
class ModelConfig:
    name: str = "openbmb/MiniCPM-V-2_6"
    device: str = "auto"
    dtype: str = "auto"
    max_slice_nums: int = 1
    max_inp_length: int = 8192

    def check(self) -> None:
        if not self.name:
            raise ConfigError("model.name: must not be empty (a hub id, a folder, or 'tiny')")
        _check_choice("model.dtype", self.dtype, ("auto", "bfloat16", "float16", "float32"))
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"model.device: {self.device!r} is not 'auto', 'cpu', 'cuda' or 'cuda:N'")
        _check_range("model.max_slice_nums", self.max_slice_nums, 1, 9)
        _check_range("model.max_inp_length", self.max_inp_length, 256, 131072)


@dataclass(frozen=True)
class CaptionsConfig:
    prompt: str = "narration"
    context_captions: int = 1
    max_new_tokens: int = 160
    decoding: str = "greedy"
    stream_tokens: bool = False
    thumbnails: bool = True
    thumbnail_side: int = 320

    def check(self) -> None:
        if not self.prompt.strip():
            raise ConfigError("captions.prompt: must not be empty (a preset name or prompt text)")
        _check_range("captions.context_captions", self.context_captions, 0, 16)
        _check_range("captions.max_new_tokens", self.max_new_tokens, 1, 4096)
        _check_choice("captions.decoding", self.decoding, ("greedy", "sampling", "beam"))
        _check_range("captions.thumbnail_side", self.thumbnail_side, 32, 2048)


@dataclass(frozen=True)
class OfflineConfig:
    max_slice_nums: int = 2
    window: float = 16.0
    stride: float = 8.0

    def check(self) -> None:
        _check_range("offline.max_slice_nums", self.max_slice_nums, 1, 9)
        _check_range("offline.window", self.window, 0.1, 3600)
        _check_range("offline.stride", self.stride, 0.1, 3600)


@dataclass(frozen=True)
class SupervisorConfig:
    restart_backoff_initial: float = 1.0
    restart_backoff_max: float = 30.0
    stop_timeout: float = 5.0

    def check(self) -> None:
        _check_range("supervisor.restart_backoff_initial", self.restart_backoff_initial, 0.01, 3600)
        _check_range(
            "supervisor.restart_backoff_max", self.restart_backoff_max, self.restart_backoff_initial, 3600
        )
        _check_range("supervisor.stop_timeout", self.stop_timeout, 0.1, 600)


@dataclass(frozen=True)
class Config:
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    captions: CaptionsConfig = field(default_factory=CaptionsConfig)
    offline: OfflineConfig = field(default_factory=OfflineConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)

    def check(self) -> Config:
        for section in fields(self):
            getattr(self, section.name).check()
        return self


def _check_range(key: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{key}: {value!r} is out of range [{low}, {high}]")


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(choices)}")


def _coerce(key: str, value: Any, kind: type) -> Any:
    """Check one TOML value against the field's type; ints are accepted where floats are expected."""
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise ConfigError(f"{key}: expected {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


def _merge_section(section: Any, name: str, values: Any, origin: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{origin}: [{name}] must be a table of settings, got {values!r}")
    hints = get_type_hints(type(section))
    known = {f.name for f in fields(section)}
    changes = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(
                f"{origin}: unknown key {name}.{key} (known keys of [{name}]: {', '.join(sorted(known))})"
            )
        try:
            changes[key] = _coerce(f"{name}.{key}", value, hints[key])
        except ConfigError as exc:
            raise ConfigError(f"{origin}: {exc}") from None
    return replace(section, **changes)


def merge(config: Config, data: dict[str, Any], origin: str) -> Config:
    """Return ``config`` with the sections/keys of ``data`` applied (strictly)."""
    sections = {f.name for f in fields(config)}
    changes = {}
    for name, values in data.items():
        if name not in sections:
            raise ConfigError(f"{origin}: unknown section [{name}] (known: {', '.join(sorted(sections))})")
        changes[name] = _merge_section(getattr(config, name), name, values, origin)
    merged = replace(config, **changes)
    try:
        return merged.check()
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None


def load_config(path: Path | str | None = None) -> Config:
    """The defaults, with the user's file (if any) applied on top."""
    config = Config().check()
    if path is None:
        return config
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return merge(config, data, str(path))


def apply_overrides(
    config: Config, overrides: list[str] | dict[str, Any], origin: str = "command line"
) -> Config:
    """Apply ``section.key=value`` overrides. String values are parsed as TOML values when they parse
    (``8``, ``true``, ``1.5``, ``"x"``), else taken as plain strings (``prompt=cctv``)."""
    items = overrides.items() if isinstance(overrides, dict) else (_split_override(o) for o in overrides)
    data: dict[str, dict[str, Any]] = {}
    for dotted, value in items:
        section, _, key = dotted.partition(".")
        if not key:
            raise ConfigError(f"{origin}: {dotted!r} is not of the form section.key")
        data.setdefault(section, {})[key] = value
    return merge(config, data, origin)


def _split_override(text: str) -> tuple[str, Any]:
    dotted, sep, raw = text.partition("=")
    if not sep:
        raise ConfigError(f"command line: --set {text!r} is not of the form section.key=value")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return dotted.strip(), value


def as_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def load_prompts(path: Path = PROMPTS_FILE) -> dict[str, str]:
    """Prompt presets by name (``narration``, ``cctv``, ``screen``, and the ``context`` template)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"prompt presets file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"prompt presets file {path} is not valid TOML: {exc}") from None
    presets = {}
    for name, table in data.items():
        if not isinstance(table, dict) or not isinstance(table.get("text"), str):
            raise ConfigError(f"{path}: preset [{name}] needs a string 'text'")
        presets[name] = table["text"]
    return presets


def resolve_prompt(prompt: str, presets: dict[str, str]) -> str:
    """A preset's text by name, or the prompt itself when it is not a preset name."""
    return presets.get(prompt, prompt)
