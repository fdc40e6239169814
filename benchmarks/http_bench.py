"""Measure the example project over HTTP, under gunicorn and wrk, per connection strategy.

    python benchmarks/http_bench.py [--rounds 3] [--duration 5 | --quick] [--markdown PATH]

Starts an embedded PostgreSQL server, migrates the example project's database and seeds
one note, then, for each round, for each number of wrk connections (1, 8, 32, 128), runs
each strategy in turn (A B C D, A B C D, ... so that machine drift cancels):

* ``new_per_request``: Django's default, ``CONN_MAX_AGE = 0``;
* ``persistent``: ``CONN_MAX_AGE = None``, one connection per thread: the floor;
* ``native_pool``: Django's own psycopg pool, 8 connections;
* ``poolconf``: django-poolconf, ``pool_size = 8, max_overflow = 0``;
* ``pgbouncer``: PgBouncer in transaction mode with 8 server connections, only when a
  ``pgbouncer`` binary is on ``PATH``.

Each measurement starts its own ``gunicorn --worker-class gthread --workers 1 --threads 8``
(settings: ``benchmarks/http_settings.py``), warms it up, runs ``wrk --latency`` against
``GET /api/notes`` (a one-row ORM read) and stops it. It counts the server connections
opened over the gunicorn's whole life (``pg_stat_database.sessions``) and samples the
most open at once (``pg_stat_activity``, every 50 ms, from a connection of its own).

Prints one Markdown table per number of connections, with medians over the rounds.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the example project and benchmarks.http_settings
sys.path.insert(0, str(ROOT / "benchmarks"))

import argparse  # noqa: E402
import concurrent.futures  # noqa: E402
import contextlib  # noqa: E402
import importlib.metadata  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402
from collections.abc import Iterable, Iterator, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import IO, TYPE_CHECKING, Final, cast  # noqa: E402

if TYPE_CHECKING:
    import psycopg

    from django_poolconf.embedded import EmbeddedServer

STRATEGIES: Final = ("new_per_request", "persistent", "native_pool", "poolconf")
#: Where benchmarks/baseline.py exported the package for --baseline, if given.
_BASELINE_PATH: str | None = None
#: --db-cpu: the CPU PostgreSQL runs on, the others run gunicorn and wrk (None: shared).
_DB_CPU: int | None = None
BASELINE: Final = "persistent"
CONCURRENCIES: Final = (1, 8, 32, 128)
DEFAULT_ROUNDS: Final = 5
DEFAULT_DURATION_S: Final = 5
QUICK_DURATION_S: Final = 2
DATABASE: Final = "bench"
PATH = "/api/notes"  # --io: IO_PATH
GUNICORN_THREADS = 8  # --io: IO_THREADS
IO_PATH: Final = "/api/notes/wait"  # read, 50 ms of waiting, read
IO_THREADS: Final = 64
POOL_CAPACITY: Final = 8  # as in http_settings.py, and PgBouncer's default_pool_size
WRK_THREADS: Final = 2
WARMUP_REQUESTS: Final = 48  # spread over GUNICORN_THREADS client threads
SAMPLE_INTERVAL_S: Final = 0.05
START_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 10.0
IDLE_TIMEOUT_S: Final = 10.0
POLL_INTERVAL_S: Final = 0.02
LOG_TAIL_LINES: Final = 30
TIME_UNITS_MS: Final = {
    "us": 0.001,
    "ms": 1.0,
    "s": 1000.0,
    "m": 60_000.0,
    "h": 3_600_000.0,
}

SEED_SCRIPT: Final = """
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from example_project.notes.models import Note
if not Note.objects.exists():
    Note.objects.create(text="The one note every request reads.")
"""
CLIENT_BACKENDS: Final = (
    "SELECT count(*) FROM pg_stat_activity"
    " WHERE datname = %s AND backend_type = 'client backend'"
)


@dataclass(frozen=True, kw_only=True)
class Measurement:
    """One wrk run against one gunicorn, and the server connections it caused."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int  # non-2xx/3xx responses plus socket errors
    connections_opened: int  # over the gunicorn's whole life, warm-up included
    max_concurrent: int  # most server connections open at once, sampled


def run(
    rounds: int = DEFAULT_ROUNDS,
    duration: int = DEFAULT_DURATION_S,
    concurrencies: Sequence[int] = CONCURRENCIES,
    only: Sequence[str] | None = None,
) -> str:
    """Run the HTTP benchmark and return its report as Markdown.

    Progress goes to stderr. Every server it starts (PostgreSQL, gunicorn, PgBouncer) is
    stopped before it returns or raises.

    :raises RuntimeError: if PostgreSQL, gunicorn or wrk fails.
    """
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not on PATH; install it (apt-get install wrk).")
    strategies = list(STRATEGIES)
    pgbouncer = shutil.which("pgbouncer")
    if pgbouncer is not None:
        strategies.append("pgbouncer")
    if _BASELINE_PATH is not None:
        strategies.append("poolconf_baseline")
    if only:
        # The floor is always measured: every ratio is to it, round by round.
        strategies = [s for s in strategies if s in only or s == BASELINE]
        strategies += [s for s in only if s not in strategies]  # extra ones

    from django_poolconf.embedded import EmbeddedCluster

    started = time.monotonic()
    results: dict[tuple[str, int], list[Measurement]] = {}
    ratios: dict[tuple[str, int], list[float]] = {}
    with EmbeddedCluster.start(replica=False) as cluster:
        server = cluster.primary
        print(
            f"PostgreSQL on port {server.port}, in {cluster.base_dir}",
            file=sys.stderr,
            flush=True,
        )
        cluster.create_database(DATABASE)
        _seed(server)
        if _DB_CPU is not None:
            _pin_database(server, _DB_CPU)
        import psycopg

        # Both on the "postgres" database, so that neither counts among DATABASE's sessions.
        observer = psycopg.connect(server.url(), autocommit=True)
        sampler_connection = psycopg.connect(server.url(), autocommit=True)
        try:
            header = _header(observer, wrk)
            for round_number in range(1, rounds + 1):
                for concurrency in concurrencies:
                    in_round: dict[str, Measurement] = {}
                    for strategy in strategies:
                        measurement = _measure(
                            server,
                            strategy,
                            concurrency,
                            duration,
                            wrk=wrk,
                            pgbouncer=pgbouncer,
                            observer=observer,
                            sampler_connection=sampler_connection,
                        )
                        in_round[strategy] = measurement
                        results.setdefault((strategy, concurrency), []).append(
                            measurement
                        )
                        _progress(
                            round_number, rounds, strategy, concurrency, measurement
                        )
                    floor = in_round[BASELINE].requests_per_s
                    for strategy, measurement in in_round.items():
                        ratio = measurement.requests_per_s / floor if floor else 0.0
                        ratios.setdefault((strategy, concurrency), []).append(ratio)
        finally:
            observer.close()
            sampler_connection.close()
    elapsed = time.monotonic() - started
    settings = (
        f"gunicorn gthread, 1 worker x {GUNICORN_THREADS} threads; `GET {PATH}` "
        + (
            "(read, 50 ms of waiting, read)"
            if PATH == IO_PATH
            else "(a one-row ORM read)"
        )
        + f"; wrk `-t{WRK_THREADS} -d{duration}s`; {rounds} round(s), strategies"
        f" interleaved; pool capacity {POOL_CAPACITY}; {elapsed:.0f} s in all."
    )
    if _DB_CPU is not None:
        settings += (
            f" PostgreSQL pinned to CPU {_DB_CPU}, gunicorn and wrk to the others"
            " (`--db-cpu`): the database as on a host of its own."
        )
    return _report(header, settings, strategies, concurrencies, results, ratios)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from the command line; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--rounds", type=int, default=DEFAULT_ROUNDS, help=f"default: {DEFAULT_ROUNDS}"
    )
    parser.add_argument(
        "--duration",
        type=int,
        default=None,
        help=f"seconds per wrk run (default: {DEFAULT_DURATION_S})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_DURATION_S} s per wrk run, unless --duration says otherwise",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        action="append",
        help="wrk connections; repeat for several (default: 1, 8, 32, 128)",
    )
    parser.add_argument(
        "--strategy",
        action="append",
        choices=(
            *STRATEGIES,
            "pgbouncer",
            "poolconf_baseline",
            "poolconf_rollback_reset",
            "poolconf_transaction",
        ),
        help="measure only these; repeat for several (persistent, the floor, always runs)",
    )
    parser.add_argument(
        "--io",
        action="store_true",
        help=f"time GET {IO_PATH} (read, 50 ms of waiting, read) on {IO_THREADS} "
        f"gunicorn threads and pools of {POOL_CAPACITY} (default concurrency: "
        f"{IO_THREADS})",
    )
    parser.add_argument(
        "--db-cpu",
        type=int,
        metavar="N",
        help="pin PostgreSQL to CPU N and gunicorn and wrk to the other CPUs, as if "
        "the database had a host of its own (default: all share every CPU)",
    )
    parser.add_argument("--markdown", type=Path, help="also write the report to PATH")
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also measure the package at this git revision (poolconf_baseline)",
    )
    args = parser.parse_args(argv)
    global _BASELINE_PATH, _DB_CPU, PATH, GUNICORN_THREADS
    if args.db_cpu is not None:
        cpus = os.sched_getaffinity(0)
        if args.db_cpu not in cpus or len(cpus) < 2:
            parser.error(
                f"--db-cpu {args.db_cpu}: not one of several CPUs {sorted(cpus)}"
            )
        _DB_CPU = args.db_cpu
    if args.io:
        PATH, GUNICORN_THREADS = IO_PATH, IO_THREADS
        args.concurrency = args.concurrency or [IO_THREADS]
    if args.baseline:
        import baseline

        _BASELINE_PATH = str(baseline.prepare(args.baseline))
        args.strategy = [*(args.strategy or STRATEGIES), "poolconf_baseline"]
    if args.duration is None:
        args.duration = QUICK_DURATION_S if args.quick else DEFAULT_DURATION_S
    if args.rounds < 1 or args.duration < 1:
        parser.error("--rounds and --duration must be at least 1.")
    # `kill <pid>` ends in the finally clauses that stop the servers, as Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        report = run(
            args.rounds,
            args.duration,
            args.concurrency or CONCURRENCIES,
            only=args.strategy,
        )
    except KeyboardInterrupt:
        return 130
    except RuntimeError as err:
        print(f"The HTTP benchmark failed: {err}", file=sys.stderr)
        return 1
    print(report, end="")
    if args.markdown is not None:
        args.markdown.write_text(report)
    return 0


def _pin_database(server: EmbeddedServer, cpu: int) -> None:
    """Run PostgreSQL on ``cpu`` alone, and this process and its children on the others.

    The postmaster's backends inherit its CPU set; its running children get it here.
    """
    postmaster = server.pid()
    assert postmaster is not None
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid = int(stat.parent.name)
            parent = int(stat.read_text().rpartition(")")[2].split()[1])
            if pid == postmaster or parent == postmaster:
                os.sched_setaffinity(pid, {cpu})
        except (OSError, ValueError):
            continue  # a process that ended meanwhile
    os.sched_setaffinity(0, os.sched_getaffinity(0) - {cpu})


def _seed(server: EmbeddedServer) -> None:
    """Migrate DATABASE and give it one note, in a process of its own."""
    result = subprocess.run(
        [sys.executable, "-c", SEED_SCRIPT],
        env=_environ(server, "new_per_request"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"Migrating the example project failed:\n{result.stderr}")


def _environ(
    server: EmbeddedServer, strategy: str, port: int | None = None
) -> dict[str, str]:
    # PG* variables and the example's own DATABASE_* must not steer the children.
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PG", "DATABASE_"))
    }
    env.update(
        DJANGO_SETTINGS_MODULE="benchmarks.http_settings",
        PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), _BASELINE_PATH))),
        POOLCONF_BENCH_STRATEGY=strategy,
        POOLCONF_BENCH_HOST=server.host,
        POOLCONF_BENCH_PORT=str(server.port if port is None else port),
        POOLCONF_BENCH_NAME=DATABASE,
        POOLCONF_BENCH_USER=server.user,
    )
    return env


def _measure(
    server: EmbeddedServer,
    strategy: str,
    concurrency: int,
    duration: int,
    *,
    wrk: str,
    pgbouncer: str | None,
    observer: psycopg.Connection[tuple[object, ...]],
    sampler_connection: psycopg.Connection[tuple[object, ...]],
) -> Measurement:
    _wait_until_idle(observer)
    sessions_before = _sessions(observer)
    port = _free_port()
    with contextlib.ExitStack() as stack:
        sampler = stack.enter_context(_Sampler(sampler_connection))
        database_port = None
        if strategy == "pgbouncer":
            assert pgbouncer is not None
            database_port = stack.enter_context(pgbouncer_in_front(pgbouncer, server))
        env = _environ(server, strategy, database_port)
        stack.enter_context(_gunicorn(port, env))
        url = f"http://127.0.0.1:{port}{PATH}"
        _warm_up(url)
        output = _wrk(wrk, url, concurrency, duration)
    _wait_until_idle(observer)
    requests_per_s, p50_ms, p99_ms, errors = _parse_wrk(output)
    return Measurement(
        requests_per_s=requests_per_s,
        p50_ms=p50_ms,
        p99_ms=p99_ms,
        errors=errors,
        connections_opened=_sessions(observer) - sessions_before,
        max_concurrent=sampler.max_concurrent,
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _sessions(observer: psycopg.Connection[tuple[object, ...]]) -> int:
    """Return how many sessions DATABASE has had since the server started.

    A backend adds its session to the statistics when it exits at the latest, so read
    this when no client backend is connected to DATABASE.
    """
    # Autocommit: each statement sees fresh statistics, with no snapshot cached.
    row = observer.execute(
        "SELECT sessions FROM pg_stat_database WHERE datname = %s", [DATABASE]
    ).fetchone()
    assert row is not None
    return cast(int, row[0])


def _client_backends(connection: psycopg.Connection[tuple[object, ...]]) -> int:
    row = connection.execute(CLIENT_BACKENDS, [DATABASE]).fetchone()
    assert row is not None
    return cast(int, row[0])


def _wait_until_idle(observer: psycopg.Connection[tuple[object, ...]]) -> None:
    # Closed client sockets end their backends a moment later; only then are their
    # sessions in pg_stat_database and out of the next measurement's maximum.
    deadline = time.monotonic() + IDLE_TIMEOUT_S
    while (count := _client_backends(observer)) > 0:
        if time.monotonic() > deadline:
            print(
                f"warning: {count} connection(s) to {DATABASE!r} still open after"
                f" {IDLE_TIMEOUT_S:.0f} s; connection counts may be off.",
                file=sys.stderr,
            )
            return
        time.sleep(POLL_INTERVAL_S)


class _Sampler:
    """Sample the number of client backends on DATABASE in a thread, keeping the largest."""

    def __init__(self, connection: psycopg.Connection[tuple[object, ...]]) -> None:
        self._connection = connection
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.max_concurrent = 0

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while True:
            count = _client_backends(self._connection)
            self.max_concurrent = max(self.max_concurrent, count)
            if self._stop.wait(SAMPLE_INTERVAL_S):
                return


def _start(
    command: list[str],
    what: str,
    log: IO[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    user: int | None = None,
    group: int | None = None,
) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            user=user,
            group=group,
            extra_groups=None if user is None else [],
            # Its own process group: Ctrl-C reaches only us, and we stop it in order.
            start_new_session=True,
        )
    except OSError as err:
        raise RuntimeError(f"Could not start {what}: {err}") from err


def _stop(process: subprocess.Popen[bytes], what: str) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        print(f"warning: {what} ignored SIGTERM; killing it.", file=sys.stderr)
        # The group holds the process and its children (gunicorn's worker) only.
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _tail(log: IO[str]) -> str:
    log.flush()
    log.seek(0)
    lines = log.read().splitlines()[-LOG_TAIL_LINES:]
    return "\n".join(lines)


@contextlib.contextmanager
def _gunicorn(port: int, env: dict[str, str]) -> Iterator[None]:
    """Serve the example project on ``port`` until the block ends, then stop gunicorn."""
    command = [sys.executable, "-m", "gunicorn", *_gunicorn_options()]
    command += ["--bind", f"127.0.0.1:{port}", "example_project.wsgi"]
    with tempfile.TemporaryFile("w+") as log:
        process = _start(command, "gunicorn", log, env=env, cwd=ROOT)
        try:
            _wait_for_http(f"http://127.0.0.1:{port}{PATH}", process, log)
            yield
        finally:
            _stop(process, "gunicorn")


def _gunicorn_options() -> list[str]:
    options = ["--worker-class", "gthread", "--workers", "1"]
    options += ["--threads", str(GUNICORN_THREADS), "--graceful-timeout", "5"]
    options += ["--log-level", "warning", "--worker-tmp-dir", "/dev/shm"]
    if _gunicorn_has_control_socket():
        # Newer gunicorns otherwise create a control socket in the working directory.
        options.append("--no-control-socket")
    return options


_control_socket: list[bool] = []


def _gunicorn_has_control_socket() -> bool:
    if not _control_socket:
        result = subprocess.run(
            [sys.executable, "-m", "gunicorn", "--help"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        _control_socket.append("--no-control-socket" in result.stdout)
    return _control_socket[0]


def _wait_for_http(url: str, process: subprocess.Popen[bytes], log: IO[str]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"gunicorn exited with code {process.returncode} while starting:\n{_tail(log)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as err:
            # Up, but the application fails: waiting will not help.
            raise RuntimeError(
                f"gunicorn answered {url} with {err}:\n{_tail(log)}"
            ) from err
        except (urllib.error.URLError, OSError) as err:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"gunicorn did not answer {url} within {START_TIMEOUT_S:.0f} s"
                    f" ({err}):\n{_tail(log)}"
                ) from err
        time.sleep(POLL_INTERVAL_S)


def _warm_up(url: str) -> None:
    """Send requests from as many client threads as gunicorn has threads.

    So that each strategy has opened its connections (and Django its code paths)
    before wrk measures.
    """

    def get(_: int) -> None:
        with urllib.request.urlopen(url, timeout=30) as response:
            response.read()

    with concurrent.futures.ThreadPoolExecutor(GUNICORN_THREADS) as executor:
        list(executor.map(get, range(WARMUP_REQUESTS)))


@contextlib.contextmanager
def pgbouncer_in_front(
    pgbouncer: str,
    server: EmbeddedServer,
    *,
    database: str = DATABASE,
    pool_size: int = POOL_CAPACITY,
) -> Iterator[int]:
    """Run PgBouncer in transaction mode in front of ``server``; yield its port."""
    port = _free_port()
    directory = Path(tempfile.mkdtemp(prefix="poolconf-pgbouncer-"))
    user = group = None
    if os.geteuid() == 0:
        # PgBouncer refuses to run as root; the embedded server's account will do.
        import pwd

        from django_poolconf.embedded import OS_USER

        entry = pwd.getpwnam(OS_USER)
        os.chown(directory, entry.pw_uid, entry.pw_gid)
        user, group = entry.pw_uid, entry.pw_gid
    (directory / "userlist.txt").write_text(f'"{server.user}" ""\n')
    ini = directory / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        f"{database} = host={server.host} port={server.port} dbname={database}"
        f" user={server.user}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {directory / 'userlist.txt'}\n"
        f"pool_mode = transaction\ndefault_pool_size = {pool_size}\n"
        "min_pool_size = 0\nreserve_pool_size = 0\nmax_client_conn = 1000\n"
        "ignore_startup_parameters = extra_float_digits,options\n"
    )
    try:
        with tempfile.TemporaryFile("w+") as log:
            process = _start(
                [pgbouncer, str(ini)], "PgBouncer", log, user=user, group=group
            )
            try:
                _wait_for_port(port, process, log)
                yield port
            finally:
                _stop(process, "PgBouncer")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: IO[str]) -> None:
    # A TCP connect, not a PostgreSQL one, which would open a server connection.
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"PgBouncer exited with code {process.returncode} while starting:\n{_tail(log)}"
            )
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError as err:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"PgBouncer did not listen on port {port} within"
                    f" {START_TIMEOUT_S:.0f} s:\n{_tail(log)}"
                ) from err
        time.sleep(POLL_INTERVAL_S)


def _wrk(wrk: str, url: str, concurrency: int, duration: int) -> str:
    # wrk needs at least one connection per thread.
    threads = min(WRK_THREADS, concurrency)
    command = [
        wrk,
        f"-t{threads}",
        f"-c{concurrency}",
        f"-d{duration}s",
        "--latency",
        url,
    ]
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=duration + 60, check=False
        )
    except subprocess.TimeoutExpired as err:
        raise RuntimeError(f"{' '.join(command)} did not finish.") from err
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed (exit code {result.returncode}):"
            f" {result.stderr or result.stdout}"
        )
    return result.stdout


def _parse_wrk(output: str) -> tuple[float, float, float, int]:
    """Return requests/s, p50 and p99 in ms, and errors from ``wrk --latency`` output."""

    def search(pattern: str) -> re.Match[str]:
        match = re.search(pattern, output, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"No {pattern!r} in wrk's output:\n{output}")
        return match

    def latency_ms(percentile: int) -> float:
        match = search(rf"^\s*{percentile}%\s+([\d.]+)(us|ms|s|m|h)\s*$")
        return float(match[1]) * TIME_UNITS_MS[match[2]]

    requests_per_s = float(search(r"^Requests/sec:\s+([\d.]+)")[1])
    errors = 0
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if socket_errors is not None:
        errors += sum(int(count) for count in socket_errors.groups())
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx is not None:
        errors += int(non_2xx[1])
    return requests_per_s, latency_ms(50), latency_ms(99), errors


def _progress(
    round_number: int, rounds: int, strategy: str, concurrency: int, m: Measurement
) -> None:
    print(
        f"round {round_number}/{rounds}  c={concurrency:<3}  {strategy:<15}"
        f" {m.requests_per_s:8.0f} req/s  p50 {m.p50_ms:6.2f} ms  p99 {m.p99_ms:7.2f} ms"
        f"  errors {m.errors}  opened {m.connections_opened}  max {m.max_concurrent}",
        file=sys.stderr,
        flush=True,
    )


def _header(observer: psycopg.Connection[tuple[object, ...]], wrk: str) -> str:
    import django
    import psycopg
    import sqlalchemy

    row = observer.execute("SHOW server_version").fetchone()
    server_version = str(row[0]).split()[0] if row else "?"
    wrk_output = subprocess.run(
        [wrk, "-v"], capture_output=True, text=True, timeout=30, check=False
    )
    match = re.search(r"wrk (\S+)", wrk_output.stdout + wrk_output.stderr)
    wrk_version = match[1] if match else "?"
    libpq = psycopg.pq.version()
    versions = (
        f"Python {platform.python_version()}, Django {django.__version__},"
        f" SQLAlchemy {sqlalchemy.__version__},"
        f" psycopg {psycopg.__version__} (libpq {libpq // 10000}.{libpq % 10000}),"
        f" PostgreSQL {server_version}, gunicorn {importlib.metadata.version('gunicorn')},"
        f" wrk {wrk_version}"
    )
    return f"{versions}; {os.cpu_count()} cores, {_cpu_model()}, {platform.system()} {platform.release()}."


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in {"model name", "Model", "cpu model"}:
                return value.strip()
    return platform.processor() or "unknown CPU"


def _report(
    header: str,
    settings: str,
    strategies: Sequence[str],
    concurrencies: Sequence[int],
    results: dict[tuple[str, int], list[Measurement]],
    ratios: dict[tuple[str, int], list[float]],
) -> str:
    lines = [
        "# HTTP: the example project under gunicorn and wrk",
        "",
        header,
        "",
        settings,
    ]
    lines += [
        "",
        "req/s, p50 and p99 are medians over the rounds; x persistent is the median of each"
        " round's ratio; errors (non-2xx responses and socket errors) are summed; opened"
        " is the median number of server connections opened over each gunicorn's life,"
        " warm-up included; max open is the most server connections open at once in any"
        " round (sampled every 50 ms).",
    ]
    for concurrency in concurrencies:
        lines += [
            "",
            f"## {concurrency} connection{'s' if concurrency != 1 else ''}",
            "",
            "| strategy | req/s | x persistent | p50 ms | p99 ms | errors | opened | max open |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for strategy in strategies:
            measurements = results[(strategy, concurrency)]
            lines.append(
                f"| {strategy}"
                f" | {_median(m.requests_per_s for m in measurements):.0f}"
                f" | {_median(ratios[(strategy, concurrency)]):.2f}"
                f" | {_median(m.p50_ms for m in measurements):.2f}"
                f" | {_median(m.p99_ms for m in measurements):.2f}"
                f" | {sum(m.errors for m in measurements)}"
                f" | {_median(m.connections_opened for m in measurements):.0f}"
                f" | {max(m.max_concurrent for m in measurements)} |"
            )
    if "poolconf_baseline" in strategies and "poolconf" in strategies:
        lines += [
            "",
            "## poolconf against poolconf_baseline (--baseline), round by round",
            "",
            "| connections | median of poolconf / poolconf_baseline | each round |",
            "|---:|---:|---|",
        ]
        for concurrency in concurrencies:
            pairs = [
                now.requests_per_s / before.requests_per_s
                for now, before in zip(
                    results[("poolconf", concurrency)],
                    results[("poolconf_baseline", concurrency)],
                    strict=True,
                )
                if before.requests_per_s
            ]
            lines.append(
                f"| {concurrency} | {_median(pairs):.3f} | "
                + ", ".join(f"{ratio:.3f}" for ratio in pairs)
                + " |"
            )
    return "\n".join(lines) + "\n"


def _median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


if __name__ == "__main__":
    sys.exit(main())
