"""Reading Django's ``connection`` attribute from async code does no network I/O."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from django.db import connections

from django_poolconf import engines

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fresh_pools() -> Iterator[None]:
    connections.close_all()
    engines.dispose_all()
    yield
    connections.close_all()


def test_a_parked_connection_read_in_an_event_loop_is_not_taken_back(get, pool_options):
    pool_options(pre_ping_threshold=0)  # every take-back pings the server
    assert get("/item/").status == 200  # the request's end parks the connection
    wrapper = connections["default"]
    assert wrapper._parked
    lender = engines.lender_of("default")
    pings = lender.counters.pre_pings

    async def read() -> object:
        return wrapper.connection

    seen = asyncio.run(read())

    # No ping from the event loop's thread: to async code, as to Django's async-unsafe
    # methods, the wrapper has no usable connection there.
    assert lender.counters.pre_pings == pings
    assert seen is None
    assert wrapper._parked  # still parked, for the next synchronous use
    assert wrapper.connection is not None  # taken back, synchronously
    assert lender.counters.pre_pings == pings + 1
    assert get("/item/").status == 200
