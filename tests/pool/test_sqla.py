"""The SQLAlchemy pool class: what SQLAlchemy's own configuration still governs."""

from __future__ import annotations

import logging

import pytest
from django.db import connections

from django_poolconf import engines, get_engine

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fresh_pools():
    connections.close_all()
    engines.dispose_all()


def _pool_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith("Pool disposed")]


def test_the_pools_own_log_lines_follow_sqlalchemys_logger_not_the_apps(caplog):
    # The example project, like many, logs django_poolconf at INFO.
    caplog.set_level(logging.INFO, logger="django_poolconf")
    get_engine("default").connect().close()
    engines.dispose("default")
    assert _pool_records(caplog) == []

    caplog.clear()
    caplog.set_level(logging.INFO, logger="sqlalchemy.pool")
    get_engine("default").connect().close()
    engines.dispose("default")
    (record,) = _pool_records(caplog)
    assert record.name.startswith("sqlalchemy.pool")
