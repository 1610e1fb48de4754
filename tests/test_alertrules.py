"""stream/alertrules.py: [[alerts]] tables and --alert flags, checked at start. Every bad rule is refused
through the real ``vidnarrate run`` with exit code 2 and one line naming the rule and the key, before
anything starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stream import democlip
from stream.alertrules import AlertRule, check_rule_streams, parse_alert_flag
from stream.cli import build_parser, resolve_config
from stream.config import load_config
from stream.errors import ConfigError
from stream.pipeline import inference_options
from stream.process import ExitCode

VIDNARRATE = Path(sys.executable).with_name("vidnarrate")


def test_a_file_s_rules_load_with_their_defaults(tmp_path: Path) -> None:
    path = tmp_path / "cctv.toml"
    path.write_text(
        '[[alerts]]\nname = "person_at_door"\nstreams = ["door"]\nquestion = "Is a person at the door?"\n'
        "threshold = 0.7\non_after = 2\n\n"
        '[[alerts]]\nname = "fire"\npattern = "(?i)fire"\non_unchanged = true\n'
    )
    door, fire = load_config(path).alerts
    assert door == AlertRule(
        name="person_at_door",
        streams=("door",),
        question="Is a person at the door?",
        threshold=0.7,
        on_after=2,
    )
    assert (door.off_after, door.cooldown, door.on_unchanged) == (2, 30.0, False)
    assert fire == AlertRule(name="fire", pattern="(?i)fire", on_unchanged=True)
    assert fire.streams == "*" and fire.applies_to("anything") and not door.applies_to("yard")


def test_alert_flags_follow_the_file_s_rules_and_reach_the_inference_process(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text('[[alerts]]\nname = "fire"\npattern = "fire"\n')
    args = build_parser().parse_args(
        ["run", "--config", str(path), "--source", "x.mp4", "--alert", "person: Is a person in view? "]
        + ["--alert", "car-2:A car?"]
    )
    config = resolve_config(args)
    assert [(r.name, r.question, r.pattern, r.streams) for r in config.alerts] == [
        ("fire", None, "fire", "*"),
        ("person", "Is a person in view?", None, "*"),
        ("car-2", "A car?", None, "*"),
    ]
    options = inference_options(config, run_id="r", run_dir="/r", streams={"cam0": "ring"})
    assert options.alerts == config.alerts


def test_rule_streams_must_be_sources_of_the_run() -> None:
    rules = [AlertRule(name="a", question="Q?", streams=("door", "yard"))]
    check_rule_streams(rules, ["door", "yard", "street"])
    with pytest.raises(ConfigError, match=r"alerts\.a\.streams: 'yard' is not a source of this run"):
        check_rule_streams(rules, ["door"])


def test_a_bad_flag_names_itself() -> None:
    with pytest.raises(ConfigError, match=r"--alert 'no colon': expected 'NAME: QUESTION'"):
        parse_alert_flag("no colon")


BAD_RULES = [
    (
        'name = "a"\nstreams = ["gate"]\nquestion = "Q?"',
        "alerts.a.streams: 'gate' is not a source of this run",
    ),
    ('name = "a"\nquestion = "  "', "alerts.a.question: must not be empty"),
    ('name = "a"', "alerts.a.question: give exactly one of question and pattern (it has neither)"),
    (
        'name = "a"\nquestion = "Q?"\npattern = "x"',
        "alerts.a.question: give exactly one of question and pattern",
    ),
    ('name = "a"\npattern = "(unclosed"', "alerts.a.pattern: '(unclosed' is not a regular expression"),
    ('name = "a"\nquestion = "Q?"\nthreshold = 1.5', "alerts.a.threshold: 1.5 is out of range [0.0, 1.0]"),
    ('name = "a"\nquestion = "Q?"\non_after = 0', "alerts.a.on_after: 0 is out of range [1, 1000]"),
    ('name = "a"\nquestion = "Q?"\noff_after = 2.5', "alerts.a.off_after: expected an integer"),
    ('name = "a"\nquestion = "Q?"\ncooldown = -1', "alerts.a.cooldown: -1.0 is out of range"),
    ('name = "a"\nquestion = "Q?"\nthreshold = "high"', "alerts.a.threshold: expected a number"),
    ('name = "a"\nquestion = "Q?"\nstreams = []', 'alerts.a.streams: must be "*" or a non-empty list'),
    ('name = "a"\nquestion = "Q?"\nwhen = 1', "alerts.a: unknown key 'when'"),
    ('name = "a b"\nquestion = "Q?"', "alerts[0].name: 'a b' is not a rule name (letters, digits, _ and -"),
    ('question = "Q?"', "alerts[0].name: missing"),
    (
        'name = "a"\nquestion = "Q?"\n\n[[alerts]]\nname = "a"\npattern = "x"',
        "alerts.a.name: the rule name 'a' is used twice",
    ),
]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "door.mp4"
    democlip.make_video(path, width=160, height=96, fps=10.0, seconds=1.0)
    return path


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VIDNARRATE_RUN_ROOT": str(tmp_path / "runs")}
    return subprocess.run([str(VIDNARRATE), *args], capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize(("table", "needle"), BAD_RULES)
def test_a_bad_rule_exits_2_naming_the_rule_and_the_key(
    tmp_path: Path, clip: Path, table: str, needle: str
) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(f"[[alerts]]\n{table}\n")
    done = run_cli(tmp_path, "run", "--config", str(path), "--source", f"door={clip}", "--model", "tiny")
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert needle in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "runs").exists(), "nothing was started"


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--alert", "person"], "--alert 'person': expected 'NAME: QUESTION'"),
        (["--alert", "per son: Q?"], "alerts.per son.name: 'per son' is not a rule name"),
        (["--alert", "person:   "], "alerts.person.question: must not be empty"),
        (["--alert", "p: A?", "--alert", "p: B?"], "alerts.p.name: the rule name 'p' is used twice"),
    ],
)
def test_a_bad_alert_flag_exits_2_naming_it(
    tmp_path: Path, clip: Path, flags: list[str], needle: str
) -> None:
    done = run_cli(tmp_path, "run", "--source", f"door={clip}", "--model", "tiny", *flags)
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert needle in done.stderr and "Traceback" not in done.stderr, done.stderr
