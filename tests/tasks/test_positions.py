"""The positions a task carries, recorded and turned into a routing scope, in this process."""

from __future__ import annotations

import logging
import math
import re
import time

import pytest
from asgiref.sync import async_to_sync
from django.db import connections

from django_poolconf.replicas import format_lsn, parse_lsn
from django_poolconf.routers import routing_scope
from django_poolconf.routing.scope import SCOPE, Pin, Scope
from django_poolconf.tasks import positions
from tests.routing.conftest import admin_connection, wait_until
from tests.testapp.models import Item

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "replica"])


def _insert_position() -> int:
    with admin_connection("default") as primary:
        (text,) = primary.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
    return parse_lsn(text)


def _read(name: str) -> tuple[bool, str]:
    items = Item.objects.filter(name=name)
    return items.exists(), items.db


def test_nothing_is_recorded_before_the_first_routed_query(routing):
    routing()
    token = SCOPE.set(None)
    try:
        assert positions.record() == {}
    finally:
        SCOPE.reset(token)


def test_nothing_is_recorded_without_a_write(routing, caught_up):
    routing()
    with routing_scope():
        Item.objects.filter(name="read").exists()
        assert positions.record() == {}


def test_a_write_records_the_primarys_insert_position_after_it(routing):
    routing()
    with routing_scope():
        Item.objects.create(name="write")
        before = _insert_position()
        recorded = positions.record()
        after = _insert_position()

    assert set(recorded) == {"default"}
    assert before <= parse_lsn(recorded["default"]) <= after


def test_the_clients_pins_are_carried(routing):
    routing()
    now = time.time()
    pins = {
        "default": Pin(now + 60, 0x1_0000_0010),
        "analytics": Pin(now - 1, 5),  # expired
        "renamed": Pin(now + 60, None),  # no longer in DATABASES
    }
    with routing_scope():
        SCOPE.get().pins = pins
        assert positions.record() == {"default": "1/10"}
        SCOPE.get().pins = {"default": Pin(now + 60, None)}  # not causal
        assert parse_lsn(positions.record()["default"]) <= _insert_position()


def test_a_failed_position_query_reads_the_primary(routing, caplog):
    routing()
    with routing_scope():
        Item.objects.create(name="lost")
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            (pid,) = cursor.fetchone()
        with admin_connection("default") as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        with caplog.at_level(logging.WARNING, logger="django_poolconf.tasks.positions"):
            assert positions.record() == {"default": None}

    # psycopg 3.1 reports the terminated backend as a plain OperationalError.
    [message] = caplog.messages
    assert re.fullmatch(
        r"could not read the WAL position of 'default' "
        r"\((?:AdminShutdown \(SQLSTATE 57P01\)|OperationalError)\); "
        r"the task reads the primary",
        message,
    ), message


def test_async_code_records_the_primary(routing):
    routing()

    async def record():
        return positions.record()

    with routing_scope():
        Item.objects.create(name="async")
        assert async_to_sync(record)() == {"default": None}


def test_what_is_not_a_position_reads_the_primary():
    scope = positions.scope_for({"default": "zz/1", "replica": 5, 3: "0/1"})

    assert scope.pins == {
        "default": Pin(math.inf, None),
        "replica": Pin(math.inf, None),
    }
    assert positions.scope_for(None).pins == {}
    assert positions.scope_for(["default"]).pins == {}


def test_a_task_reads_a_replica_once_it_has_replayed_the_position(
    routing, paused_replay, caught_up
):
    routing()
    with routing_scope():
        Item.objects.create(name="replayed")
        recorded = positions.record()

    def read_in_task() -> tuple[bool, str]:
        token = positions.enter(recorded)
        try:
            assert isinstance(SCOPE.get(), Scope)
            return _read("replayed")
        finally:
            SCOPE.reset(token)

    assert read_in_task() == (True, "default")
    assert read_in_task() == (True, "default")
    paused_replay.resume()
    caught_up()
    wait_until(
        lambda: read_in_task() == (True, "replica"), "reads stayed on the primary"
    )
    assert format_lsn(parse_lsn(recorded["default"])) == recorded["default"]
