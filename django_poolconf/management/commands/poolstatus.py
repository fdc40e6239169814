"""``manage.py poolstatus``: the operator's view of every pool, built on :mod:`django_poolconf.health`."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any, Final, NoReturn

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from django_poolconf.conf.health import health_settings
from django_poolconf.conf.rules import is_pooled
from django_poolconf.health import (
    DEGRADED,
    HEALTHY,
    UNHEALTHY,
    AliasHealth,
    HealthReport,
    check_health,
    pooled_aliases,
)
from django_poolconf.health.capacity import ServerCapacity, plan_capacity

#: Exit status with ``--check``.
EXIT_CODES: Final = {HEALTHY: 0, UNHEALTHY: 1, DEGRADED: 2}
#: Exit status of a command-line mistake (argparse's own 2 would read as "degraded").
USAGE_ERROR: Final = 3


class Command(BaseCommand):
    help = (
        "Show every pooled alias: its pool's settings and numbers, a live probe of its "
        "server (health, latency, replication lag), the server's own view of its "
        "connections, PgBouncer's pools when POOL['pgbouncer_admin'] names its admin "
        "console, and, given the number of workers, whether all their pools fit in "
        "max_connections (PgBouncer's max_client_conn behind it). --check exits 1 when "
        "unhealthy, 2 when degraded."
    )
    # A diagnostic must run even when the configuration has errors.
    requires_system_checks: list[str] = []

    def create_parser(
        self, prog_name: str, subcommand: str, **kwargs: Any
    ) -> CommandParser:
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        argparse_exit = parser.exit

        def exit(status: int = 0, message: str | None = None) -> NoReturn:
            argparse_exit(USAGE_ERROR if status else 0, message)

        parser.exit = exit  # type: ignore[method-assign]
        return parser

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--database",
            action="append",
            dest="databases",
            choices=tuple(connections),
            metavar="ALIAS",
            help="Only this alias; repeat for more. Default: every pooled alias.",
        )
        parser.add_argument(
            "--json",
            action="store_true",
            help="Print the JSON payload of the /health/db view, with detail.",
        )
        parser.add_argument(
            "--check",
            action="store_true",
            help="Exit with status 1 when unhealthy, 2 when degraded, 0 when healthy.",
        )
        parser.add_argument(
            "--watch",
            type=float,
            metavar="SECONDS",
            help="Refresh every SECONDS until interrupted (Ctrl-C).",
        )
        parser.add_argument(
            "--timeout",
            type=float,
            metavar="SECONDS",
            help="Time allowed for the probes. Default: POOLCONF['HEALTH']['TIMEOUT'].",
        )
        parser.add_argument(
            "--workers",
            type=int,
            metavar="N",
            help="Worker processes per host, for the capacity plan. Default: "
            "POOLCONF['HEALTH']['WORKERS'], else $WEB_CONCURRENCY.",
        )
        parser.add_argument(
            "--hosts",
            type=int,
            metavar="M",
            help="Hosts running these settings. Default: POOLCONF['HEALTH']['HOSTS'] (1).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        aliases = self._aliases(options["databases"])
        watch: float | None = options["watch"]
        if watch is not None and watch <= 0:
            raise CommandError(
                "--watch takes a number of seconds > 0.", returncode=USAGE_ERROR
            )
        if watch is not None and options["check"]:
            raise CommandError(
                "Use --check or --watch, not both.", returncode=USAGE_ERROR
            )
        timeout: float | None = options["timeout"]
        if timeout is not None and timeout <= 0:
            raise CommandError(
                "--timeout takes a number of seconds > 0.", returncode=USAGE_ERROR
            )
        try:
            settings = health_settings()
        except ImproperlyConfigured as error:
            raise CommandError(str(error), returncode=USAGE_ERROR) from None
        workers = settings.workers if options["workers"] is None else options["workers"]
        hosts = settings.hosts if options["hosts"] is None else options["hosts"]
        if (workers is not None and workers < 1) or hosts < 1:
            raise CommandError(
                "--workers and --hosts take an integer >= 1.", returncode=USAGE_ERROR
            )

        if watch is None:
            report = self._show(aliases, timeout, options["json"], workers, hosts)
            if options["check"] and EXIT_CODES[report.status]:
                raise SystemExit(EXIT_CODES[report.status])
            return
        try:
            while True:
                if not options["json"]:
                    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                    self.stdout.write(f"-- {stamp}, every {watch:g} s; Ctrl-C stops")
                self._show(
                    aliases, timeout, options["json"], workers, hosts, lines=True
                )
                self.stdout.flush()
                time.sleep(watch)
        except KeyboardInterrupt:
            return

    def _aliases(self, given: Sequence[str] | None) -> list[str]:
        if not given:
            return pooled_aliases()
        for alias in given:
            if not is_pooled(connections.settings[alias]):
                raise CommandError(
                    f"DATABASES[{alias!r}] does not use a django-poolconf backend.",
                    returncode=USAGE_ERROR,
                )
        return list(dict.fromkeys(given))

    def _show(
        self,
        aliases: list[str],
        timeout: float | None,
        as_json: bool,
        workers: int | None,
        hosts: int,
        *,
        lines: bool = False,
    ) -> HealthReport:
        # Always a fresh probe: a command's answer must not be an earlier one's.
        report = check_health(
            aliases,
            timeout=timeout,
            max_age=0,
            server_view=not as_json,
            pgbouncer=True,
        )
        if as_json:
            # One document per line when watching (JSON Lines); indented otherwise.
            payload = report.as_dict(detail=True)
            self.stdout.write(json.dumps(payload, indent=None if lines else 2))
            return report
        self.stdout.write(_pools_table(report, self.style))
        errors = [h for h in report.databases if h.error]
        for health in errors:
            self.stdout.write(f"  {health.alias}: {health.reason}: {health.error}")
        self.stdout.write(_server_views(report))
        pgbouncers = _pgbouncer_views(report)
        if pgbouncers:
            self.stdout.write(pgbouncers)
        files_only = all(
            h.target is not None and h.target.is_file for h in report.databases
        )
        if workers is None and files_only:
            pass  # SQLite files: no server, no max_connections to compare with
        elif workers is None:
            self.stdout.write(
                "Capacity: give --workers N (and --hosts M), or set "
                "POOLCONF['HEALTH']['WORKERS'] or WEB_CONCURRENCY, to compare the worst "
                "case with each server's max_connections."
            )
        else:
            plans = plan_capacity(report, workers=workers, hosts=hosts)
            self.stdout.write(_capacity_table(plans, self.style))
        self.stdout.write("")
        return report


def _pools_table(report: HealthReport, style: Any) -> str:
    header = (
        "ALIAS", "ROLE", "SERVER", "POOL_SIZE", "MAX_OVERFLOW", "TIMEOUT", "RECYCLE",
        "IN", "OUT", "OVERFLOW", "WAITING", "HEALTH", "LATENCY", "LAG", "BREAKER",
    )  # fmt: skip
    rows = [header]
    for h in report.databases:
        settings = h.settings
        rows.append(
            (
                h.alias,
                h.role,
                "-" if h.target is None else h.target.masked(),
                "-" if settings is None else str(h.pool_size),
                "-" if settings is None else str(settings.max_overflow),
                "-" if settings is None else f"{settings.pool_timeout:g} s",
                "-"
                if settings is None
                else "never"
                if settings.pool_recycle is None
                else f"{settings.pool_recycle:g} s",
                str(h.checked_in),
                str(h.checked_out),
                str(h.overflow),
                _waiting(h),
                h.status if h.reason is None else f"{h.status} ({h.reason})",
                "-" if h.latency_ms is None else f"{h.latency_ms:.2f} ms",
                "-" if h.replication_lag_s is None else f"{h.replication_lag_s:g} s",
                _or_dash(h.breaker),
            )
        )
    styles = {HEALTHY: style.SUCCESS, DEGRADED: style.WARNING, UNHEALTHY: style.ERROR}
    title = f"Pools of process {report.pid} (a command's own pools are empty): {report.status}"
    lines = _columns(rows)
    body = [lines[0]] + [
        styles[h.status](line)
        for h, line in zip(report.databases, lines[1:], strict=True)
    ]
    return "\n".join([styles[report.status](title), *body])


def _waiting(health: AliasHealth) -> str:
    """Checkouts waiting now, and ``max_waiting`` when it bounds them: ``2/10``."""
    waiting = 0 if health.stats is None else health.stats.waiting
    settings = health.settings
    if settings is None or not settings.max_waiting:
        return str(waiting)
    return f"{waiting}/{settings.max_waiting}"


def _server_views(report: HealthReport) -> str:
    out: list[str] = []
    seen: set[str] = set()
    for h in report.databases:
        view, target = h.server_view, h.target
        if view is None or target is None or str(target) in seen:
            continue
        seen.add(str(target))
        mysql = _vendor(h.alias) == "mysql"
        out.append(
            f"Connections to {target} by user and command "
            "(information_schema.PROCESSLIST, this command's probe left out):"
            if mysql
            else f"Connections to {target} by application_name and state "
            "(pg_stat_activity, this command's probe left out):"
        )
        rows = [
            ("USER", "COMMAND", "COUNT")
            if mysql
            else ("APPLICATION_NAME", "STATE", "COUNT")
        ]
        rows += [
            (name or "-", state or "?", str(n)) for name, state, n in view.connections
        ]
        if len(rows) == 1:
            rows.append(("(none)", "", ""))
        out += ["  " + line for line in _columns(rows)]
        out.append(
            f"  {view.total_connections} of max_connections={view.max_connections} in "
            "use on this server; "
            + (
                "one more is kept for an account with SUPER or CONNECTION_ADMIN."
                if mysql
                else f"{view.reserved_connections} reserved for superusers."
            )
        )
    return "\n".join(out)


def _vendor(alias: str) -> str:
    try:
        return str(connections[alias].vendor)
    except Exception:  # a misconfigured alias is reported elsewhere
        return ""


def _pgbouncer_views(report: HealthReport) -> str:
    out: list[str] = []
    seen: set[str] = set()
    for h in report.databases:
        view = h.pgbouncer
        if view is None or view.server in seen:
            continue
        seen.add(view.server)
        if view.error is not None:
            out.append(
                f"PgBouncer's admin console did not answer ({view.server}): {view.error}"
            )
            continue
        # The alias's database's own pool_mode and pool_size, if it has them.
        mode = f"{view.effective_pool_mode} mode" + (
            "" if view.database_pool_mode is None else f" for {view.database!r}"
        )
        out.append(
            f"PgBouncer at {view.server} (version {view.version}, {mode}, "
            f"max_client_conn={view.max_client_conn}, {view.pool_size_setting}="
            f"{view.effective_pool_size}), SHOW POOLS:"
        )
        rows = [
            (
                "DATABASE", "USER", "CL_ACTIVE", "CL_WAITING", "SV_ACTIVE", "SV_IDLE",
                "MAXWAIT",
            )
        ]  # fmt: skip
        rows += [
            (
                pool.database,
                pool.user,
                str(pool.cl_active),
                str(pool.cl_waiting),
                str(pool.sv_active),
                str(pool.sv_idle),
                f"{pool.maxwait:g} s",
            )
            for pool in view.pools
        ]
        if len(rows) == 1:
            rows.append(("(none)", "", "", "", "", "", ""))
        out += ["  " + line for line in _columns(rows)]
        if h.settings is not None:
            # Imported here: psycopg, which it needs, may be absent on SQLite or MySQL.
            from django_poolconf.backends.postgresql.pgbouncer_admin import (
                console_problems,
            )

            out += [
                f"  Warning: {problem}"
                for problem in console_problems(h.alias, h.settings, view)
            ]
    return "\n".join(out)


def _verdict(plan: ServerCapacity) -> str:
    if plan.file:
        return "no server (SQLite file)"
    if plan.available is None:
        if plan.pgbouncer is not None and not plan.admin_console:
            return "unknown (behind PgBouncer: set pgbouncer_admin)"
        return "unknown (no answer)"
    return f"EXCEEDS {plan.limit}" if plan.exceeds else "fits"


def _capacity_table(plans: list[ServerCapacity], style: Any) -> str:
    rows = [
        (
            "SERVER", "ALIASES", "PER_PROCESS", "WORKERS", "HOSTS", "WORST_CASE",
            "ALLOWED", "VERDICT",
        )
    ]  # fmt: skip
    for plan in plans:
        verdict = _verdict(plan)
        rows.append(
            (
                plan.server,
                ",".join(plan.aliases),
                str(plan.per_process),
                str(plan.workers),
                str(plan.hosts),
                str(plan.worst_case),
                _or_dash(plan.available),
                verdict,
            )
        )
    lines = _columns(rows)
    styled = [
        style.WARNING(line) if plan.exceeds else line
        for plan, line in zip(plans, lines[1:], strict=True)
    ]
    title = "Capacity, worst case = (pool_size + max_overflow) x workers x hosts:"
    return "\n".join([title, "  " + lines[0], *("  " + line for line in styled)])


def _columns(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.ljust(width) for cell, width in zip(row, widths, strict=True)
        ).rstrip()
        for row in rows
    ]


def _or_dash(value: object) -> str:
    return "-" if value is None else str(value)
