"""Declared settings: a dataclass field carries its own checks (a range, choices, a rule), one validator
checks any option object declared this way, and option objects are made from config sections by field
name. :mod:`stream.config` declares the config file's sections with it; the processes' option objects
(gateway, capture, captioning, outputs, alert rules) declare and check their fields the same way, so a
limit is written once, where the key is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import MISSING, field, fields, is_dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import ConfigError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Options = TypeVar("Options", bound="DataclassInstance")


def setting(
    default: Any,
    *,
    low: float | str | None = None,
    above: float | None = None,
    high: float | None = None,
    choices: tuple[str, ...] = (),
    rule: Callable[[Any], str | None] | None = None,
) -> Any:
    """A field with its checks: a range (``low`` inclusive, and it may name a sibling field that the
    value must not be below; ``above`` exclusive, for "more than 0"; ``high`` inclusive), a set of
    choices, or a rule that returns the reason a value is bad. A None value (an optional field left
    unset) passes every check."""
    return field(
        default=default,
        metadata={"low": low, "above": above, "high": high, "choices": choices, "rule": rule},
    )


def setting_like(section: type, name: str, default: Any = MISSING) -> Any:
    """A field of another option object with the checks of ``section.name`` (and its default unless
    given): a limit is declared once, where the config key is, whatever object carries the value."""
    spec = {f.name: f for f in fields(section)}[name]
    return field(default=spec.default if default is MISSING else default, metadata=spec.metadata)


def check_settings(prefix: str, section: Any) -> None:
    """Check the fields of one dataclass declared with :func:`setting`; errors name ``prefix.field``.
    Any option object may declare its fields this way and be checked here, by the same rules."""
    for spec in fields(section):
        value = getattr(section, spec.name)
        if value is None:
            continue
        key = f"{prefix}.{spec.name}"
        if is_dataclass(value):  # a nested table such as [model.remote]
            check_settings(key, value)
            continue
        meta = spec.metadata
        low, above, high = meta.get("low"), meta.get("above"), meta.get("high")
        if isinstance(low, str):
            low = getattr(section, low)
        # Written so that NaN fails every bound it meets.
        if (
            (low is not None and not value >= low)
            or (above is not None and not value > above)
            or (high is not None and not value <= high)
        ):
            raise ConfigError(f"{key}: {value!r} is out of range {_interval(low, above, high)}")
        if meta.get("choices") and value not in meta["choices"]:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(meta['choices'])}")
        reason = meta["rule"](value) if meta.get("rule") else None
        if reason:
            raise ConfigError(f"{key}: {reason}")


def _interval(low: float | None, above: float | None, high: float | None) -> str:
    """``[0, 65535]``, ``(0, inf)``, ``[1, inf)``: the range a value must be in."""
    start = f"[{low}" if low is not None else f"({above}" if above is not None else "(-inf"
    end = f"{high}]" if high is not None else "inf)"
    return f"{start}, {end}"


def options_from(
    section: Any, options: type[Options], renamed: Mapping[str, str] | None = None, **changes: Any
) -> Options:
    """The option object ``options`` (a dataclass) made from a checked config section: each key of the
    section that is one of its fields (by the same name, or by the name ``renamed`` maps it to) is
    carried over, ``changes`` are applied on top, and the object checks itself when made."""
    renamed = renamed or {}
    known = {spec.name for spec in fields(options)}
    values = {renamed.get(spec.name, spec.name): getattr(section, spec.name) for spec in fields(section)}
    return options(**{name: value for name, value in values.items() if name in known} | changes)
