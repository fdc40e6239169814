"""PgBouncer's admin console, read beside the health probes (``poolstatus`` only).

For an alias whose ``POOL["pgbouncer_admin"]`` names PgBouncer's admin console,
:func:`start_admin_probe` reads it in a thread of its own, as each alias's probe
runs; :func:`admin_view` gives its answer, or a timeout when it has none by the
check's deadline. Its result is never reused: the view never asks for it.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future

from django_poolconf.backends.postgresql.pgbouncer_admin import (
    PgBouncerView,
    console_address,
    probe_pgbouncer,
)
from django_poolconf.conf.pool import PoolSettings

__all__ = ["admin_view", "start_admin_probe"]

logger = logging.getLogger("django_poolconf.health")


def start_admin_probe(
    alias: str,
    settings: PoolSettings,
    dbname: str,
    deadline: float,
    user: str | None = None,
) -> Future[PgBouncerView] | None:
    """Start reading the admin console the alias names, if it is behind PgBouncer."""
    conninfo = settings.pgbouncer_admin
    if settings.pgbouncer is None or not conninfo:
        return None
    future: Future[PgBouncerView] = Future()
    thread = threading.Thread(
        target=_run,
        args=(future, alias, conninfo, dbname, deadline, user),
        name=f"django_poolconf pgbouncer {alias}",
        daemon=True,  # a hung console must not hold up the interpreter's exit
    )
    thread.start()
    return future


def admin_view(future: Future[PgBouncerView], settings: PoolSettings) -> PgBouncerView:
    """The console's answer, or a timeout if it has not answered yet."""
    if future.done():
        return future.result()
    assert settings.pgbouncer_admin is not None
    return PgBouncerView(
        server=console_address(settings.pgbouncer_admin),
        error="no answer within the timeout",
    )


def _run(
    future: Future[PgBouncerView],
    alias: str,
    conninfo: str,
    dbname: str,
    deadline: float,
    user: str | None,
) -> None:
    future.set_running_or_notify_cancel()
    try:
        view = probe_pgbouncer(conninfo, dbname, deadline, user)
    except Exception as error:
        logger.exception("PgBouncer admin console probe of %r failed", alias)
        view = PgBouncerView(
            server=console_address(conninfo),
            error=f"the probe failed ({type(error).__name__})",
        )
    future.set_result(view)
