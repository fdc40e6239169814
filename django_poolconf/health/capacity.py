"""Capacity planning: will every worker's pools fit in the server's ``max_connections``?

Each worker process has its own pools, so the worst case a server sees is
``(pool_size + max_overflow) × workers × hosts``, summed over the aliases that point
at it. That must stay within ``max_connections`` minus the connections the server
reserves for superusers (``superuser_reserved_connections``, and
``reserved_connections`` from PostgreSQL 16). ``poolstatus --workers`` shows it and
``manage.py check --deploy`` warns about it.

Behind PgBouncer (``POOL["pgbouncer"]``) the pools connect to PgBouncer, not to the
server: the worst case must fit in PgBouncer's ``max_client_conn``, and in session
mode, where each client connection holds a server connection for its life, in its
``default_pool_size`` too (or the ``pool_mode`` and ``pool_size`` its ``[databases]``
section gives the alias's database). Those are read from PgBouncer's admin console
(``POOL["pgbouncer_admin"]``); without it the limit is unknown.

An SQLite file has no server and no connection limit: its plan shows the worst
case, with no limit to compare it with.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from django_poolconf.conf.health import health_settings
from django_poolconf.conf.pool import PoolSettings
from django_poolconf.conf.rules import Problem
from django_poolconf.health.report import AliasHealth, HealthReport, Target
from django_poolconf.health.runner import check_health, pooled_aliases

__all__ = ["ServerCapacity", "deployment_problems", "plan_capacity"]


@dataclass(frozen=True, kw_only=True)
class ServerCapacity:
    """The worst case of one server against its limit."""

    server: str  # "host:port", or an SQLite file's path
    aliases: tuple[str, ...]  # every pooled alias that connects to it
    per_process: int  # sum of pool_size + max_overflow over those aliases
    workers: int
    hosts: int
    max_connections: int | None  # None: the server did not answer
    reserved_connections: int | None
    total_connections: int | None  # client connections now, all databases
    pgbouncer: str | None = None  # PgBouncer's pool_mode, if the server is one
    admin_console: bool = False  # whether an alias names PgBouncer's admin console
    max_client_conn: int | None = None  # PgBouncer's; None: not known
    # PgBouncer's server connections per pool (the database's pool_size, else
    # default_pool_size); None: not known.
    default_pool_size: int | None = None
    pool_size_setting: str = "default_pool_size"  # or "pool_size", the database's
    file: bool = False  # an SQLite file: no server, no limit

    @property
    def worst_case(self) -> int:
        """Connections if every pool of every worker on every host is full."""
        return self.per_process * self.workers * self.hosts

    @property
    def limit(self) -> str:
        """The setting that bounds the worst case: ``max_connections``, or PgBouncer's."""
        if self.pgbouncer is None:
            return "max_connections"
        if (
            self.pgbouncer == "session"
            and self.default_pool_size is not None
            and (
                self.max_client_conn is None
                or self.default_pool_size < self.max_client_conn
            )
        ):
            return self.pool_size_setting
        return "max_client_conn"

    @property
    def available(self) -> int | None:
        """What the server (or PgBouncer) allows these clients, ``None`` if unknown."""
        if self.pgbouncer is not None:
            if self.max_client_conn is None:
                return None
            if self.limit == self.pool_size_setting:
                return self.default_pool_size
            return self.max_client_conn
        if self.max_connections is None:
            return None
        return self.max_connections - (self.reserved_connections or 0)

    @property
    def exceeds(self) -> bool:
        """Whether the worst case is more than the server allows."""
        available = self.available
        return available is not None and self.worst_case > available


def plan_capacity(
    report: HealthReport, *, workers: int, hosts: int = 1
) -> list[ServerCapacity]:
    """Return the worst case of each server that an alias of ``report`` connects to.

    Every pooled alias counts towards its server, checked or not; the limits come
    from the report's server views (``check_health(server_view=True)``).
    """
    views = {
        h.target.server: h.server_view
        for h in report.databases
        if h.target is not None and h.server_view is not None
    }
    bouncers = {
        h.target.server: h.pgbouncer
        for h in report.databases
        if h.target is not None
        and h.pgbouncer is not None
        and h.pgbouncer.error is None
    }
    wanted = {h.target.server for h in report.databases if h.target is not None}
    files = {
        h.target.server: h.target.is_file
        for h in report.databases
        if h.target is not None
    }
    members: dict[tuple[str, str], list[tuple[str, PoolSettings]]] = {}
    for alias in pooled_aliases():
        wrapper: Any = connections[alias]
        try:
            target = Target.from_params(wrapper.get_connection_params())
            settings: PoolSettings = wrapper.get_pool_settings()
        except Exception:  # a misconfigured alias is reported elsewhere
            continue
        if target.server in wanted:
            members.setdefault(target.server, []).append((alias, settings))
    plans = []
    for server, aliases in members.items():
        view = views.get(server)
        bouncer = bouncers.get(server)
        modes = [s.pgbouncer for _, s in aliases if s.pgbouncer is not None]
        plans.append(
            ServerCapacity(
                server=server[1]
                if not server[0] and files.get(server)
                else ":".join(server),
                aliases=tuple(alias for alias, _ in aliases),
                per_process=sum(settings.capacity for _, settings in aliases),
                workers=workers,
                hosts=hosts,
                max_connections=None if view is None else view.max_connections,
                reserved_connections=None
                if view is None
                else view.reserved_connections,
                total_connections=None if view is None else view.total_connections,
                # PgBouncer's own pool_mode (the database's) when it answered, else
                # the declared one.
                pgbouncer=None
                if not modes
                else bouncer.effective_pool_mode
                if bouncer is not None and bouncer.effective_pool_mode
                else modes[0],
                admin_console=any(s.pgbouncer_admin for _, s in aliases),
                max_client_conn=None if bouncer is None else bouncer.max_client_conn,
                default_pool_size=None
                if bouncer is None
                else bouncer.effective_pool_size,
                pool_size_setting="default_pool_size"
                if bouncer is None
                else bouncer.pool_size_setting,
                file=files.get(server, False),
            )
        )
    return plans


def deployment_problems(databases: Sequence[str] | None) -> list[Problem]:
    """The problems ``manage.py check --deploy`` reports (``W004`` to ``W006``, ``W016``).

    Settings alone tell whether ``connect_timeout`` is turned off (``W005``). The
    capacity (``W004``, when the worker count is known) and the idle session timeout
    (``W006``) need the server: they are checked only for the aliases in
    ``databases`` (``check --database``), with a bounded probe, and skipped for a
    server that does not answer.
    """
    problems: list[Problem] = []
    pooled = pooled_aliases()
    for alias in pooled:
        options = connections.settings[alias].get("OPTIONS") or {}
        value = options.get("connect_timeout")
        if value is not None and _disables_timeout(value):
            problems.append(
                Problem(
                    "W005",
                    f"DATABASES[{alias!r}]['OPTIONS']['connect_timeout'] is "
                    f"{value!r}, which makes libpq wait for a server that does not "
                    "answer as long as the operating system lets it (minutes).",
                    hint="Remove it from OPTIONS and set POOL['connect_timeout'] "
                    "(default 10 seconds).",
                )
            )
    checked = [alias for alias in pooled if databases and alias in databases]
    if not checked:
        return problems
    try:
        options = health_settings()
    except ImproperlyConfigured:  # reported as E016 by check_pool_settings()
        return problems
    report = check_health(checked, max_age=0, server_view=True, pgbouncer=True)
    if options.workers is not None:
        plans = plan_capacity(report, workers=options.workers, hosts=options.hosts)
        for plan in plans:
            if plan.exceeds:
                problems.append(_capacity_problem(plan))
    for health in report.databases:
        problems.extend(_recycle_problems(health.alias, health))
        if health.pgbouncer is not None and health.settings is not None:
            # Here: it imports psycopg, which a MySQL or SQLite project may lack.
            from django_poolconf.backends.postgresql.pgbouncer_admin import (
                console_problems,
            )

            problems.extend(
                console_problems(health.alias, health.settings, health.pgbouncer)
            )
    return problems


def _disables_timeout(value: object) -> bool:
    try:
        return int(str(value).strip()) <= 0
    except ValueError:
        return False


def _capacity_problem(plan: ServerCapacity) -> Problem:
    names = ", ".join(repr(alias) for alias in plan.aliases)
    if plan.pgbouncer is not None:
        allowed = (
            f"the {plan.available} server connections it lends in session mode "
            f"({plan.pool_size_setting}={plan.default_pool_size}), one per client "
            "connection"
            if plan.limit == plan.pool_size_setting
            else f"the {plan.available} clients it allows (max_client_conn="
            f"{plan.max_client_conn})"
        )
        return Problem(
            "W004",
            f"The pools of {names} may open {plan.worst_case} connections to "
            f"PgBouncer at {plan.server} ({plan.per_process} per process x "
            f"{_count(plan.workers, 'worker')} x {_count(plan.hosts, 'host')}), more "
            f"than {allowed}.",
            hint="Lower pool_size or max_overflow, run fewer workers, or raise "
            f"PgBouncer's {plan.limit}.",
        )
    return Problem(
        "W004",
        f"The pools of {names} may open {plan.worst_case} connections to one server "
        f"({plan.per_process} per process x {_count(plan.workers, 'worker')} x "
        f"{_count(plan.hosts, 'host')}), more than the {plan.available} it allows (max_connections="
        f"{plan.max_connections} minus {plan.reserved_connections} reserved).",
        hint="Lower pool_size or max_overflow, run fewer workers, raise the server's "
        "max_connections, or put PgBouncer in front of it.",
    )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _recycle_problems(alias: str, health: AliasHealth) -> Iterable[Problem]:
    view, settings = health.server_view, health.settings
    if view is None or settings is None or view.idle_session_timeout_s is None:
        return
    recycle = settings.pool_recycle
    if recycle is None or recycle >= view.idle_session_timeout_s:
        shown = "None" if recycle is None else f"{recycle:g} s"
        yield Problem(
            "W006",
            f"DATABASES[{alias!r}]['POOL']['pool_recycle'] is {shown}, not shorter "
            f"than the server's idle_session_timeout "
            f"({view.idle_session_timeout_s:g} s): the server closes idle pooled "
            "connections before the pool replaces them.",
            hint=f"Set pool_recycle below {view.idle_session_timeout_s:g}, or raise "
            "the server's idle_session_timeout.",
        )
