from __future__ import annotations

import pytest

from django_poolconf.health.report import Target


@pytest.mark.parametrize(
    ("host", "port", "shown"),
    [
        ("db", "5432", "db:5432/app"),
        ("db1,db2", "5432,5433", "db1:5432,db2:5433/app"),
        ("db1,db2", "5433", "db1:5433,db2:5433/app"),
        # libpq refuses it; shown as set.
        ("db1,db2,db3", "5432,5433", "db1,db2,db3:5432,5433/app"),
    ],
)
def test_target_shows_each_server_of_a_multi_host_setting(host, port, shown):
    target = Target.from_params({"host": host, "port": port, "dbname": "app"})

    assert str(target) == shown
