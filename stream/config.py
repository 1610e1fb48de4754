"""Typed, strict configuration: the one place where settings are checked.

The section dataclasses below hold the defaults; the packaged ``stream/defaults/default.toml``
documents every key with the same values (a test keeps the two equal). A user file only needs the
keys it changes. Layers are applied in order (defaults, ``--config FILE``, the CLI's flags, ``--set``)
by :func:`merge`, which rejects an unknown section or key and a value of the wrong type, naming the
file (or "command line") and the key; :func:`check` then checks every range, choice and rule, declared
next to each field with :func:`~stream.settings.setting` (:mod:`stream.settings`, the one validator,
which the runtime option objects that code may also make directly, such as ``GatewayOptions`` and
``SourceOptions``, use too, so a bad value gets the same message from a file, a flag or code).
``GatewayOptions`` extends :class:`GatewayConfig` (the ``[gateway]`` keys are its user-settable
fields). The prompt presets the ``prompt`` keys name are :mod:`stream.prompts`.

``[sources.NAME]`` tables define sources by name (``url``) and give a source its own ``prompt``,
``window`` and ``stride``; a setting a source leaves out is the global one.
"""

from __future__ import annotations

import os
import re
import tomllib
import types
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union, get_args, get_origin, get_type_hints

from .errors import ConfigError
from .prompts import summary_preset_names
from .settings import check_settings, setting

if TYPE_CHECKING:
    pass

# A source's name keys its ring, its captions and its status, and is a TOML key and a --set path
# component, so it is kept plain.
SOURCE_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
SOURCE_NAME_RULE = "a letter, then letters, digits, _ or -, at most 64"


def _not_empty(what: str) -> Callable[[Any], str | None]:
    return lambda value: None if value.strip() else f"must not be empty ({what})"


def _device_rule(device: str) -> str | None:
    if device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", device):
        return None
    return f"{device!r} is not 'auto', 'cpu', 'cuda' or 'cuda:N'"


def _devices_rule(devices: tuple[str, ...]) -> str | None:
    """``[model] devices``: one inference process per entry (a device may repeat: ["cpu", "cpu"])."""
    for device in devices:
        reason = _device_rule(device)
        if reason:
            return reason
    return None


def _prompt_rule(prompt: str) -> str | None:
    return None if prompt.strip() else "must not be empty (a preset name or prompt text)"


@dataclass(frozen=True, kw_only=True)
class GatewayConfig:
    """The ``[gateway]`` keys. ``stream.gateway_options.GatewayOptions`` extends this class with the
    options only code sets, so these fields, defaults and limits are declared once, here."""

    host: str = "127.0.0.1"
    port: int = setting(8765, low=0, high=65535)
    token: str = ""
    client_queue: int = setting(256, low=1, high=1_000_000)
    replay: int = setting(100, low=0, high=100_000)
    max_message_bytes: int = setting(65536, low=256, high=64 * 1024 * 1024)

    def resolved_token(self) -> str:
        """The token in use: this one, else ``$VIDNARRATE_TOKEN`` ("" when neither: no auth)."""
        return self.token or os.environ.get("VIDNARRATE_TOKEN", "")


# [capture] decode: "sampled" writes only the frames the sampler keeps (stream.decodeplan).
DECODE_MODES = ("sampled", "all")
# [capture] hwaccel: FFmpeg's hardware device types (av.codec.hwaccel.HWDeviceType), "auto" (the first
# that works, else software) or "none". Whether this machine has one is checked at start (preflight).
HWACCEL_CHOICES = (
    "auto",
    "none",
    "cuda",
    "vaapi",
    "qsv",
    "vdpau",
    "videotoolbox",
    "d3d11va",
    "d3d12va",
    "dxva2",
    "drm",
    "opencl",
    "mediacodec",
    "vulkan",
    "amf",
)


@dataclass(frozen=True)
class CaptureConfig:
    max_side: int = setting(1344, low=28, high=8192)
    ring_slots: int = setting(8, low=2, high=1024)
    realtime: bool = True
    loop_files: bool = False
    open_timeout: float = setting(10.0, low=0.1, high=3600)
    read_timeout: float = setting(5.0, low=0.1, high=3600)
    backoff_initial: float = setting(0.5, low=0.01, high=3600)
    backoff_max: float = setting(10.0, low="backoff_initial", high=3600)
    screen_fps: float = setting(5.0, low=0.1, high=120)
    decode: str = setting("sampled", choices=DECODE_MODES)
    hwaccel: str = setting("auto", choices=HWACCEL_CHOICES)
    nice: int = setting(0, low=0, high=19)


@dataclass(frozen=True)
class SamplerConfig:
    fps: float = setting(1.0, low=0.01, high=30)
    window: float = setting(16.0, low=0.1, high=3600)
    stride: float = setting(4.0, low=0.1, high=3600)
    max_frames: int = setting(64, low=1, high=64)  # the model card's video cap


REMOTE_SCHEMES = ("http://", "https://")


def is_remote_model(name: str) -> bool:
    """Whether ``[model] name`` is the ``/v1`` address of an OpenAI-compatible server."""
    return name.startswith(REMOTE_SCHEMES)


@dataclass(frozen=True)
class RemoteConfig:
    """``[model.remote]``: how an OpenAI-compatible server (``[model] name = "http://HOST:PORT/v1"``)
    is used. ``model`` "" asks the server (it must serve exactly one); ``api_key`` "" is
    ``$OPENAI_API_KEY``."""

    model: str = ""
    api_key: str = ""
    max_concurrency: int = setting(8, low=1, high=256)
    timeout: float = setting(60.0, above=0, high=3600)
    max_images: int = setting(16, low=1, high=64)
    image_side: int = setting(448, low=28, high=4096)
    jpeg_quality: int = setting(85, low=1, high=100)

    def resolved_api_key(self) -> str:
        return self.api_key or os.environ.get("OPENAI_API_KEY", "")


@dataclass(frozen=True)
class ModelConfig:
    name: str = setting(
        "openbmb/MiniCPM-V-2_6",
        rule=_not_empty("a hub id, a folder, 'tiny' or an http(s)://HOST:PORT/v1 URL"),
    )
    device: str = setting("auto", rule=_device_rule)
    # Several: one inference process per entry, each captioning its share of the streams
    # (stream.placement); empty: one process on ``device``.
    devices: tuple[str, ...] = setting((), rule=_devices_rule)
    dtype: str = setting("auto", choices=("auto", "bfloat16", "float16", "float32"))
    max_slice_nums: int = setting(1, low=1, high=9)
    max_inp_length: int = setting(8192, low=256, high=131072)
    max_batch: int = setting(16, low=1, high=64)  # due windows of different streams captioned at once
    remote: RemoteConfig = field(default_factory=RemoteConfig)


@dataclass(frozen=True)
class CaptionsConfig:
    prompt: str = setting("narration", rule=_prompt_rule)
    context_captions: int = setting(1, low=0, high=16)
    max_new_tokens: int = setting(160, low=1, high=4096)
    decoding: str = setting("greedy", choices=("greedy", "sampling", "beam"))
    stream_tokens: bool = False
    thumbnails: bool = True
    thumbnail_side: int = setting(320, low=32, high=2048)
    # Share of the picture (0-1) that must change for a window to be captioned (stream.change); 0: off.
    unchanged_threshold: float = setting(0.004, low=0, high=1)


@dataclass(frozen=True)
class OfflineConfig:
    max_slice_nums: int = setting(2, low=1, high=9)
    window: float = setting(16.0, low=0.1, high=3600)
    stride: float = setting(8.0, low=0.1, high=3600)


@dataclass(frozen=True)
class SupervisorConfig:
    restart_backoff_initial: float = setting(1.0, low=0.01, high=3600)
    restart_backoff_max: float = setting(30.0, low="restart_backoff_initial", high=3600)
    stop_timeout: float = setting(5.0, low=0.1, high=600)


def _store_path_rule(path: str) -> str | None:
    if path and not path.strip():
        return "must be a file path, or empty for the default ($XDG_DATA_HOME/vidnarrate/vidnarrate.db)"
    return None


@dataclass(frozen=True)
class StoreConfig:
    """Where captions, events and answers are kept (``vidnarrate run`` records them) and for how long:
    rows older than ``retention_days`` go, and the oldest go while the file is over ``max_mb``."""

    path: str = setting("", rule=_store_path_rule)
    retention_days: float = setting(30.0, above=0, high=36500)
    max_mb: float = setting(2048.0, low=1, high=16 * 1024 * 1024)


def _summary_prompt_rule(prompt: str) -> str | None:
    names = summary_preset_names()
    if prompt and prompt not in names:
        return f'{prompt!r} is not a summary preset ({", ".join(names)}; "" follows captions.prompt)'
    return None


@dataclass(frozen=True)
class SummariesConfig:
    """Span summaries: live every ``every`` seconds of stream time per stream (0: off), and by
    ``summarize`` and ``caption --summary``. ``prompt``: a preset of ``summaries.toml`` ("" is the
    one named like the captions' prompt, else narration)."""

    every: float = setting(0.0, low=0, high=7 * 86400)
    prompt: str = setting("", rule=_summary_prompt_rule)
    max_new_tokens: int = setting(384, low=1, high=4096)


@dataclass(frozen=True)
class SourceConfig:
    """One ``[sources.NAME]`` table. ``url`` may come from ``--source NAME=URL`` instead; the other
    keys, when left out (None), are the global ``captions.prompt``/``unchanged_threshold``,
    ``sampler.window``/``stride``."""

    url: str = ""
    prompt: str | None = setting(None, rule=_prompt_rule)
    window: float | None = setting(None, low=0.1, high=3600)
    stride: float | None = setting(None, low=0.1, high=3600)
    unchanged_threshold: float | None = setting(None, low=0, high=1)


# -- [outputs]: what leaves the machine (stream.outputs) -------------------------------------------
OUTPUT_TYPES = ("caption", "event", "summary")  # the bus messages an output may carry


def _types_rule(types: tuple[str, ...]) -> str | None:
    unknown = [t for t in types if t not in OUTPUT_TYPES]
    if unknown or not types:
        what = f"unknown message type(s) {', '.join(map(repr, unknown))}" if unknown else "empty"
        return f"{what} (known: {', '.join(OUTPUT_TYPES)})"
    return None


def _webhook_url_rule(url: str) -> str | None:
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018  # raises ValueError for a port that is not a number in range
    except ValueError as exc:
        return f"{url!r} is not a URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return f"{url!r}: the scheme must be http or https"
    if not parts.hostname:
        return f"{url!r} names no host"
    return None


def _topic_prefix_rule(prefix: str) -> str | None:
    if not prefix.strip("/") or any(ch in prefix for ch in "+#\0"):
        return f"{prefix!r} must be a non-empty MQTT topic without + or #"
    return None


def _ca_file_rule(path: str) -> str | None:
    return None if not path or Path(path).is_file() else f"{path!r} is not a file"


@dataclass(frozen=True)
class WebhookConfig:
    """One ``[[outputs.webhook]]``: POST each message of ``types`` as JSON to ``url``."""

    url: str = setting("", rule=_webhook_url_rule)
    types: tuple[str, ...] = setting(("event",), rule=_types_rule)
    secret: str = ""  # HMAC-SHA256 key of the X-Vidnarrate-Signature header ("" = no header)
    timeout: float = setting(5.0, above=0, high=600)
    queue: int = setting(1000, low=1, high=1_000_000)  # deliveries waiting at most...
    queue_mb: float = setting(16.0, above=0, high=4096)  # ... and bytes
    max_attempts: int = setting(10, low=0, high=1_000_000)  # tries before one is given up (0: never)


@dataclass(frozen=True)
class MqttConfig:
    """``[outputs.mqtt]``: publish to an MQTT broker (topics: README's Outputs, docs/protocol.md)."""

    host: str = setting("", rule=_not_empty("the broker's host name or address"))
    port: int = setting(1883, low=1, high=65535)
    username: str = ""
    password: str = ""
    tls: bool = False
    ca_file: str = setting("", rule=_ca_file_rule)  # with tls: trust this CA instead of the system's
    topic_prefix: str = setting("vidnarrate", rule=_topic_prefix_rule)
    types: tuple[str, ...] = setting(("caption", "event"), rule=_types_rule)
    timeout: float = setting(5.0, above=0, high=600)  # connecting, and waiting for a PUBACK
    queue: int = setting(10_000, low=1, high=1_000_000)
    queue_mb: float = setting(16.0, above=0, high=4096)


@dataclass(frozen=True)
class OutputsConfig:
    webhook: tuple[WebhookConfig, ...] = ()
    mqtt: MqttConfig | None = None  # None: no [outputs.mqtt] table

    def __bool__(self) -> bool:
        return bool(self.webhook) or self.mqtt is not None


@dataclass(frozen=True)
class Config:
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    captions: CaptionsConfig = field(default_factory=CaptionsConfig)
    offline: OfflineConfig = field(default_factory=OfflineConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    summaries: SummariesConfig = field(default_factory=SummariesConfig)
    sources: dict[str, SourceConfig] = field(default_factory=dict)  # by name, in the order defined
    outputs: OutputsConfig = field(default_factory=OutputsConfig)
    alerts: tuple[Any, ...] = ()  # stream.alertrules.AlertRule, from [[alerts]] and --alert


def check(config: Config) -> Config:
    """Check every range, choice and rule of ``config``; returns it. The one validator."""
    for section in fields(config):
        if section.name == "sources":
            for name, source in config.sources.items():
                check_settings(f"sources.{name}", source)
        elif section.name == "outputs":
            for index, webhook in enumerate(config.outputs.webhook):
                check_settings(f"outputs.webhook[{index}]", webhook)
            if config.outputs.mqtt is not None:
                check_settings("outputs.mqtt", config.outputs.mqtt)
        elif section.name == "alerts":
            from .alertrules import check_rules

            check_rules(config.alerts)
        else:
            check_settings(section.name, getattr(config, section.name))
    return config


def _coerce(key: str, value: Any, kind: Any) -> Any:
    """Check one TOML value against the field's type; ints are accepted where floats are expected.
    A ``T | None`` field takes a T (TOML has no null: None only means "not set")."""
    if get_origin(kind) in (Union, types.UnionType):
        kind = next(arg for arg in get_args(kind) if arg is not type(None))
    if get_origin(kind) is tuple:  # tuple[str, ...]: a TOML array of strings
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected an array of strings, got {value!r}")
        return tuple(value)
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
    for key, value in _nest_dotted(values).items():
        if key not in known:
            raise ConfigError(
                f"{origin}: unknown key {name}.{key} (known keys of [{name}]: {', '.join(sorted(known))})"
            )
        if is_dataclass(hints[key]):  # a nested table such as [model.remote]
            changes[key] = _merge_section(getattr(section, key), f"{name}.{key}", value, origin)
            continue
        try:
            changes[key] = _coerce(f"{name}.{key}", value, hints[key])
        except ConfigError as exc:
            raise ConfigError(f"{origin}: {exc}") from None
    return replace(section, **changes)


def _nest_dotted(values: dict[str, Any]) -> dict[str, Any]:
    """``{"remote.model": v}`` (from ``--set model.remote.model=v``) as ``{"remote": {"model": v}}``."""
    nested: dict[str, Any] = {}
    for key, value in values.items():
        head, dot, rest = key.partition(".")
        if dot:
            nested.setdefault(head, {})[rest] = value
        else:
            nested[key] = value
    return nested


def _merge_sources(sources: dict[str, SourceConfig], tables: Any, origin: str) -> dict[str, SourceConfig]:
    if not isinstance(tables, dict):
        raise ConfigError(f"{origin}: [sources] must hold one table per source ([sources.NAME])")
    merged = dict(sources)
    for name, values in tables.items():
        if not SOURCE_NAME_RE.match(name):
            raise ConfigError(f"{origin}: sources.{name}: {name!r} is not a source name ({SOURCE_NAME_RULE})")
        merged[name] = _merge_section(merged.get(name, SourceConfig()), f"sources.{name}", values, origin)
    return merged


def _merge_outputs(outputs: OutputsConfig, values: Any, origin: str) -> OutputsConfig:
    """``[[outputs.webhook]]`` (a layer's array replaces the one before it) and ``[outputs.mqtt]``
    (merged key by key; ``--set outputs.mqtt.KEY=...`` arrives as the key ``mqtt.KEY``)."""
    if not isinstance(values, dict):
        raise ConfigError(f"{origin}: [outputs] must hold [[outputs.webhook]] and [outputs.mqtt]")
    if not isinstance(values.get("mqtt", {}), dict):
        raise ConfigError(f"{origin}: outputs.mqtt must be a table ([outputs.mqtt])")
    mqtt = dict(values.get("mqtt", {}))
    webhooks = outputs.webhook
    for key, value in values.items():
        if key.startswith("mqtt."):
            mqtt[key.removeprefix("mqtt.")] = value
        elif key == "webhook":
            if not isinstance(value, list):
                raise ConfigError(
                    f"{origin}: outputs.webhook must be an array of tables ([[outputs.webhook]])"
                )
            webhooks = tuple(
                _merge_section(WebhookConfig(), f"outputs.webhook[{i}]", table, origin)
                for i, table in enumerate(value)
            )
        elif key != "mqtt":
            raise ConfigError(
                f"{origin}: unknown key outputs.{key} (known: [[outputs.webhook]], [outputs.mqtt])"
            )
    if mqtt or "mqtt" in values:
        merged = _merge_section(outputs.mqtt or MqttConfig(), "outputs.mqtt", mqtt, origin)
        return OutputsConfig(webhook=webhooks, mqtt=merged)
    return replace(outputs, webhook=webhooks)


def merge(config: Config, data: dict[str, Any], origin: str) -> Config:
    """Return ``config`` with the sections/keys of ``data`` applied (strictly) and checked."""
    sections = {f.name for f in fields(config)}
    changes: dict[str, Any] = {}
    for name, values in data.items():
        if name not in sections:
            raise ConfigError(f"{origin}: unknown section [{name}] (known: {', '.join(sorted(sections))})")
        if name == "sources":
            changes[name] = _merge_sources(config.sources, values, origin)
        elif name == "outputs":
            changes[name] = _merge_outputs(config.outputs, values, origin)
        elif name == "alerts":
            from .alertrules import merge_rules

            changes[name] = merge_rules(config.alerts, values, origin)
        else:
            changes[name] = _merge_section(getattr(config, name), name, values, origin)
    merged = replace(config, **changes)
    try:
        return check(merged)
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None


def load_config(path: Path | str | None = None) -> Config:
    """The defaults, with the user's file (if any) applied on top."""
    config = check(Config())
    if path is None:
        return config
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return merge(config, data, str(path))


def apply_overrides(
    config: Config, overrides: Iterable[str] | dict[str, Any], origin: str = "command line"
) -> Config:
    """Apply ``section.key=value`` (and ``sources.NAME.key=value``) overrides. String values are
    parsed as TOML values when they parse (``8``, ``true``, ``1.5``, ``"x"``), else taken as plain
    strings (``prompt=cctv``); the values of a dict are taken as they are."""
    items = overrides.items() if isinstance(overrides, dict) else (_split_override(o) for o in overrides)
    data: dict[str, Any] = {}
    for dotted, value in items:
        section, _, key = dotted.partition(".")
        if section == "sources":
            name, _, key = key.partition(".")
            if not name or not key:
                raise ConfigError(f"{origin}: {dotted!r} is not of the form sources.NAME.key")
            data.setdefault("sources", {}).setdefault(name, {})[key] = value
        elif not key:
            raise ConfigError(f"{origin}: {dotted!r} is not of the form section.key")
        else:
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


def summary_preset(config: Config, stream: str | None = None) -> str:
    """The summary preset for ``stream`` (None: the global captions prompt): ``summaries.prompt``, else
    the preset named like the captions' prompt, else ``narration``."""
    if config.summaries.prompt:
        return config.summaries.prompt
    own = config.sources.get(stream) if stream is not None else None
    prompt = own.prompt if own is not None and own.prompt is not None else config.captions.prompt
    return prompt if prompt in summary_preset_names() else "narration"
