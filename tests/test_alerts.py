"""stream/alerts.py: the hysteresis core, driven with scripted scores (the tiny model answers yes/no
arbitrarily, so the logic is tested here and only the plumbing through a real run)."""

from __future__ import annotations

from collections.abc import Sequence

from stream.alertrules import AlertRule
from stream.alerts import AlertCore, Window
from stream.messages import Event, EventState


def rule(**settings: object) -> AlertRule:
    base: dict[str, object] = {"name": "person", "question": "Is a person in view?", "cooldown": 0.0}
    base.update(settings)
    return AlertRule(**base)  # type: ignore[arg-type]


def window(i: int, stream: str = "door", *, stride: float = 4.0, length: float = 8.0) -> Window:
    """The i-th window of a stream: [i*stride, i*stride + length] s, captioned "caption i"."""
    return Window(
        stream=stream,
        t_start=i * stride,
        t_end=i * stride + length,
        wall_start=1000.0 + i * stride,
        wall_end=1000.0 + i * stride + length,
        text=f"caption {i}",
        thumbnail=f"jpeg{i}",
    )


def feed(core: AlertCore, scores: Sequence[float], stream: str = "door", name: str = "person") -> list[Event]:
    events: list[Event] = []
    for i, score in enumerate(scores):
        events.extend(core.observe(window(i, stream), [(name, score)]))
    return events


def states(events: Sequence[Event]) -> list[tuple[str, str]]:
    return [(e.state.value, e.text) for e in events]


def test_one_positive_window_starts_and_two_negatives_end_with_the_defaults() -> None:
    core = AlertCore([rule()], run_id="r1")
    events = feed(core, [0.2, 0.9, 0.3, 0.4, 0.1])
    assert states(events) == [("start", "caption 1"), ("end", "caption 3")]
    start, end = events
    assert start.event_id == end.event_id == "r1-door-person-1"
    # the event covers its positive window; the negative windows that ended it are not part of it
    assert (start.t_start, start.t_end, end.t_start, end.t_end) == (4.0, 12.0, 4.0, 12.0)
    assert (start.wall_start, end.wall_end) == (1004.0, 1012.0)
    assert start.thumbnail == "jpeg1" and end.thumbnail is None
    assert (start.score, end.score) == (0.9, 0.4)


def test_on_after_needs_that_many_positives_in_a_row_and_the_event_starts_with_the_first() -> None:
    core = AlertCore([rule(on_after=3)], run_id="r")
    events = feed(core, [0.9, 0.9, 0.1, 0.9, 0.9, 0.9])
    assert states(events) == [("start", "caption 5")]
    assert events[0].t_start == 3 * 4.0  # the positive run began at window 3
    assert events[0].t_end == 5 * 4.0 + 8.0


def test_each_positive_window_while_open_is_an_update_with_the_newer_caption() -> None:
    core = AlertCore([rule(off_after=2)], run_id="r")
    events = feed(core, [0.9, 0.8, 0.1, 0.7, 0.2, 0.2])
    assert states(events) == [
        ("start", "caption 0"),
        ("update", "caption 1"),
        ("update", "caption 3"),  # one negative window in between does not end it
        ("end", "caption 5"),
    ]
    assert len({e.event_id for e in events}) == 1
    update = events[2]
    assert (update.t_start, update.t_end, update.score, update.thumbnail) == (0.0, 20.0, 0.7, None)
    assert events[-1].t_end == 20.0  # the last positive window's end


def test_the_threshold_is_inclusive() -> None:
    core = AlertCore([rule(threshold=0.5)], run_id="r")
    assert states(feed(core, [0.5])) == [("start", "caption 0")]
    core = AlertCore([rule(threshold=0.5)], run_id="r")
    assert feed(core, [0.4999]) == []


def test_cooldown_holds_a_new_start_until_that_much_stream_time_after_the_end() -> None:
    # windows end at 8, 12, 16, ...: the end comes with window 2 (t_end 16), so a new start needs a
    # window ending at 16 + 10 = 26 or later: window 5 (t_end 28), not window 3 or 4.
    core = AlertCore([rule(off_after=1, cooldown=10.0)], run_id="r")
    events = feed(core, [0.9, 0.9, 0.1, 0.9, 0.9, 0.9, 0.9])
    assert states(events) == [
        ("start", "caption 0"),
        ("update", "caption 1"),
        ("end", "caption 2"),
        ("start", "caption 5"),
        ("update", "caption 6"),
    ]
    assert events[0].event_id == "r-door-person-1" and events[3].event_id == "r-door-person-2"
    assert events[3].t_start == 12.0  # its positive run began at window 3, during the cooldown


def test_no_cooldown_restarts_at_once() -> None:
    core = AlertCore([rule(off_after=1, cooldown=0.0)], run_id="r")
    assert [e.state for e in feed(core, [0.9, 0.1, 0.9])] == [
        EventState.START,
        EventState.END,
        EventState.START,
    ]


def test_a_stream_that_ends_ends_its_open_events_only() -> None:
    core = AlertCore([rule()], run_id="r")
    core.observe(window(0, "door"), [("person", 0.9)])
    core.observe(window(0, "yard"), [("person", 0.9)])
    assert core.open_events() == 2
    ended = core.end_stream("door")
    assert [(e.stream, e.state) for e in ended] == [("door", EventState.END)]
    assert ended[0].text == "caption 0" and ended[0].t_end == 8.0
    assert core.open_events("door") == 0 and core.open_events("yard") == 1
    assert core.end_stream("door") == []  # nothing is ended twice


def test_a_run_that_stops_ends_every_open_event() -> None:
    core = AlertCore([rule(), rule(name="car", question="A car?")], run_id="r")
    core.observe(window(0, "door"), [("person", 0.9), ("car", 0.9)])
    core.observe(window(0, "yard"), [("person", 0.1), ("car", 0.9)])
    ended = core.stop()
    assert sorted((e.stream, e.rule) for e in ended) == [("door", "car"), ("door", "person"), ("yard", "car")]
    assert all(e.state is EventState.END for e in ended)
    assert core.stop() == [] and core.open_events() == 0


def test_streams_and_rules_keep_their_own_state() -> None:
    core = AlertCore([rule(on_after=2), rule(name="car", question="A car?", on_after=1)], run_id="r")
    events = []
    events += core.observe(window(0, "door"), [("person", 0.9), ("car", 0.1)])
    events += core.observe(window(0, "yard"), [("person", 0.1), ("car", 0.9)])
    events += core.observe(window(1, "yard"), [("person", 0.9), ("car", 0.9)])
    # door/person has one positive, yard/person one: neither reached on_after = 2
    assert [(e.stream, e.rule, e.state.value) for e in events] == [
        ("yard", "car", "start"),
        ("yard", "car", "update"),
    ]
    events = core.observe(window(1, "door"), [("person", 0.9), ("car", 0.1)])
    assert [(e.stream, e.rule, e.state.value) for e in events] == [("door", "person", "start")]
    assert core.counts["person"].scored == 4 and core.counts["car"].started == 1


def test_rules_for_window_follow_streams_and_on_unchanged() -> None:
    door_only = rule(name="door_person", streams=("door",))
    everywhere = rule(name="fire", question=None, pattern="fire", on_unchanged=True)
    core = AlertCore([door_only, everywhere], run_id="r")
    assert core.rules_for_window("door") == (door_only, everywhere)
    assert core.rules_for_window("yard") == (everywhere,)
    assert core.rules_for_window("door", unchanged=True) == (everywhere,)


def test_events_encode_as_the_protocol_says() -> None:
    core = AlertCore([rule()], run_id="r")
    (start,) = core.observe(window(0), [("person", 0.9)])
    data = start.to_dict()
    assert data == {
        "type": "event",
        "stream": "door",
        "rule": "person",
        "event_id": "r-door-person-1",
        "state": "start",
        "t_start": 0.0,
        "t_end": 8.0,
        "wall_start": 1000.0,
        "wall_end": 1008.0,
        "score": 0.9,
        "text": "caption 0",
        "thumbnail": "jpeg0",
    }
    assert "thumbnail" not in core.stop()[0].to_dict()
