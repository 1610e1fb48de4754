"""stream/rulework.py: the alert side of the scheduling core, driven directly (the scheduler's own tests
drive it through :class:`~stream.scheduler.Scheduler`)."""

from __future__ import annotations

from types import SimpleNamespace

from stream.alertrules import AlertRule
from stream.alerts import AlertCore
from stream.messages import Caption, EventState
from stream.rulework import RuleWork
from stream.sampler import Job


def caption(seq: int, text: str, *, stream: str = "door", unchanged: bool = False) -> Caption:
    t = 4.0 * seq
    return Caption(
        stream=stream,
        seq=seq,
        t_start=t,
        t_end=t + 8.0,
        frame_times=[t + 8.0],
        wall_start=1000.0 + t,
        wall_end=1008.0 + t,
        text=text,
        model="tiny",
        latency_ms=1.0,
        skipped=0,
        frames=1,
        unchanged=True if unchanged else None,
    )


def job(seq: int) -> Job:
    return Job(stream="door", index=seq, t_start=4.0 * seq, t_end=4.0 * seq + 8.0, frames=())


def work() -> RuleWork:
    rules = [
        AlertRule(name="red", pattern=r"\bred\b", off_after=1, cooldown=0.0),
        AlertRule(name="person", question="Is a person in view?", cooldown=0.0),
        AlertRule(name="still", question="Is it still?", on_unchanged=True, cooldown=0.0),
    ]
    return RuleWork(AlertCore(rules, run_id="r"))


def test_a_window_s_pattern_rules_score_its_text_at_once_and_its_questions_wait_as_one_evaluation() -> None:
    rules = work()
    rules.add_thumbnail("door", 7.5, "JPEG-A")
    rules.window_out(caption(0, "a red car"), job(0), (), ("emb",))
    (started,) = rules.take_events()
    assert (started.rule, started.state, started.thumbnail) == ("red", EventState.START, "JPEG-A")
    (due,) = rules.due
    assert due.rules == ("person", "still") and due.embeddings == ("emb",)
    assert rules.take_events() == [], "the outbox empties as it is read"
    rules.window_out(caption(1, "a blue car"), job(1), (), ())  # no frame to ask about
    assert [e.state for e in rules.take_events()] == [EventState.END] and len(rules.due) == 1


def test_an_unchanged_window_is_asked_only_by_the_rules_that_want_it() -> None:
    rules = work()
    rules.window_out(caption(0, "a red car", unchanged=True), job(0), (), ("emb",))
    assert rules.take_events() == [], "the pattern rule keeps its state on an unchanged window"
    (due,) = rules.due
    assert due.rules == ("still",)


def test_scores_make_events_and_figures_and_a_refusal_is_counted() -> None:
    rules = work()
    rules.window_out(caption(0, "a car"), job(0), (), ("emb",))
    due = rules.due.popleft()
    rules.evaluated(due, [0.9, 0.1], model_ms=30.0)
    (started,) = rules.take_events()
    assert (started.rule, started.state) == ("person", EventState.START)
    assert rules.failed(due) == 1
    figures: dict[str, dict[str, object]] = {"door": {}}
    rules.add_status(figures)
    assert figures["door"] == {
        "rule_windows": 1,
        "rule_errors": 1,
        "rules_model_ms": 30.0,
        "rules_ms": 15.0,
        "open_events": 1,
    }


def test_an_ended_stream_ends_its_events_only_once_nothing_of_it_is_pending() -> None:
    rules = work()
    rules.window_out(caption(0, "red"), job(0), (), ())
    assert rules.take_events()[0].state == EventState.START
    streams = {"door": SimpleNamespace(ended=True, due=False)}
    rules.close_ended(streams, {"door"})  # a window of it in flight
    assert rules.take_events() == [] and not rules.all_closed(1)
    rules.close_ended(streams, set())
    assert [e.state for e in rules.take_events()] == [EventState.END] and rules.all_closed(1)
    rules.close_ended(streams, set())
    assert rules.take_events() == [], "ended once"


def test_stop_ends_every_open_event() -> None:
    rules = work()
    rules.window_out(caption(0, "red", stream="yard"), job(0), (), ())
    rules.window_out(caption(0, "red", stream="door"), job(0), (), ())
    assert [e.state for e in rules.stop()] == [EventState.START] * 2 + [EventState.END] * 2
