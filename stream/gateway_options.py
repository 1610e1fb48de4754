"""The gateway's options: one frozen value, checked once when it is made.

Keyword-only and grouped by purpose, with safe limits on by default. :class:`GatewayOptions` is the
``[gateway]`` config section (:class:`~stream.config.GatewayConfig`: host, port, token, client_queue,
replay, max_message_bytes) extended with the options only code sets; every limit is declared on its
field and checked by :func:`~stream.settings.check_settings`, so a bad value gets the same message as
in a config file. It is picklable, so ``vidnarrate run`` hands it as it is to the gateway's child
process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import GatewayConfig
from .routes import DEFAULT_WEB_DIR
from .settings import check_settings, setting


@dataclass(frozen=True, kw_only=True)
class GatewayOptions(GatewayConfig):
    """How the gateway listens, and what it allows each client. Raises :class:`ConfigError` (a
    ``ValueError``) naming the option for a value out of range. ``port`` 0 means any free port (read
    ``Gateway.port`` once it listens); ``token`` "" means no auth (``resolved_token`` is the config's
    rule, for callers that read ``$VIDNARRATE_TOKEN``)."""

    web_dir: Path | None = DEFAULT_WEB_DIR  # the viewer's files; None: no page
    # fan-out (client_queue and replay are config keys). write_buffer: bytes in a client's socket
    # buffer before messages queue instead; send_buffer: each client's kernel send buffer (None: the
    # kernel's); slow_client_timeout: seconds a client may stay behind, dropping, before 4000.
    write_buffer: int = setting(64 * 1024, low=0)
    send_buffer: int | None = setting(256 * 1024, low=1)
    slow_client_timeout: float = setting(30.0, above=0)
    max_clients: int = setting(10_000, low=1)
    status_interval: float = setting(1.0, above=0)  # seconds between periodic status messages
    # client input (max_message_bytes is a config key: larger messages get a too_large error reply):
    # max_errors error replies within error_window seconds close the connection with 1008.
    max_errors: int = setting(20, low=1)
    error_window: float = setting(10.0, above=0)
    # asks
    ask_timeout: float = setting(30.0, above=0)
    asks_per_client: int = setting(8, low=1)
    max_pending_asks: int = setting(1024, low=1)
    # connections
    close_timeout: float = setting(3.0, above=0)
    ping_interval: float | None = setting(20.0, above=0)
    ping_timeout: float | None = setting(20.0, above=0)
    max_streams: int = setting(256, low=1)
    # the caption store the recorder writes (read-only here; None: the run keeps none, and search and
    # history get store_unavailable); queries_per_client: its searches/histories in flight at once.
    store: str | None = None
    # the run's id as the recorder stores it: replay then also comes from the store, and stored captions
    # of other runs are marked earlier_run (None: replay from the gateway's buffer only).
    run_id: str | None = None
    # the run's sources: a "*" replay from the store covers these, not every stream ever stored (()
    # when unknown: every stored stream).
    streams: tuple[str, ...] = ()
    replay_timeout: float = setting(2.0, above=0)  # seconds a replay waits for the store, then goes without
    queries_per_client: int = setting(2, low=1)

    def __post_init__(self) -> None:
        check_settings("gateway", self)

    @property
    def max_frame_bytes(self) -> int:
        """The hard limit: a client message larger than this closes the connection with 1009 before
        it is read into memory. Between ``max_message_bytes`` and this, it gets a too_large error reply."""
        return 4 * self.max_message_bytes
