"""Django test cases run by Django's own test runner on a pooled SQLite file (see test_project.py)."""

from __future__ import annotations

import threading

from django.db import connection, connections, transaction
from django.test import TestCase, TransactionTestCase

from django_poolconf import engines
from tests.testapp.models import Item


class InTransactions(TestCase):
    def test_orm_in_a_test_transaction(self) -> None:
        Item.objects.create(name="one")
        with transaction.atomic():
            Item.objects.create(name="two")
        self.assertEqual(Item.objects.count(), 2)
        # The test database is a file beside the database: test_<NAME>.
        name = connection.settings_dict["NAME"]
        self.assertRegex(str(name), r"test_app(_\d+)?\.sqlite3$")


class InThreads(TransactionTestCase):
    def test_threads_share_the_pool(self) -> None:
        Item.objects.create(name="shared")
        seen: list[int] = []

        def read() -> None:
            try:
                for _ in range(20):
                    seen.append(Item.objects.filter(name="shared").count())
                    connections["default"].close()
            finally:
                connections.close_all()

        threads = [threading.Thread(target=read) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.assertEqual(seen, [1] * 80)
        stats = engines.stats_of("default")
        assert stats is not None
        self.assertLessEqual(stats.connections_opened - stats.connections_closed, 4)
        self.assertEqual(stats.checkout_timeouts, 0)
