"""The router over a primary reached through a real PgBouncer and a replica reached directly."""

from __future__ import annotations

import pytest
from django.db import connections

from tests.testapp.models import Item

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "replica"])


def test_reads_go_to_the_replica_and_writes_through_pgbouncer(
    pgbouncer, routing, paused_replay
):
    browser = routing()
    primary_port = int(connections["analytics"].settings_dict["PORT"])

    read = browser.get("/router/read/").json()
    replies = [
        browser.get("/router/write-then-read/", name=f"item {n}").json()
        for n in range(10)
    ]

    assert read["server"]["in_recovery"] is True
    assert read["server"]["alias"] == "replica"
    # Written through PgBouncer, and read back in the same request on the primary.
    assert [r["found"] for r in replies] == [True] * 10
    assert {r["server"]["port"] for r in replies} == {primary_port}
    assert {r["server"]["alias"] for r in replies} == {"default"}
    assert Item.objects.using("default").filter(name="item 9").exists()
    assert not paused_replay.has("item 0")  # the replica would have read stale data


def test_iterator_and_atomic_on_the_primary_behind_pgbouncer(pgbouncer, routing):
    browser = routing()
    Item.objects.bulk_create(Item(name=f"i{n}") for n in range(30))

    reply = browser.get("/router/read-in-atomic/").json()

    assert reply["inside"]["in_recovery"] is False
    assert reply["inside"]["alias"] == "default"
    names = [
        i.name
        for i in Item.objects.using("default").order_by("id").iterator(chunk_size=7)
    ]
    assert names == [f"i{n}" for n in range(30)]
