"""The strict config: defaults documented in config/default.toml, errors that name the key."""

from __future__ import annotations

import tomllib
from dataclasses import fields

import pytest

from stream.config import (
    DEFAULT_CONFIG_FILE,
    Config,
    apply_overrides,
    load_config,
    load_prompts,
    resolve_prompt,
)
from stream.errors import ConfigError


def test_default_toml_documents_every_setting_with_its_default() -> None:
    data = tomllib.loads(DEFAULT_CONFIG_FILE.read_text())
    defaults = Config()
    for section in fields(defaults):
        documented = data.get(section.name, {})
        values = getattr(defaults, section.name)
        for key in fields(values):
            assert key.name in documented, f"{section.name}.{key.name} missing from default.toml"
            assert documented[key.name] == getattr(values, key.name), f"{section.name}.{key.name}"
    assert load_config(DEFAULT_CONFIG_FILE) == defaults


def test_user_file_changes_only_its_keys(tmp_path) -> None:
    path = tmp_path / "my.toml"
    path.write_text('[sampler]\nwindow = 32\n[captions]\nprompt = "cctv"\n')
    config = load_config(path)
    assert config.sampler.window == 32.0 and isinstance(config.sampler.window, float)
    assert config.captions.prompt == "cctv"
    assert config.sampler.stride == Config().sampler.stride


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[sampler]\nwindw = 3\n", "unknown key sampler.windw"),
        ("[samplr]\nwindow = 3\n", "unknown section [samplr]"),
        ('[sampler]\nwindow = "long"\n', "sampler.window: expected float"),
        ("[sampler]\nmax_frames = 1.5\n", "sampler.max_frames: expected int"),
        ("[sampler]\nmax_frames = 100\n", "sampler.max_frames: 100 is out of range"),
        ("[gateway]\nport = 70000\n", "gateway.port: 70000 is out of range"),
        ('[captions]\ndecoding = "fast"\n', "captions.decoding: 'fast' is not one of"),
        ("[sampler]\nwindow = \n", "is not valid TOML"),
    ],
)
def test_bad_file_names_the_file_and_key(tmp_path, text: str, needle: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert needle in str(info.value)
    assert str(path) in str(info.value)


def test_missing_file_is_named(tmp_path) -> None:
    with pytest.raises(ConfigError, match="nope.toml does not exist"):
        load_config(tmp_path / "nope.toml")


def test_overrides_parse_values_and_reject_unknown_keys() -> None:
    config = apply_overrides(Config(), ["sampler.stride=2", "captions.stream_tokens=true", "model.name=tiny"])
    assert config.sampler.stride == 2.0
    assert config.captions.stream_tokens is True
    assert config.model.name == "tiny"
    with pytest.raises(ConfigError, match="unknown key model.nme"):
        apply_overrides(Config(), ["model.nme=tiny"])
    with pytest.raises(ConfigError, match="not of the form section.key=value"):
        apply_overrides(Config(), ["model.name"])


def test_prompt_presets_exist_and_resolve() -> None:
    presets = load_prompts()
    for name in ("narration", "cctv", "screen", "context"):
        assert presets[name].strip()
    assert "{duration}" in presets["narration"]
    assert resolve_prompt("cctv", presets) == presets["cctv"]
    assert resolve_prompt("Count the cars.", presets) == "Count the cars."
