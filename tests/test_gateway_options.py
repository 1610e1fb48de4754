"""The gateway's options: checked once, when made."""

from __future__ import annotations

from dataclasses import fields

import pytest

from stream.config import Config, GatewayConfig, apply_overrides
from stream.errors import ConfigError
from stream.gateway_options import GatewayOptions
from stream.settings import options_from


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("client_queue", 0),
        ("ask_timeout", 0),
        ("port", 65536),
        ("send_buffer", 0),
        ("ping_interval", -1.0),
        ("max_message_bytes", 0),
        ("replay", 100_001),  # the [gateway] key's limit holds for code too
        ("status_interval", float("nan")),
    ],
)
def test_nonsensical_options_are_refused_with_their_name(option: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"^gateway\.{option}: {value!r} is out of range "):
        GatewayOptions(**{option: value})  # type: ignore[arg-type]


def test_options_are_keyword_only_and_frozen() -> None:
    with pytest.raises(TypeError):
        GatewayOptions("0.0.0.0")  # type: ignore[misc]
    options = GatewayOptions(max_message_bytes=1000, send_buffer=None, ping_interval=None)
    assert options.max_frame_bytes == 4000
    with pytest.raises(AttributeError):
        options.port = 1  # type: ignore[misc]


def test_unset_optional_limits_are_allowed() -> None:
    options = GatewayOptions(send_buffer=None, ping_interval=None, ping_timeout=None)
    assert (options.send_buffer, options.ping_interval, options.ping_timeout) == (None, None, None)


def test_the_gateway_section_is_the_options_user_settable_part() -> None:
    """Every [gateway] key reaches the gateway as it is; the other options keep their defaults."""
    config = apply_overrides(
        Config(),
        ["gateway.host=0.0.0.0", "gateway.port=9000", "gateway.client_queue=8", "gateway.replay=3"]
        + ["gateway.max_message_bytes=1024"],
    )
    options = options_from(config.gateway, GatewayOptions, token="t")
    assert isinstance(options, GatewayConfig)
    for key in fields(GatewayConfig):
        expected = "t" if key.name == "token" else getattr(config.gateway, key.name)
        assert getattr(options, key.name) == expected, key.name
    assert options.ask_timeout == GatewayOptions().ask_timeout
