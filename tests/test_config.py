"""The strict config: packaged defaults documented in stream/defaults/default.toml, errors that name
the file and the key, per-source settings, and the runtime option objects built from a checked config."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path

import pytest

from stream.cli import build_parser, resolve_config
from stream.config import Config, MqttConfig, SourceConfig, WebhookConfig, apply_overrides, check, load_config
from stream.errors import ConfigError, UnsupportedSource
from stream.gateway_options import GatewayOptions
from stream.pipeline import (
    NamedSource,
    caption_settings,
    configured_sources,
    inference_options,
    source_options,
)
from stream.prompts import load_prompts, packaged_text, preset_typo, prompt_preset_names, resolve_prompt
from stream.sourcespec import SourceOptions


def test_default_toml_documents_every_setting_with_its_default(tmp_path: Path) -> None:
    text = packaged_text("default.toml")
    data = tomllib.loads(text)
    defaults = Config()
    for section in fields(defaults):
        if section.name in ("sources", "outputs", "alerts"):
            continue  # none by default: documented by the commented examples below
        documented = data.get(section.name, {})
        values = getattr(defaults, section.name)
        for key in fields(values):
            assert key.name in documented, f"{section.name}.{key.name} missing from default.toml"
            value = getattr(values, key.name)
            value = asdict(value) if is_dataclass(value) else value  # a nested table: [model.remote]
            value = list(value) if isinstance(value, tuple) else value  # a TOML array
            assert documented[key.name] == value, f"{section.name}.{key.name}"
    path = tmp_path / "default.toml"
    path.write_text(text)
    assert load_config(path) == defaults


def test_the_documented_source_example_loads_and_names_every_source_key(tmp_path: Path) -> None:
    text = packaged_text("default.toml")
    example = text[text.index("# [sources.door]") :]
    path = tmp_path / "example.toml"
    path.write_text(re.sub(r"(?m)^# ?", "", example))
    door = load_config(path).sources["door"]
    assert {f.name for f in fields(SourceConfig)} == {
        "url",
        "prompt",
        "window",
        "stride",
        "unchanged_threshold",
    }
    assert door == SourceConfig(
        url="rtsp://cam-door/stream", prompt="cctv", window=30.0, stride=10.0, unchanged_threshold=0.01
    )


def test_every_default_passes_the_one_validator() -> None:
    assert check(Config()) == Config()


def test_user_file_changes_only_its_keys(tmp_path: Path) -> None:
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
        ("[gateway]\nport = 70000\n", "gateway.port: 70000 is out of range [0, 65535]"),
        ("[capture]\nread_timeout = nan\n", "capture.read_timeout: nan is out of range [0.1, 3600]"),
        ('[captions]\ndecoding = "fast"\n', "captions.decoding: 'fast' is not one of"),
        ('[model]\ndevice = "gpu"\n', "model.device: 'gpu' is not 'auto'"),
        (
            "[capture]\nbackoff_initial = 5\nbackoff_max = 2\n",
            "capture.backoff_max: 2.0 is out of range [5.0",
        ),
        ('[captions]\nprompt = "  "\n', "captions.prompt: must not be empty"),
        ("[sampler]\nwindow = \n", "is not valid TOML"),
        ('[sources.door]\nurl = "x.mp4"\ncolour = 1\n', "unknown key sources.door.colour"),
        ("[sources.door]\nwindow = 0.0\n", "sources.door.window: 0.0 is out of range"),
        ("[sources.door]\nstride = 7200\n", "sources.door.stride: 7200.0 is out of range"),
        (
            "[captions]\nunchanged_threshold = -0.1\n",
            "captions.unchanged_threshold: -0.1 is out of range [0, 1]",
        ),
        (
            "[sources.door]\nunchanged_threshold = 2\n",
            "sources.door.unchanged_threshold: 2.0 is out of range",
        ),
        ('[sources.door]\nwindow = "long"\n', "sources.door.window: expected float"),
        ('[sources."front door"]\nurl = "x.mp4"\n', "sources.front door: 'front door' is not a source name"),
        ('[sources.2nd]\nurl = "x.mp4"\n', "'2nd' is not a source name (a letter, then"),
        ("[sources]\ndoor = 1\n", "[sources.door] must be a table"),
    ],
)
def test_bad_file_names_the_file_and_key(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert needle in str(info.value)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("typed", "suggestion"), [("ctv", "cctv"), ("Narration", "narration"), ("scren", "screen")]
)
def test_a_one_word_prompt_that_is_no_preset_is_a_likely_typo_named_with_the_nearest_preset(
    typed: str, suggestion: str
) -> None:
    problem = preset_typo(typed)
    assert problem is not None and problem.startswith(f"{typed!r} is not a preset")
    assert f"Did you mean {suggestion!r}?" in problem
    # Still a valid setting: the user may mean that one word as the prompt.
    assert apply_overrides(Config(), {"captions.prompt": typed}).captions.prompt == typed


@pytest.mark.parametrize("prompt", ["cctv", "narration", "Describe who enters the shop and when."])
def test_presets_and_real_prompt_text_are_no_typos(prompt: str) -> None:
    assert preset_typo(prompt) is None


def test_context_is_the_template_not_a_prompt() -> None:
    problem = preset_typo("context")
    assert problem is not None and "'context' is not a preset" in problem


def test_missing_file_is_named(tmp_path: Path) -> None:
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
    with pytest.raises(ConfigError, match="'sources.door' is not of the form sources.NAME.key"):
        apply_overrides(Config(), ["sources.door=rtsp://cam"])


def test_prompt_presets_exist_and_resolve() -> None:
    presets = load_prompts()
    for name in ("narration", "cctv", "screen", "context"):
        assert presets[name].strip()
    assert prompt_preset_names() == ["narration", "cctv", "screen"]
    assert "{duration}" in presets["narration"]
    assert resolve_prompt("cctv", presets) == presets["cctv"]
    assert resolve_prompt("Count the cars.", presets) == "Count the cars."


CAMS = """
[captions]
prompt = "narration"

[sources.door]
url = "rtsp://cam-door/stream"
prompt = "cctv"
window = 30
stride = 10

[sources.desk]
url = "screen"
prompt = "screen"

[sources.yard]
url = "rtsp://cam-yard/stream"
"""


def test_per_source_settings_layer_over_the_global_ones(tmp_path: Path) -> None:
    path = tmp_path / "cams.toml"
    path.write_text(CAMS)
    config = apply_overrides(
        load_config(path),
        [
            "sources.yard.stride=2",
            "sources.door.url=rtsp://cam-door/other?channel=1",
            "sampler.window=20",
            "sources.door.unchanged_threshold=0",
            "captions.unchanged_threshold=0.02",
        ],
        "--set",
    )
    assert configured_sources(config) == [
        NamedSource("door", "rtsp://cam-door/other?channel=1"),  # --set's url replaced the file's
        NamedSource("desk", "screen"),
        NamedSource("yard", "rtsp://cam-yard/stream"),
    ]
    presets = load_prompts()
    door = caption_settings(config, stream="door")
    assert (door.prompt, door.window, door.stride) == (presets["cctv"], 30.0, 10.0)
    yard = caption_settings(config, stream="yard")
    assert (yard.prompt, yard.window, yard.stride) == (presets["narration"], 20.0, 2.0)
    assert (door.unchanged_threshold, yard.unchanged_threshold) == (0.0, 0.02)  # 0: the door is never gated
    assert caption_settings(config) == caption_settings(config, stream="nobody")

    options = inference_options(
        config,
        run_id="r1",
        run_dir="/run/r1",
        streams={"door": "vn-r1-door", "desk": "vn-r1-desk", "cam3": "x"},
    )
    assert options.captions == caption_settings(config)
    assert options.stream_captions == {
        "door": caption_settings(config, stream="door"),
        "desk": caption_settings(config, stream="desk"),
    }  # yard is not a stream of this run; cam3 has nothing of its own
    assert options.model == config.model.name and options.max_inp_length == config.model.max_inp_length


def test_offline_settings_ignore_sources(tmp_path: Path) -> None:
    path = tmp_path / "cams.toml"
    path.write_text(CAMS)
    settings = caption_settings(load_config(path), offline=True)
    assert (settings.window, settings.stride, settings.max_slice_nums) == (16.0, 8.0, 2)
    assert settings.skip_stale is False


def test_a_source_needs_a_url_from_the_file_or_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "cams.toml"
    path.write_text('[sources.door]\nprompt = "cctv"\n')
    config = load_config(path)
    with pytest.raises(ConfigError, match=r"sources.door: no url \(.*--source door=SRC\)"):
        configured_sources(config)
    named = apply_overrides(config, {"sources.door.url": "rtsp://cam-door/stream"})
    assert configured_sources(named) == [NamedSource("door", "rtsp://cam-door/stream")]
    with pytest.raises(ConfigError, match="no source: pass --source SRC"):
        configured_sources(Config())
    with pytest.raises(UnsupportedSource, match="unsupported scheme gopher://"):
        configured_sources(apply_overrides(Config(), {"sources.door.url": "gopher://cam/1"}))


def test_source_options_come_from_the_capture_section() -> None:
    config = apply_overrides(Config(), ["capture.max_side=640", "capture.loop_files=true"])
    options = source_options(config, realtime=False)
    assert (options.max_side, options.loop, options.realtime) == (640, True, False)
    assert options.fps_hint == config.capture.screen_fps


def test_every_source_option_a_user_may_set_is_fed_from_the_capture_section() -> None:
    changed = {
        "capture.max_side": 640,
        "capture.realtime": False,
        "capture.loop_files": True,
        "capture.open_timeout": 3.0,
        "capture.read_timeout": 2.0,
        "capture.screen_fps": 12.0,
        "capture.decode": "all",
        "capture.hwaccel": "auto",  # the capture processes' default; a bare SourceOptions decodes in software
        "capture.nice": 10,
        "sampler.fps": 2.0,  # what capture samples at under decode = "sampled"
    }
    options = source_options(apply_overrides(Config(), changed))
    unchanged = {f.name for f in fields(SourceOptions) if getattr(options, f.name) == f.default}
    assert unchanged == {"rtsp_transport"}, "a SourceOptions field the [capture] section does not reach"
    assert (options.loop, options.fps_hint, options.open_timeout, options.nice) == (True, 12.0, 3.0, 10)


def test_a_bad_value_gets_one_message_from_a_file_a_flag_set_and_code(tmp_path: Path) -> None:
    """One validator: the same words, naming the key, whichever way the value came in."""
    message = "gateway.port: 70000 is out of range [0, 65535]"
    path = tmp_path / "bad.toml"
    path.write_text("[gateway]\nport = 70000\n")
    for make, origin in (
        (lambda: load_config(path), f"{path}: "),
        (lambda: resolve_config(build_parser().parse_args(["run", "--port", "70000"])), "command line: "),
        (lambda: apply_overrides(Config(), ["gateway.port=70000"], "--set"), "--set: "),
        (lambda: GatewayOptions(port=70000), ""),
    ):
        with pytest.raises(ConfigError) as info:
            make()
        assert str(info.value) == origin + message

    # A key of the section and a limit only code sets, through the same validator.
    with pytest.raises(ConfigError) as info:
        apply_overrides(Config(), ["gateway.max_message_bytes=100"], "--set")
    assert str(info.value) == "--set: gateway.max_message_bytes: 100 is out of range [256, 67108864]"
    with pytest.raises(
        ConfigError, match=r"^gateway\.max_message_bytes: 100 is out of range \[256, 67108864\]$"
    ):
        GatewayOptions(max_message_bytes=100)
    with pytest.raises(ConfigError, match=r"^gateway\.ask_timeout: 0 is out of range \(0, inf\)$"):
        GatewayOptions(ask_timeout=0)


def test_the_documented_outputs_example_loads_with_the_defaults_it_shows(tmp_path: Path) -> None:
    text = packaged_text("default.toml")
    example = text[text.index("# [[outputs.webhook]]") : text.index("# Sources by name")]
    path = tmp_path / "outputs.toml"
    path.write_text(re.sub(r"(?m)^# ?", "", example).replace('ca_file = ""', ""))
    outputs = load_config(path).outputs
    assert outputs.webhook == (WebhookConfig(url="https://example.com/hook"),)
    assert outputs.mqtt == MqttConfig(host="localhost")
    assert not Config().outputs and outputs


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (
            '[[outputs.webhook]]\nurl = "ftp://x/y"',
            "outputs.webhook[0].url: 'ftp://x/y': the scheme must be http",
        ),
        ('[[outputs.webhook]]\nurl = "http:///p"', "outputs.webhook[0].url: 'http:///p' names no host"),
        (
            '[[outputs.webhook]]\nurl = "http://h:99999/"',
            "outputs.webhook[0].url: 'http://h:99999/' is not a URL",
        ),
        (
            '[[outputs.webhook]]\nurl = "http://a"\n[[outputs.webhook]]\nurl = "http://b"\ntimeout = -1',
            "outputs.webhook[1].timeout: -1.0 is out of range",
        ),
        (
            '[[outputs.webhook]]\nurl = "http://a"\ntypes = ["event", "alarm"]',
            "outputs.webhook[0].types: unknown message type(s) 'alarm' (known: caption, event, summary)",
        ),
        ('[[outputs.webhook]]\nurl = "http://a"\ntypes = []', "outputs.webhook[0].types: empty"),
        ('[[outputs.webhook]]\nurl = "http://a"\nsecrte = "x"', "unknown key outputs.webhook[0].secrte"),
        ('[outputs.mqtt]\nhost = ""', "outputs.mqtt.host: must not be empty"),
        ("[outputs.mqtt]\nport = 1883", "outputs.mqtt.host: must not be empty"),
        ('[outputs.mqtt]\nhost = "h"\nport = 0', "outputs.mqtt.port: 0 is out of range [1, 65535]"),
        ('[outputs.mqtt]\nhost = "h"\nport = "1883"', "outputs.mqtt.port: expected int"),
        ('[outputs.mqtt]\nhost = "h"\ntimeout = -2', "outputs.mqtt.timeout: -2.0 is out of range"),
        ('[outputs.mqtt]\nhost = "h"\ntopic_prefix = "a/#"', "outputs.mqtt.topic_prefix: 'a/#' must be"),
        (
            '[outputs.mqtt]\nhost = "h"\nca_file = "/no/such.pem"',
            "outputs.mqtt.ca_file: '/no/such.pem' is not a file",
        ),
        ('[outputs.mqtt]\nhost = "h"\ntypes = "event"', "outputs.mqtt.types: expected an array of strings"),
        ('[outputs]\nwebhook = {url = "http://a"}', "outputs.webhook must be an array of tables"),
        ("[outputs]\nsmtp = 1", "unknown key outputs.smtp"),
    ],
)
def test_bad_outputs_name_the_key(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and needle in str(info.value), str(info.value)


def test_mqtt_keys_can_be_set_from_the_command_line() -> None:
    config = apply_overrides(load_config(None), ["outputs.mqtt.host=broker", "outputs.mqtt.port=8883"])
    assert config.outputs.mqtt == MqttConfig(host="broker", port=8883)
    with pytest.raises(ConfigError, match="outputs.mqtt.port: 0 is out of range"):
        apply_overrides(config, ["outputs.mqtt.port=0"])


def test_a_bad_output_stops_vidnarrate_run_with_exit_2_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[outputs.webhook]]\nurl = "mailto:guard@example.com"\n')
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "stream.cli",
            "run",
            "--config",
            str(path),
            "--source",
            "demo",
            "--model",
            "tiny",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "outputs.webhook[0].url" in done.stderr and "http or https" in done.stderr


def test_the_documented_alert_examples_load(tmp_path: Path) -> None:
    text = packaged_text("default.toml")
    example = text[text.index("# [[alerts]]") : text.index("# Outputs that leave the machine")]
    path = tmp_path / "alerts.toml"
    path.write_text(re.sub(r"(?m)^# ?", "", example))
    door, fire = load_config(path).alerts
    assert (door.name, door.streams, door.question, door.cooldown) == (
        "person_at_door",
        ("door",),
        "Is a person standing at the door?",
        30.0,
    )
    assert fire.streams == "*" and fire.pattern == r"(?i)\b(fire|smoke)\b" and fire.question is None


def test_model_max_batch_defaults_to_16_reaches_the_inference_process_and_is_bounded() -> None:
    assert Config().model.max_batch == 16
    config = apply_overrides(Config(), ["model.max_batch=4"], "--set")
    options = inference_options(config, run_id="r1", run_dir="/run/r1", streams={"door": "x"})
    assert options.max_batch == 4
    for bad in ("0", "65"):
        with pytest.raises(ConfigError) as info:
            apply_overrides(Config(), [f"model.max_batch={bad}"], "--set")
        assert str(info.value) == f"--set: model.max_batch: {bad} is out of range [1, 64]"


def test_model_devices_takes_a_list_of_devices_and_names_the_key_when_one_is_bad() -> None:
    config = apply_overrides(Config(), {"model.devices": ["cuda:0", "cuda:1", "cpu", "cpu"]}, "test")
    assert config.model.devices == ("cuda:0", "cuda:1", "cpu", "cpu")
    with pytest.raises(ConfigError, match=r"model\.devices: 'gpu0' is not"):
        apply_overrides(Config(), {"model.devices": ["cpu", "gpu0"]}, "test")
    with pytest.raises(ConfigError, match=r"model\.devices: expected an array of strings"):
        apply_overrides(Config(), {"model.devices": "cpu"}, "test")
