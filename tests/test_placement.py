"""Rendezvous placement of streams on inference processes (stream.placement)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from stream.placement import assign, inference_roles, owner, role_suffix

NAMES = [f"cam{i}" for i in range(1000)]


def test_one_slot_owns_everything() -> None:
    assert {owner(name, 1) for name in NAMES} == {0}


def test_streams_spread_over_the_slots() -> None:
    counts = [len(group) for group in assign(NAMES, 4)]
    assert sum(counts) == 1000
    assert all(200 <= count <= 300 for count in counts), counts  # ~250 each


@pytest.mark.parametrize("slots", [1, 2, 3, 4, 7])
def test_adding_a_slot_moves_about_one_in_n_and_only_to_the_new_slot(slots: int) -> None:
    before = {name: owner(name, slots) for name in NAMES}
    after = {name: owner(name, slots + 1) for name in NAMES}
    moved = [name for name in NAMES if before[name] != after[name]]
    assert all(after[name] == slots for name in moved)  # nothing moves between the old slots
    expected = 1000 / (slots + 1)
    assert 0.7 * expected <= len(moved) <= 1.3 * expected, (len(moved), expected)


def test_placement_is_the_same_in_another_process() -> None:
    """Python's own hash is salted per process; the placement must not be (a restarted gateway or
    inference process must agree with the others)."""
    here = [owner(name, 3) for name in NAMES[:50]]
    code = "from stream.placement import owner; print([owner(f'cam{i}', 3) for i in range(50)])"
    there = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "1"},
    ).stdout
    assert there.strip() == str(here)


def test_no_slot_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one"):
        owner("cam0", 0)


def test_roles_and_suffixes() -> None:
    assert inference_roles(["cuda:0"]) == ["inference"]
    assert inference_roles([]) == ["inference"]
    assert inference_roles(["cpu", "cpu"]) == ["inference:0", "inference:1"]
    assert role_suffix("inference") == ""
    assert role_suffix("inference:1") == "-1"
