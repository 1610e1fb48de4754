"""Alert rules: what the ``[[alerts]]`` tables and ``run --alert 'NAME: QUESTION'`` say, checked.

A rule is a yes/no ``question`` the model answers about every captioned window (scored as P(yes), see
:meth:`model.backends.LocalBackend.yes_probabilities`) or a regex ``pattern`` on each caption's text
(score 1.0 on a match, else 0.0; no model call). What the scores do (hysteresis, cooldown, events) is
:mod:`stream.alerts`; this module only makes and checks the rules, with the same
:func:`~stream.settings.setting` machinery as every config section, so a bad rule is one line naming the
rule and the key (``alerts.person_at_door.threshold: ...``) and exit code 2.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from .config import Config
from .errors import ConfigError
from .settings import check_settings, setting

RULE_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
RULE_NAME_RULE = "letters, digits, _ and -, 1 to 64 of them"
MAX_QUESTION_CHARS = 1000
MAX_RULES = 64  # every rule of a window is one row of one batched prefill: bounded


def _name_rule(name: str) -> str | None:
    return None if RULE_NAME_RE.match(name) else f"{name!r} is not a rule name ({RULE_NAME_RULE})"


def _question_rule(question: str) -> str | None:
    if not question.strip():
        return "must not be empty (a yes/no question about the window)"
    if len(question) > MAX_QUESTION_CHARS:
        return f"is {len(question)} characters; the limit is {MAX_QUESTION_CHARS}"
    return None


def _pattern_rule(pattern: str) -> str | None:
    if not pattern:
        return "must not be empty (a regular expression on the caption text)"
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"{pattern!r} is not a regular expression: {exc}"
    return None


def _streams_rule(streams: Any) -> str | None:
    if streams == "*":
        return None
    if not isinstance(streams, tuple) or not streams or not all(isinstance(s, str) and s for s in streams):
        return 'must be "*" or a non-empty list of source names'
    return None


@dataclass(frozen=True)
class AlertRule:
    """One alert rule (a ``[[alerts]]`` table). Exactly one of ``question`` and ``pattern``.

    ``streams``: ``"*"`` (every source of the run) or the source names. A window counts as positive
    when its score is at least ``threshold``; ``on_after`` positive windows in a row start an event,
    ``off_after`` negative ones in a row end it, and after an end the rule waits ``cooldown`` seconds
    of stream time before it may start again. ``on_unchanged``: also score windows whose scene did
    not change since the last caption (by default such windows keep the rule's state as it is)."""

    name: str = setting("", rule=_name_rule)
    streams: str | tuple[str, ...] = setting("*", rule=_streams_rule)
    question: str | None = setting(None, rule=_question_rule)
    pattern: str | None = setting(None, rule=_pattern_rule)
    threshold: float = setting(0.5, low=0.0, high=1.0)
    on_after: int = setting(1, low=1, high=1000)
    off_after: int = setting(2, low=1, high=1000)
    cooldown: float = setting(30.0, low=0.0, high=86400.0)
    on_unchanged: bool = False

    def applies_to(self, stream: str) -> bool:
        return self.streams == "*" or stream in self.streams

    @property
    def key(self) -> str:
        """How errors name this rule: ``alerts.NAME``."""
        return f"alerts.{self.name}"


_KINDS = {"name": str, "question": str, "pattern": str, "on_unchanged": bool}


def _coerce(key: str, value: Any, field_name: str) -> Any:
    """A TOML value checked against the rule field's type (ints are fine where floats are asked)."""
    if field_name == "streams":
        if value == "*":
            return value
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f'{key}: expected "*" or a list of source names, got {value!r}')
    if field_name in ("on_after", "off_after"):
        ok = isinstance(value, int) and not isinstance(value, bool)
        kind = "an integer"
    elif field_name in ("threshold", "cooldown"):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
        kind = "a number"
    else:
        ok = isinstance(value, _KINDS[field_name])
        kind = "true or false" if field_name == "on_unchanged" else "a string"
    if not ok:
        raise ConfigError(f"{key}: expected {kind}, got {type(value).__name__} {value!r}")
    return value


def rule_from_table(table: Any, index: int) -> AlertRule:
    """One ``[[alerts]]`` table (the ``index``-th, for errors before the rule has a name), checked."""
    where = f"alerts[{index}]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: each [[alerts]] entry must be a table of settings, got {table!r}")
    name = table.get("name")
    if isinstance(name, str) and RULE_NAME_RE.match(name):
        where = f"alerts.{name}"
    elif "name" not in table:
        raise ConfigError(f"{where}.name: missing (every rule needs a name: {RULE_NAME_RULE})")
    known = {f.name for f in fields(AlertRule)}
    values = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r} (known keys: {', '.join(sorted(known))})")
        values[key] = _coerce(f"{where}.{key}", value, key)
    return check_rule(AlertRule(**values), where)


def check_rule(rule: AlertRule, where: str | None = None) -> AlertRule:
    """Every range and rule of ``rule`` (errors name ``alerts.NAME.key``); returns it."""
    where = where or rule.key
    check_settings(where, rule)
    has_question, has_pattern = rule.question is not None, rule.pattern is not None
    if has_question == has_pattern:
        what = "both" if has_question else "neither"
        raise ConfigError(f"{where}.question: give exactly one of question and pattern (it has {what})")
    return rule


def merge_rules(rules: Sequence[AlertRule], tables: Any, origin: str) -> tuple[AlertRule, ...]:
    """``rules`` with a file's ``[[alerts]]`` array appended; errors name ``origin`` too."""
    if not isinstance(tables, list):
        raise ConfigError(f"{origin}: alerts must be an array of tables ([[alerts]]), got {tables!r}")
    try:
        added = [rule_from_table(table, len(rules) + i) for i, table in enumerate(tables)]
        return check_rules([*rules, *added])
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None


def check_rules(rules: Iterable[AlertRule]) -> tuple[AlertRule, ...]:
    """Each rule checked, no name twice, at most :data:`MAX_RULES`."""
    checked: list[AlertRule] = []
    seen: set[str] = set()
    for rule in rules:
        check_rule(rule)
        if rule.name in seen:
            raise ConfigError(f"{rule.key}.name: the rule name {rule.name!r} is used twice")
        seen.add(rule.name)
        checked.append(rule)
    if len(checked) > MAX_RULES:
        raise ConfigError(f"alerts: {len(checked)} rules; the limit is {MAX_RULES}")
    return tuple(checked)


def parse_alert_flag(text: str) -> AlertRule:
    """``--alert 'NAME: QUESTION'``: a question rule for every stream, with the default settings."""
    name, sep, question = text.partition(":")
    name = name.strip()
    where = f"--alert {text!r}"
    if not sep:
        raise ConfigError(f"{where}: expected 'NAME: QUESTION' (e.g. 'person: Is a person in view?')")
    if not RULE_NAME_RE.match(name):
        raise ConfigError(f"{where}: alerts.{name}.name: {name!r} is not a rule name ({RULE_NAME_RULE})")
    try:
        return check_rule(AlertRule(name=name, question=question.strip()))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def check_rule_streams(rules: Iterable[AlertRule], sources: Iterable[str]) -> None:
    """Each stream a rule names is a source of the run (else the rule would never fire, silently)."""
    names = list(sources)
    for rule in rules:
        if rule.streams == "*":
            continue
        for stream in rule.streams:
            if stream not in names:
                raise ConfigError(
                    f"{rule.key}.streams: {stream!r} is not a source of this run "
                    f"(sources: {', '.join(names) or 'none'})"
                )


def add_alert_flag(parser: Any) -> None:
    """``run --alert 'NAME: QUESTION'`` (repeatable)."""
    parser.add_argument(
        "--alert",
        action="append",
        default=[],
        metavar="'NAME: QUESTION'",
        help="an alert rule on every source: a yes/no question scored on each captioned window "
        "(repeatable; [[alerts]] in --config for patterns, thresholds and per-source rules)",
    )


def with_alert_flags(config: Config, flags: Sequence[str]) -> Config:
    """``config`` with the ``--alert`` rules after those of the config file (names unique)."""
    if not flags:
        return config
    return replace(config, alerts=check_rules([*config.alerts, *(parse_alert_flag(f) for f in flags)]))
