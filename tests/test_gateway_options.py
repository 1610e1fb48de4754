"""The gateway's options: checked once, when made."""

from __future__ import annotations

import pytest

from stream.errors import ConfigError
from stream.gateway_options import GatewayOptions


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("client_queue", 0),
        ("ask_timeout", 0),
        ("port", 65536),
        ("send_buffer", 0),
        ("ping_interval", -1.0),
        ("max_message_bytes", 0),
    ],
)
def test_nonsensical_options_are_refused_with_their_name(option: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"gateway option {option} "):
        GatewayOptions(**{option: value})  # type: ignore[arg-type]


def test_options_are_keyword_only_and_frozen() -> None:
    with pytest.raises(TypeError):
        GatewayOptions("0.0.0.0")  # type: ignore[misc]
    options = GatewayOptions(max_message_bytes=1000, send_buffer=None, ping_interval=None)
    assert options.max_frame_bytes == 4000
    with pytest.raises(AttributeError):
        options.port = 1  # type: ignore[misc]
