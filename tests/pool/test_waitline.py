"""The waiting line, in process: no pool, no server."""

from __future__ import annotations

import threading
import time

import pytest

from django_poolconf.pool.waitline import LineClosed, LineTimeout, WaitLine

DEADLINE_S = 10  # only catches hangs


def _never(first: bool) -> None:
    pass


def _wait(line, ticket, deadline=None, take=lambda: None, closed=lambda: False):
    return line.wait(
        ticket,
        time.monotonic() + DEADLINE_S if deadline is None else deadline,
        take=take,
        tidy=_never,
        closed=closed,
    )


def _in_thread(fn):
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(_outcome(fn)), daemon=True)
    thread.start()
    return thread, result


def _outcome(fn):
    try:
        return fn()
    except Exception as error:  # noqa: BLE001 - the test looks at it
        return error


def test_an_empty_line_hands_nothing_over():
    line: WaitLine[str] = WaitLine()
    assert not line
    assert line.hand_to_first("conn") is False


def test_waiters_are_served_in_order_of_arrival():
    line: WaitLine[str] = WaitLine()
    # The second checkout began later but joins first: it still goes second.
    later = line.join(began=2.0)
    earlier = line.join(began=1.0)
    assert len(line) == 2
    assert line.hand_to_first("a") is True
    assert line.hand_to_first("b") is True
    assert (earlier.item, later.item) == ("a", "b")
    assert not line


def test_a_waiter_returns_what_is_handed_to_it():
    line: WaitLine[str] = WaitLine()
    ticket = line.join(time.monotonic())
    thread, result = _in_thread(lambda: _wait(line, ticket))
    line.hand_to_first("conn")
    thread.join(DEADLINE_S)
    assert result == ["conn"]
    assert not line


def test_only_the_first_in_line_takes():
    line: WaitLine[str] = WaitLine()
    first = line.join(1.0)
    second = line.join(2.0)
    asked: list[str] = []

    def take_as(name):
        def take():
            asked.append(name)
            return name

        return take

    # The second looks first: not its turn, so it may not take, and times out.
    with pytest.raises(LineTimeout):
        _wait(line, second, deadline=time.monotonic(), take=take_as("second"))
    assert asked == []
    assert _wait(line, first, take=take_as("first")) == "first"
    assert asked == ["first"]
    assert not line


def test_a_waiter_times_out_and_leaves_the_line():
    line: WaitLine[str] = WaitLine()
    ticket = line.join(time.monotonic())
    with pytest.raises(LineTimeout):
        _wait(line, ticket, deadline=time.monotonic() + 0.1)
    assert not line
    assert line.hand_to_first("conn") is False


def test_the_next_in_line_is_woken_when_the_first_leaves():
    line: WaitLine[str] = WaitLine()
    first = line.join(1.0)
    second = line.join(2.0)
    assert first.is_set()  # woken: it is first
    assert not second.is_set()
    assert line.leave(first) is None
    assert second.is_set()


def test_a_waiter_that_gave_up_gets_back_what_was_handed_to_it_meanwhile():
    line: WaitLine[str] = WaitLine()
    ticket = line.join(time.monotonic())
    # Handed over after the waiter gave up, before it left: nothing is lost, leave()
    # returns it for the caller to pass on.
    assert line.hand_to_first("conn") is True
    assert line.leave(ticket) == "conn"
    assert not line


def test_a_closed_line_raises_and_keeps_what_was_handed_over():
    line: WaitLine[str] = WaitLine()
    ticket = line.join(time.monotonic())
    line.hand_to_first("conn")
    with pytest.raises(LineClosed):
        _wait(line, ticket, closed=lambda: True)
    assert line.leave(ticket) == "conn"  # the caller closes it


def test_a_closed_line_removes_a_waiter_that_was_handed_nothing():
    line: WaitLine[str] = WaitLine()
    ticket = line.join(time.monotonic())
    with pytest.raises(LineClosed):
        _wait(line, ticket, closed=lambda: True)
    assert not line
    assert line.leave(ticket) is None


def test_a_hand_over_by_the_thread_holding_the_lock_does_not_wait_for_it():
    # The garbage collector may return a connection in a thread inside a section of
    # the pool's state: the lock is reentrant, so the return cannot deadlock.
    line: WaitLine[str] = WaitLine()
    ticket = line.join(time.monotonic())
    with line.lock:
        assert line.hand_to_first("conn") is True
    assert ticket.item == "conn"


def test_the_line_works_under_the_lock_it_is_given():
    lock = threading.RLock()
    line: WaitLine[str] = WaitLine(lock)
    assert line.lock is lock
