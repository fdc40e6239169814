"""The pool's state, in process: no pool, no server; records are strings."""

from __future__ import annotations

import threading
import time

import pytest

from django_poolconf.pool.state import HANDED, OPEN, PARKED, PoolState
from django_poolconf.pool.waitline import LineClosed, LineTimeout

DEADLINE_S = 10  # only catches hangs


def _state(pool_size: int = 2, max_overflow: int = 1) -> PoolState[str]:
    return PoolState(pool_size, max_overflow)


def _no_tidy(first: bool) -> None:
    pass


def _fill(state: PoolState[str], *records: str) -> None:
    """Open ``records`` (reserving their room) and check them in, in this order."""
    for _ in records:
        assert state.checkout() is OPEN
    for record in records:
        assert state.checkin(record) is True


def _waiter(state: PoolState[str], deadline_s: float = DEADLINE_S):
    """A thread waiting in line; returns it and the list its outcome goes to."""
    result: list[object] = []
    began = time.monotonic()
    ticket = state.join(began)

    def wait() -> None:
        try:
            result.append(state.wait(ticket, began + deadline_s, _no_tidy))
        except (LineTimeout, LineClosed) as error:
            result.append(error)

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    return thread, result


# -- checkout ----------------------------------------------------------------------


def test_a_new_state_has_room_for_pool_size_plus_max_overflow():
    state = _state(pool_size=2, max_overflow=1)
    assert [state.checkout() for _ in range(4)] == [OPEN, OPEN, OPEN, None]
    assert state.numbers() == (2, 0, 3, 1, 0)


def test_the_most_recently_returned_record_is_lent_first():
    state = _state()
    _fill(state, "a", "b")
    assert state.checkout() == "b"
    assert state.checkout() == "a"


def test_a_parked_record_is_idle_and_taken_before_opening_another():
    state = _state(pool_size=2, max_overflow=0)
    assert state.checkout() is OPEN
    assert state.checkin_loan("a", park="loan", held=None) is PARKED
    assert state.numbers() == (2, 1, 0, -1, 0)
    assert state.checkout() == "a"  # not OPEN: the parked one is idle
    assert state.parked.take_back("loan") is None  # its owner finds it gone


def test_the_oldest_parked_record_is_taken_first():
    state = _state(pool_size=2, max_overflow=0)
    state.checkout(), state.checkout()
    state.checkin_loan("first", park="one", held=None)
    state.checkin_loan("second", park="two", held=None)
    assert state.checkout() == "first"


def test_the_owner_takes_back_its_parked_record():
    state = _state()
    state.checkout()
    state.checkin_loan("a", park="loan", held=None)
    assert state.parked.take_back("loan") == "a"
    assert state.numbers() == (2, 0, 1, -1, 0)


def test_a_newcomer_queues_behind_those_waiting_even_with_an_idle_record():
    state = _state(pool_size=1, max_overflow=0)
    state.checkout()
    thread, result = _waiter(state)
    try:
        assert state.checkout() is None  # someone waits: join the line
    finally:
        state.checkin("a")
        thread.join(DEADLINE_S)
    assert result == ["a"]


def test_a_probe_takes_only_an_idle_record():
    state = _state(pool_size=1, max_overflow=0)
    assert state.take_idle() is None  # never room for a new one
    _fill(state, "a")
    assert state.take_idle() == "a"


def test_room_given_back_wakes_the_first_in_line_to_open_a_connection():
    state = _state(pool_size=1, max_overflow=0)
    state.checkout()
    thread, result = _waiter(state)
    while not state.line:
        time.sleep(0.001)
    state.closed()  # the borrowed record was closed
    thread.join(DEADLINE_S)
    assert result == [OPEN]


def test_room_given_back_wakes_the_first_in_line_at_once():
    state = _state(pool_size=1, max_overflow=0)
    state.checkout()
    ticket = state.join(time.monotonic())
    ticket.clear()  # as a waiter that looked and found nothing
    state.closed()
    assert ticket.is_set()  # not only at its next look


def test_a_waiter_times_out_and_leaves_the_line():
    state = _state(pool_size=1, max_overflow=0)
    state.checkout()
    thread, result = _waiter(state, deadline_s=0.05)
    thread.join(DEADLINE_S)
    assert [type(r) for r in result] == [LineTimeout]
    assert state.numbers()[4] == 0  # nobody waits


def test_a_waiter_of_a_retired_pool_leaves_the_line():
    state = _state(pool_size=1, max_overflow=0)
    state.checkout()
    thread, result = _waiter(state)
    state.life.retired = True
    thread.join(DEADLINE_S)
    assert [type(r) for r in result] == [LineClosed]


# -- checkin -----------------------------------------------------------------------


def test_a_checkin_goes_to_the_first_in_line():
    state = _state(pool_size=1, max_overflow=0)
    state.checkout()
    thread, result = _waiter(state)
    assert state.checkin("a") is True
    thread.join(DEADLINE_S)
    assert result == ["a"]
    assert state.numbers() == (1, 0, 1, 0, 0)


def test_a_checkin_beyond_pool_size_idle_is_to_be_closed():
    state = _state(pool_size=1, max_overflow=1)
    state.checkout(), state.checkout()
    assert state.checkin("a") is True
    assert state.checkin("b") is False  # an overflow one: close it
    state.closed()
    assert state.numbers() == (1, 1, 0, 0, 0)


def test_a_checkin_to_a_retired_pool_is_to_be_closed():
    state = _state()
    state.checkout()
    state.life.retired = True
    assert state.checkin("a") is False


def test_a_checkin_inside_a_section_of_its_own_thread_does_not_nest():
    # As when the garbage collector returns a connection in the middle of a
    # section: the record goes idle, and the first in line takes it at its next look.
    state = _state(pool_size=1, max_overflow=0)
    state.checkout()
    thread, result = _waiter(state)
    while not state.line:
        time.sleep(0.001)
    with state.lock:
        assert state.checkin("a") is True
        assert list(state.idle) == ["a"]
        assert len(state.line) == 1  # not handed over from inside the section
    thread.join(DEADLINE_S)
    assert result == ["a"]


def test_a_checkin_inside_a_section_keeps_at_most_pool_size_idle():
    # The garbage collector returns an overflow connection inside a section of
    # this thread: it is to be closed, and its room comes back without a wake.
    state = _state(pool_size=1, max_overflow=1)
    _fill(state, "a")
    assert state.checkout() == "a"
    assert state.checkout() is OPEN
    with state.lock:
        assert state.checkin("a") is True
        assert state.checkin("b") is False  # pool_size idle already: close it
        state.closed()
    assert state.numbers() == (1, 1, 0, 0, 0)


def test_a_checkin_inside_a_section_of_a_retired_pool_is_to_be_closed():
    state = _state()
    state.checkout()
    state.life.retired = True
    with state.lock:
        assert state.checkin("a") is False


def test_a_return_counts_its_hold_and_is_handed_to_the_first_in_line():
    state = _state(pool_size=1, max_overflow=0)
    state.checkout()
    thread, result = _waiter(state)
    assert state.checkin_loan("a", park="loan", held=0.25) is HANDED  # not parked
    thread.join(DEADLINE_S)
    assert result == ["a"]
    assert state.counters.hold_total == 0.25


def test_a_return_is_parked_only_while_fewer_than_pool_size_are_idle():
    state = _state(pool_size=1, max_overflow=1)
    state.checkout(), state.checkout()
    assert state.checkin_loan("a", park="one", held=None) is PARKED
    assert state.checkin_loan("b", park="two", held=None) is None  # check it in
    assert state.checkin("b") is False  # and, an overflow one, close it


def test_a_retired_pool_neither_parks_nor_hands_over():
    state = _state()
    state.checkout()
    state.life.retired = True
    assert state.checkin_loan("a", park="loan", held=None) is None
    assert not state.parked


# -- dispose, fork, counters ---------------------------------------------------------


def test_dispose_takes_every_idle_and_parked_record():
    state = _state(pool_size=2, max_overflow=1)
    _fill(state, "a")
    state.checkout(), state.checkout()  # "a" again, and room for "b"
    state.checkin_loan("b", park="loan", held=None)
    state.checkin("a")
    assert sorted(state.take_all()) == ["a", "b"]
    state.closed(2)
    assert state.numbers() == (2, 0, 0, -2, 0)


def test_a_forked_child_forgets_the_parent_s_records_and_counts():
    state = _state(pool_size=2, max_overflow=0)
    _fill(state, "a")
    state.checkout()  # "a"
    state.checkout()  # room for "b", lent by the parent
    state.checkin_loan("a", park="loan", held=1.0)
    old_lock = state.lock
    assert state.forget_fork_state() == ["a"]
    assert state.numbers() == (2, 0, 0, -2, 0)
    assert state.lock is not old_lock
    assert state.counters.lock is state.lock
    assert state.line.lock is state.lock
    assert state.counters.hold_total == 0


def test_the_counters_share_the_state_s_lock():
    state = _state()
    assert state.counters.lock is state.lock
    assert state.line.lock is state.lock


@pytest.mark.parametrize("threads", [4])
def test_concurrent_checkouts_and_checkins_keep_the_numbers(threads):
    state = _state(pool_size=2, max_overflow=2)
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            for i in range(300):
                taken = state.checkout()
                if taken is None:
                    ticket = state.join(time.monotonic())
                    taken = state.wait(ticket, time.monotonic() + DEADLINE_S, _no_tidy)
                record = f"{name}{i}" if taken is OPEN else taken
                if not state.checkin(record):
                    state.closed()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    workers = [
        threading.Thread(target=work, args=(str(n),), daemon=True)
        for n in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(DEADLINE_S * 3)
    assert errors == []
    pool_size, idle, checked_out, overflow, waiting = state.numbers()
    assert (checked_out, waiting) == (0, 0)
    assert idle == pool_size + overflow <= 2  # never more idle than pool_size


# -- max_waiting -------------------------------------------------------------------


def test_a_checkout_beyond_max_waiting_gets_no_place_in_line():
    state: PoolState[str] = PoolState(1, 0, max_waiting=2)
    assert state.checkout() is OPEN
    first = state.join(time.monotonic())
    second = state.join(time.monotonic())

    assert first is not None and second is not None
    assert state.join(time.monotonic()) is None
    assert state.numbers()[4] == 2
    state.line.leave(first)  # one gave up: room in line for another
    assert state.join(time.monotonic()) is not None


def test_max_waiting_0_lets_any_number_wait():
    state: PoolState[str] = PoolState(1, 0, max_waiting=0)
    assert state.checkout() is OPEN
    assert all(state.join(time.monotonic()) is not None for _ in range(50))
    assert state.numbers()[4] == 50
