from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.db import connections

from django_poolconf import engines
from django_poolconf.health import runner
from tests.pgbouncer import PgBouncer


@pytest.fixture(params=["transaction", "session"])
def pgbouncer(request: pytest.FixtureRequest, db: None) -> Iterator[PgBouncer]:
    """The default alias behind a real PgBouncer in each pool mode, with a fresh pool.

    ``POOL["pgbouncer"]`` names the mode. A missing binary fails the test.
    """
    settings_dict = connections.settings["default"]
    original = settings_dict["HOST"], settings_dict["PORT"], settings_dict["POOL"]
    bouncer = PgBouncer(
        request.param,
        str(original[0]),
        int(original[1]),
        str(settings_dict["USER"]),
    )
    connections.close_all()
    engines.dispose_all()
    runner._probes.clear()
    try:
        bouncer.start()
        settings_dict["HOST"], settings_dict["PORT"] = "127.0.0.1", str(bouncer.port)
        settings_dict["POOL"] = {**original[2], "pgbouncer": request.param}
        yield bouncer
    finally:
        connections.close_all()
        engines.dispose_all()
        runner._probes.clear()
        settings_dict["HOST"], settings_dict["PORT"], settings_dict["POOL"] = original
        bouncer.close()
