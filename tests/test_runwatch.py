"""When a live run ends and what the terminal is told: the I/O-free core, driven step by step."""

from __future__ import annotations

import pytest

from stream.process import ExitCode
from stream.runwatch import RunWatch, Say, SourceState, Stop

RUNNING, ENDED, FAILED = SourceState.RUNNING, SourceState.ENDED, SourceState.FAILED


def texts(steps: list[Say | Stop]) -> list[str]:
    return [step.text for step in steps if isinstance(step, Say)]


def test_files_that_end_are_announced_once_then_the_run_stops_after_the_last_captions() -> None:
    watch = RunWatch(["yard", "door"])
    assert watch.update({"yard": RUNNING, "door": RUNNING}, drained=False) == []
    assert texts(watch.update({"yard": ENDED, "door": RUNNING}, drained=False)) == ["source yard ended"]
    assert watch.update({"yard": ENDED, "door": RUNNING}, drained=False) == [], "said once"
    steps = watch.update({"yard": ENDED, "door": ENDED}, drained=False)
    assert texts(steps) == ["source door ended", "every source has ended; captioning what is left"]
    assert not any(isinstance(step, Stop) for step in steps), "the last windows are still being captioned"
    assert watch.update({"yard": ENDED, "door": ENDED}, drained=False) == []
    steps = watch.update({"yard": ENDED, "door": ENDED}, drained=True)
    assert steps[-1] == Stop(ExitCode.OK) and texts(steps) == ["the last captions are out; stopping"]
    assert watch.stopped and watch.update({}, drained=True) == []


def test_keep_serving_keeps_the_run_up_once_everything_is_captioned() -> None:
    watch = RunWatch(["clip"], keep_serving=True)
    watch.update({"clip": ENDED}, drained=False)
    steps = watch.update({"clip": ENDED}, drained=True)
    assert texts(steps) == ["the last captions are out; the viewer stays up with the history (Ctrl-C stops)"]
    assert not watch.stopped
    assert watch.update({"clip": ENDED}, drained=True) == []


def test_a_source_that_never_ends_keeps_the_run_up() -> None:
    """A network source reconnects: it stays running, so the files beside it ending stops nothing."""
    watch = RunWatch(["clip", "door"])
    assert texts(watch.update({"clip": ENDED}, drained=False)) == ["source clip ended"]
    for _ in range(3):
        assert watch.update({"clip": ENDED, "door": RUNNING}, drained=False) == []
    assert not watch.stopped


def test_every_source_failing_stops_at_once_with_an_error() -> None:
    watch = RunWatch(["a", "b"])
    assert watch.update({"a": FAILED}, drained=False) == []
    steps = watch.update({"a": FAILED, "b": FAILED}, drained=False)
    assert steps == [
        Say("every source failed (see the log above); stopping.", error=True),
        Stop(ExitCode.FAILED),
    ]


def test_a_failed_source_beside_an_ended_one_still_waits_for_the_captions_and_exits_1() -> None:
    watch = RunWatch(["a", "b"])
    steps = watch.update({"a": FAILED, "b": ENDED}, drained=False)
    assert Say("every source has ended (1 failed: a); captioning what is left", error=True) in steps
    assert not watch.stopped
    assert watch.update({"a": FAILED, "b": ENDED}, drained=True)[-1] == Stop(ExitCode.FAILED)


@pytest.mark.parametrize("keep_serving", [False, True])
def test_a_failed_service_stops_the_run_whatever_else(keep_serving: bool) -> None:
    watch = RunWatch(["a"], keep_serving=keep_serving)
    steps = watch.update({"a": RUNNING}, drained=False, failed_service=("inference", 78))
    assert steps == [
        Say("inference failed (exit code 78); stopping. See the log above.", error=True),
        Stop(ExitCode.FAILED),
    ]


def test_a_run_needs_a_source() -> None:
    with pytest.raises(ValueError, match="at least one source"):
        RunWatch([])
