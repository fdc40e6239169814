"""Behind PgBouncer: what ``POOL["pgbouncer"]`` changes, and the checks of its settings.

PgBouncer refuses the ``options`` startup parameter (``-c name=value``) unless its
``ignore_startup_parameters`` lists it, and then drops it: behind PgBouncer the pooled
backend sends none. The time zone is then set as Django sets it (``SET TIME ZONE``);
PgBouncer tracks ``TimeZone`` and sets it on each server connection it lends, in both
modes. ``statement_timeout`` is set with ``SET`` on each new connection in session mode;
in transaction mode no session setting holds (the next transaction may run on another
server connection), so it is not set, and the check ``W013`` says so.

In transaction mode a statement prepared on one server connection is unknown to the
next: Django's default, ``prepare_threshold=None``, prepares none, and the check
``W012`` warns when ``OPTIONS`` sets one (PgBouncer 1.21+ with
``max_prepared_statements`` supports them: silence the check then). Django's
``iterator()`` and other chunked reads use client-side cursors (as with
``DISABLE_SERVER_SIDE_CURSORS``), and the reset on return is a rollback only (see
:attr:`~django_poolconf.conf.pool.PoolSettings.reset_policy`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django_poolconf.conf.rules import Problem, example, show_value

__all__ = ["admin_console", "pgbouncer_problems", "session_setup_sql"]


def session_setup_sql(mode: str | None, statement_timeout: int | None) -> bytes | None:
    """What each new connection runs behind PgBouncer in session mode, if anything."""
    if mode != "session" or statement_timeout is None:
        return None
    return f"SET statement_timeout = {int(statement_timeout)}".encode()


def pgbouncer_problems(
    where: str, settings_dict: Mapping[str, Any], pool: Mapping[str, Any]
) -> list[Problem]:
    """The settings that break behind PgBouncer in the mode ``pool["pgbouncer"]`` names."""
    mode = pool.get("pgbouncer")
    if mode is None:
        if pool.get("pgbouncer_admin") is None:
            return []
        return [
            Problem(
                "W015",
                f"{where}['POOL']['pgbouncer_admin'] is set, but {where}['POOL']"
                "['pgbouncer'] is not: the alias is not behind PgBouncer, and "
                "PgBouncer's admin console is not read.",
                hint="Set POOL['pgbouncer'] to PgBouncer's pool_mode, or remove "
                "pgbouncer_admin.",
            )
        ]
    problems: list[Problem] = []
    options = settings_dict.get("OPTIONS") or {}
    if not isinstance(options, Mapping):
        return problems
    if options.get("options"):
        problems.append(
            Problem(
                "W011",
                f"{where}['OPTIONS']['options'] is set, but {where}['POOL']"
                f"['pgbouncer'] is {mode!r}: PgBouncer refuses the 'options' startup "
                "parameter, or drops it when its ignore_startup_parameters lists it, "
                "so these session settings do not reach the server.",
                hint="Set them on the server for the role or database (ALTER ROLE ... "
                "SET ...), or in PgBouncer's connect_query.",
            )
        )
    if mode != "transaction":
        return problems
    if options.get("prepare_threshold") is not None and not pool.get(
        "pgbouncer_prepared_statements"
    ):
        problems.append(
            Problem(
                "W012",
                f"{where}['OPTIONS']['prepare_threshold'] is "
                f"{show_value(options['prepare_threshold'])}, but PgBouncer in "
                "transaction mode lends another server connection to each "
                "transaction, which does not know the statements prepared on the "
                "last one: the backend ignores it and prepares none.",
                hint="Remove prepare_threshold. On PgBouncer 1.21 or later with "
                "max_prepared_statements set, declare it: "
                "POOL['pgbouncer_prepared_statements'] = True.",
            )
        )
    if pool.get("statement_timeout") is not None:
        problems.append(
            Problem(
                "W013",
                f"{where}['POOL']['statement_timeout'] is set, but behind PgBouncer "
                "in transaction mode no session setting holds: it is not applied.",
                hint="Set statement_timeout on the server for the role or database "
                "(ALTER ROLE app SET statement_timeout = '30s'), or in PgBouncer's "
                "connect_query.",
            )
        )
    if pool.get("reset_on_return") == "full":
        problems.append(
            Problem(
                "W014",
                f"{where}['POOL']['reset_on_return'] is 'full', but behind PgBouncer "
                "in transaction mode each return's DISCARD ALL reaches whichever "
                "server connection PgBouncer lends, not this client's session.",
                hint="Remove reset_on_return: behind PgBouncer in transaction mode "
                "'auto' is a rollback.",
            )
        )
    return problems


def admin_console(where: str, key: str, value: object) -> Problem | None:
    """The rule of ``pgbouncer_admin``: ``None``, or a URL naming the database ``pgbouncer``.

    Neither ``E019`` nor ``E003`` shows the value: it may carry a password (and
    libpq's parse errors repeat it).
    """
    if value is None:
        return None
    if not isinstance(value, str):
        # Its type only: bytes, a dict or a list of URLs may hold the password too.
        return Problem(
            "E003",
            f"{where} must be a URL or None, got a {type(value).__name__}.",
            hint=f"For example: {key}={example(key)}.",
        )
    hint = (
        "Give the URL of PgBouncer's admin console, whose database is 'pgbouncer', "
        "for a user in its admin_users or stats_users: "
        "'postgresql://stats@pgbouncer.internal:6432/pgbouncer'."
    )
    import psycopg  # here: an SQLite or MySQL project may have no psycopg (nor libpq)
    from psycopg.conninfo import conninfo_to_dict

    try:
        dbname = conninfo_to_dict(value).get("dbname")
    except psycopg.Error:
        return Problem("E019", f"{where} is not a URL that libpq can read.", hint=hint)
    if dbname != "pgbouncer":
        return Problem(
            "E019",
            f"{where} does not name the database 'pgbouncer', PgBouncer's admin "
            "console.",
            hint=hint,
        )
    return None
