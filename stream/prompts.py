"""The packaged prompt presets: caption prompts (``stream/defaults/prompts.toml``: narration, cctv, screen,
and the ``context`` template for earlier captions) and summary prompts (``summaries.toml``: each preset's
chunk and combine templates, and the template of questions over the past). Both are package data, read
once; a broken install is a :class:`~stream.errors.ConfigError` naming the file.
"""

from __future__ import annotations

import difflib
import functools
import tomllib
from importlib import resources
from typing import Any

from .errors import ConfigError


def packaged_text(name: str) -> str:
    """A file of ``stream/defaults/`` (package data, so it is there however vidnarrate was installed)."""
    return (resources.files(__package__) / "defaults" / name).read_text(encoding="utf-8")


def preset_typo(prompt: str) -> str | None:
    """Why a prompt looks like a mistyped preset name, or None. One word that is no preset ('ctv') is a
    typo far more often than a prompt; it is still used as written (a user may mean it), so callers warn."""
    text = prompt.strip()
    names = prompt_preset_names()
    if not text or text in names or any(ch.isspace() for ch in text):
        return None
    close = difflib.get_close_matches(text.lower(), names, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"{prompt!r} is not a preset ({', '.join(names)}); it is used as the prompt text itself.{hint}"


def _presets_file(name: str, what: str) -> tuple[str, dict[str, Any]]:
    """``stream/defaults/<name>`` read as TOML, with the origin its errors name."""
    origin = f"stream/defaults/{name}"
    try:
        return origin, tomllib.loads(packaged_text(name))
    except (OSError, tomllib.TOMLDecodeError) as exc:  # a broken install, not a user mistake
        raise ConfigError(f"{what} {origin}: {exc}") from None


@functools.cache
def _packaged_prompts() -> tuple[tuple[str, str], ...]:
    origin, data = _presets_file("prompts.toml", "prompt presets")
    presets = []
    for name, table in data.items():
        if not isinstance(table, dict) or not isinstance(table.get("text"), str):
            raise ConfigError(f"{origin}: preset [{name}] needs a string 'text'")
        presets.append((name, table["text"]))
    return tuple(presets)


def load_prompts() -> dict[str, str]:
    """Prompt presets by name (``narration``, ``cctv``, ``screen``, and the ``context`` template)."""
    return dict(_packaged_prompts())


def prompt_preset_names() -> list[str]:
    """The presets a prompt may name (``context`` is the template for earlier captions, not a prompt)."""
    return [name for name, _ in _packaged_prompts() if name != "context"]


def resolve_prompt(prompt: str, presets: dict[str, str]) -> str:
    """A preset's text by name, or the prompt itself when it is not a preset name."""
    return presets.get(prompt, prompt)


@functools.cache
def _packaged_summary_prompts() -> tuple[tuple[str, tuple[str, str]], ...]:
    origin, data = _presets_file("summaries.toml", "summary presets")
    presets = []
    for name, table in data.items():
        keys = ("text", "text") if name == "question" else ("chunk", "combine")
        if not isinstance(table, dict) or not all(isinstance(table.get(k), str) for k in keys):
            raise ConfigError(f"{origin}: preset [{name}] needs the strings {' and '.join(set(keys))}")
        presets.append((name, (table[keys[0]], table[keys[1]])))
    return tuple(presets)


def load_summary_prompts() -> dict[str, tuple[str, str]]:
    """Summary presets by name: (chunk, combine) prompt templates; ``question`` is (text, text), the
    template of questions over the past."""
    return dict(_packaged_summary_prompts())


def summary_preset_names() -> list[str]:
    return [name for name, _ in _packaged_summary_prompts() if name != "question"]
