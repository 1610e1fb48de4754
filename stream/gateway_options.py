"""The gateway's options: one frozen value, checked once when it is made.

Keyword-only and grouped by purpose, with safe limits on by default. :class:`GatewayOptions` is
picklable, so ``vidnarrate run`` hands it as it is to the gateway's child process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError
from .routes import DEFAULT_WEB_DIR


@dataclass(frozen=True, kw_only=True)
class GatewayOptions:
    """How the gateway listens, and what it allows each client. Raises :class:`ConfigError` (a
    ``ValueError``) naming the option for a value out of range."""

    # where
    host: str = "127.0.0.1"
    port: int = 8765  # 0: any free port (read Gateway.port once it listens)
    token: str = ""  # "": no auth; else the page and the websocket need it
    web_dir: Path | None = DEFAULT_WEB_DIR  # the viewer's files; None: no page
    # fan-out
    client_queue: int = 256  # messages queued per client behind its socket
    replay: int = 100  # captions kept per stream for subscribe's replay
    write_buffer: int = 64 * 1024  # bytes in a client's socket buffer before messages queue instead
    send_buffer: int | None = 256 * 1024  # each client's kernel send buffer (None: the kernel's)
    slow_client_timeout: float = 30.0  # seconds a client may stay behind, dropping, before 4000
    max_clients: int = 10_000
    status_interval: float = 1.0  # seconds between periodic status messages
    # client input
    max_message_bytes: int = 65536  # larger client messages get a too_large error reply
    max_errors: int = 20  # this many error replies within error_window seconds closes with 1008
    error_window: float = 10.0
    # asks
    ask_timeout: float = 30.0
    asks_per_client: int = 8
    max_pending_asks: int = 1024
    # connections
    close_timeout: float = 3.0
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    max_streams: int = 256

    def __post_init__(self) -> None:
        for name, low in (
            ("port", 0),
            ("client_queue", 1),
            ("replay", 0),
            ("write_buffer", 0),
            ("max_clients", 1),
            ("max_message_bytes", 1),
            ("max_errors", 1),
            ("asks_per_client", 1),
            ("max_pending_asks", 1),
            ("max_streams", 1),
        ):
            value = getattr(self, name)
            if value < low:
                raise ConfigError(f"gateway option {name} must be at least {low}, got {value}")
        if self.port > 65535:
            raise ConfigError(f"gateway option port must be at most 65535, got {self.port}")
        if self.send_buffer is not None and self.send_buffer < 1:
            raise ConfigError(
                f"gateway option send_buffer must be at least 1 (or None), got {self.send_buffer}"
            )
        for name in (
            "slow_client_timeout",
            "status_interval",
            "error_window",
            "ask_timeout",
            "close_timeout",
        ):
            seconds = getattr(self, name)
            if not seconds > 0:
                raise ConfigError(
                    f"gateway option {name} must be a positive number of seconds, got {seconds}"
                )
        for name in ("ping_interval", "ping_timeout"):
            seconds = getattr(self, name)
            if seconds is not None and not seconds > 0:
                raise ConfigError(f"gateway option {name} must be positive seconds or None, got {seconds}")

    @property
    def max_frame_bytes(self) -> int:
        """The hard limit: a client message larger than this closes the connection with 1009 before
        it is read into memory. Between ``max_message_bytes`` and this, it gets a too_large error reply."""
        return 4 * self.max_message_bytes
