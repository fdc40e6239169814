"""Run Django's own test suite with the pooled backend, then with Django's, and compare.

``python3 dev.py django-tests [--parallel N] [--backend both|ours|stock] [LABEL ...]``

1. Fetch the source distribution of the installed Django from PyPI (once, into
   ``.cache/django-suite/``) and extract its ``tests/`` directory, ``runtests.py``
   included.
2. Start an embedded PostgreSQL primary (as an unprivileged user when run as root).
3. Run ``runtests.py`` for :data:`LABELS` with ``ENGINE =
   "django_poolconf.backends.postgresql"`` and ``POOL = {"pool_size": 5,
   "max_overflow": 10}`` for the aliases ``default`` and ``other``; then the same
   labels with Django's ``django.db.backends.postgresql`` on the same server.
4. Print the tests that fail or error with the pooled backend alone.

The exit status is 0 when every test that fails with the pooled backend alone is
listed in :data:`EXCEPTIONS_FILE`, 1 otherwise, and 2 when a run did not complete.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import django

from django_poolconf.embedded import EmbeddedCluster, _bin_dir

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "django-suite"
EXCEPTIONS_FILE = Path(__file__).with_name("exceptions.txt")

#: The test labels run by default: the apps that exercise the connection, the
#: transaction machinery, the test runner and the servers, and the database cache.
LABELS: tuple[str, ...] = (
    "backends",
    "transactions",
    "transaction_hooks",
    "multiple_database",
    "select_for_update",
    "delete_regress",
    "get_or_create",
    "test_utils",
    "test_runner",
    "db_utils",
    "handlers",
    "wsgi",
    "asgi",
    "servers",
    "async",
    "timezones",
    "postgres_tests",
    "introspection",
    "check_framework",
    "sessions_tests",
    "basic",
    "queries",
    "schema",
    "migrations",
    "fixtures",
    "fixtures_regress",
    "bulk_create",
    "update",
    "delete",
    "expressions",
    "aggregation",
    "raw_query",
    "prefetch_related",
    "lookup",
    "model_regress",
    "force_insert_update",
    "serializers",
    # More that open, close, share or inspect connections. (model_fields, inspectdb and
    # db_functions need ICU collations, which the embedded server is built without.)
    "dbshell",
    "signals",
    "save_delete_hooks",
    "custom_lookups",
    "indexes",
    "constraints",
    "cache.tests.DBCacheTests",
    "cache.tests.DBCacheWithTimeZoneTests",
    "cache.tests.CreateCacheTableForDBCacheTests",
)

#: Tests that time pure Python work against itself and touch no database: on a
#: busy machine they fail with either backend. Their failures are printed, not
#: counted.
MACHINE_TIMED: frozenset[str] = frozenset({"test_crafted_xml_performance"})

BACKENDS = {
    "ours": "django_poolconf.backends.postgresql",
    "stock": "django.db.backends.postgresql",
}
#: The pool each alias gets in the pooled run.
POOL = {"pool_size": 5, "max_overflow": 10}

#: Extensions the setup migration of ``postgres_tests`` creates (Django 4.2 to 6.x) that
#: the embedded server is built without. No test calls their functions:
#: ``uuid-ossp`` checks that ``CreateExtension`` quotes a dashed name, and
#: ``gen_random_uuid()`` is in the core since PostgreSQL 13. Each gets an empty
#: stand-in, so that Django's tests run unchanged.
STAND_IN_EXTENSIONS = ("uuid-ossp", "pgcrypto")

SETTINGS_TEMPLATE = """\
# Written by tests/django_suite/run.py for Django's runtests.py.
DATABASES = {databases!r}
SECRET_KEY = "django_tests_secret_key"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = False
"""

# unittest's report of a test that did not pass: "FAIL: test_x (app.tests.Case.test_x)"
# (Python 3.11+) or "FAIL: test_x (app.tests.Case)", maybe followed by a subtest.
_PROBLEM = re.compile(
    r"^(FAIL|ERROR|UNEXPECTED SUCCESS): (\S+) \(([^)\s]+)\)", re.MULTILINE
)
_RAN = re.compile(r"^Ran (\d+) tests? in ([\d.]+)s$", re.MULTILINE)
_SKIPPED = re.compile(r"^(?:OK|FAILED) \(.*?skipped=(\d+)", re.MULTILINE)


@dataclass
class Result:
    """What one run of ``runtests.py`` reported."""

    backend: str
    returncode: int
    seconds: float
    log: Path
    ran: int | None = None
    skipped: int = 0
    problems: dict[str, str] = field(default_factory=dict)  # test id -> kind
    passed_on_rerun: set[str] = field(default_factory=set)

    @property
    def completed(self) -> bool:
        return self.ran is not None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dev.py django-tests", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--parallel", type=int, default=2, help="runtests.py --parallel (default: 2)"
    )
    parser.add_argument(
        "--backend",
        choices=("both", "ours", "stock"),
        default="both",
        help="run the pooled backend, Django's, or both (default) and compare",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=3600,
        help="seconds one run may take before it is stopped (default: 3600)",
    )
    parser.add_argument(
        "--no-rerun",
        dest="rerun",
        action="store_false",
        help="do not run the tests that failed with ours alone a second time",
    )
    parser.add_argument(
        "labels", nargs="*", help="test labels instead of the default list"
    )
    args = parser.parse_args(argv)
    labels = tuple(args.labels) or LABELS
    began = time.monotonic()

    tests_dir = fetch_tests(django.__version__)
    add_stand_in_extensions()
    print(
        f"Django {django.__version__}: {len(labels)} labels, --parallel {args.parallel}"
    )
    cluster = EmbeddedCluster.start(replica=False)
    results: dict[str, Result] = {}
    try:
        print(f"embedded PostgreSQL on port {cluster.primary.port}", flush=True)
        backends = ("ours", "stock") if args.backend == "both" else (args.backend,)
        for backend in backends:
            results[backend] = run_suite(
                backend, tests_dir, cluster, labels, args.parallel, args.timeout
            )
        exceptions = read_exceptions(EXCEPTIONS_FILE)
        suspects = ours_alone(results, exceptions)
        if suspects and args.rerun:
            # A test that failed with the pooled backend alone runs once more, alone
            # (a busy machine fails timing tests): it must fail again to count.
            print(f"== running the {len(suspects)} failing with ours alone again")
            again = run_suite(
                "ours", tests_dir, cluster, sorted(suspects), 1, args.timeout, "rerun"
            )
            results["ours"].passed_on_rerun = (
                {test_id for test_id in suspects if test_id not in again.problems}
                if again.completed
                else set()
            )
    finally:
        cluster.stop()
    code = report(results, exceptions)
    print(f"total: {time.monotonic() - began:.0f} s")
    return code


def fetch_tests(version: str) -> Path:
    """Return the ``tests`` directory of Django ``version``'s sdist, fetched once."""
    target = CACHE / f"django-{version}"
    tests_dir = target / "tests"
    stamp = target / ".extracted"
    if stamp.exists():
        return tests_dir
    CACHE.mkdir(parents=True, exist_ok=True)
    archive = _find_sdist(version)
    if archive is None:
        print(f"fetching the sdist of Django {version} from PyPI", flush=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"django=={version}",
                "--dest",
                str(CACHE),
            ],
            check=True,
        )
        archive = _find_sdist(version)
        if archive is None:
            raise SystemExit(f"pip downloaded no sdist of Django {version}")
    with tarfile.open(archive) as tar:
        members = [
            member
            for member in tar.getmembers()
            if member.name.split("/")[1:2] == ["tests"]
        ]
        for member in members:
            member.name = member.name.split("/", 1)[1]
        if hasattr(tarfile, "data_filter"):
            tar.extractall(target, members=members, filter="data")
        else:  # pragma: no cover - Pythons before the filter's backports
            tar.extractall(target, members=members)  # noqa: S202
    if not (tests_dir / "runtests.py").exists():
        raise SystemExit(f"{archive.name} has no tests/runtests.py")
    stamp.write_text(archive.name)
    return tests_dir


def _find_sdist(version: str) -> Path | None:
    wanted = f"django-{version}.tar.gz"
    for path in CACHE.glob("*.tar.gz"):
        if path.name.lower() == wanted:
            return path
    return None


def add_stand_in_extensions() -> None:
    """Give the embedded server an empty stand-in for each missing extension Django's setup creates."""
    directory = Path(_bin_dir()).parent / "share" / "extension"
    for name in STAND_IN_EXTENSIONS:
        control = directory / f"{name}.control"
        if control.exists():
            continue
        print(f"embedded PostgreSQL has no {name!r}: adding an empty stand-in")
        (directory / f"{name}--1.0.sql").write_text(
            f"-- An empty stand-in for {name}, for Django's tests (tests/django_suite).\n"
        )
        control.write_text(
            f"comment = 'empty stand-in for {name}'\n"
            "default_version = '1.0'\nrelocatable = true\n"
        )
        for path in (control, directory / f"{name}--1.0.sql"):
            path.chmod(0o644)


def write_settings(backend: str, cluster: EmbeddedCluster) -> str:
    """Write the settings module for ``backend``; return its name."""
    server = cluster.primary

    def alias(name: str) -> dict[str, object]:
        entry: dict[str, object] = {
            "ENGINE": BACKENDS[backend],
            "NAME": name,
            "USER": server.user,
            "PASSWORD": "",
            "HOST": server.host,
            "PORT": str(server.port),
        }
        if backend == "ours":
            entry["POOL"] = dict(POOL)
        return entry

    databases = {"default": alias("django"), "other": alias("django2")}
    module = f"poolconf_suite_{backend}"
    path = CACHE / "settings" / f"{module}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(SETTINGS_TEMPLATE.format(databases=databases))
    return module


def run_suite(
    backend: str,
    tests_dir: Path,
    cluster: EmbeddedCluster,
    labels: Iterable[str],
    parallel: int,
    timeout: float,
    log_name: str = "",
) -> Result:
    """Run ``runtests.py`` for ``labels`` with ``backend``; its output goes to a log."""
    module = write_settings(backend, cluster)
    name = log_name or f"parallel{parallel}"
    log = CACHE / f"{backend}-django{django.__version__}-{name}.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(CACHE / "settings"), env.get("PYTHONPATH")])
    )
    command = [
        sys.executable,
        "runtests.py",
        "--settings",
        module,
        "--parallel",
        str(parallel),
        "--noinput",
        *labels,
    ]
    print(f"== {backend} ({BACKENDS[backend]}): output in {log}", flush=True)
    began = time.monotonic()
    with log.open("wb") as out:
        # A session of its own: a run that outlives its timeout is stopped whole,
        # its parallel workers included.
        process = subprocess.Popen(
            command,
            cwd=tests_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            returncode = process.wait(timeout)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            returncode = -signal.SIGKILL
    result = parse(backend, log, returncode, time.monotonic() - began)
    print(summary(result), flush=True)
    return result


def parse(backend: str, log: Path, returncode: int, seconds: float) -> Result:
    """Read what ``runtests.py`` reported into a :class:`Result`."""
    text = log.read_text(errors="replace")
    result = Result(backend, returncode, seconds, log)
    ran = _RAN.search(text)
    if ran is not None:
        result.ran = int(ran.group(1))
    skipped = _SKIPPED.search(text)
    if skipped is not None:
        result.skipped = int(skipped.group(1))
    for kind, name, where in _PROBLEM.findall(text):
        test_id = where if where.endswith(f".{name}") else f"{where}.{name}"
        result.problems.setdefault(test_id, kind)
    if result.completed and returncode != 0 and not result.problems:
        result.ran = None  # it failed, and said nothing we can read: a crash
    return result


def summary(result: Result) -> str:
    if not result.completed:
        return (
            f"{result.backend}: did NOT complete (exit status {result.returncode}) "
            f"after {result.seconds:.0f} s; see {result.log}"
        )
    kinds = list(result.problems.values())
    return (
        f"{result.backend}: ran {result.ran} tests in {result.seconds:.0f} s: "
        f"{kinds.count('FAIL')} failed, {kinds.count('ERROR')} errors, "
        f"{kinds.count('UNEXPECTED SUCCESS')} unexpected successes, "
        f"{result.skipped} skipped"
    )


def read_exceptions(path: Path) -> dict[str, str]:
    """The documented exceptions: ``test id: reason`` per line, ``#`` comments."""
    found: dict[str, str] = {}
    if not path.exists():
        return found
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            test_id, _, reason = line.partition(":")
            found[test_id.strip()] = reason.strip()
    return found


def ours_alone(results: dict[str, Result], exceptions: dict[str, str]) -> set[str]:
    """The tests that failed with the pooled backend and not with Django's, unexcused."""
    ours = results.get("ours")
    if ours is None or not ours.completed:
        return set()
    stock = results.get("stock")
    if stock is not None and not stock.completed:
        return set()
    baseline = set() if stock is None else set(stock.problems)
    # A subtest's or a class fixture's id is not a label runtests.py accepts.
    return {
        test_id
        for test_id in ours.problems
        if test_id not in baseline
        and test_id not in exceptions
        and not _machine_timed(test_id)
        and test_id.rsplit(".", 1)[-1].startswith("test")
    }


def _machine_timed(test_id: str) -> bool:
    return test_id.rsplit(".", 1)[-1] in MACHINE_TIMED


def report(results: dict[str, Result], exceptions: dict[str, str]) -> int:
    """Print the comparison; return the exit status."""
    print("== results")
    for result in results.values():
        print(summary(result))
    if not all(result.completed for result in results.values()):
        return 2
    ours = results.get("ours")
    stock = results.get("stock")
    if stock is not None and stock.problems:
        print(f"-- failing with Django's backend too ({len(stock.problems)}):")
        for test_id, kind in sorted(stock.problems.items()):
            print(f"   {kind}: {test_id}")
    if ours is None:
        return 0 if stock is None or not stock.problems else 1
    baseline = set() if stock is None else set(stock.problems)
    alone = {t: k for t, k in ours.problems.items() if t not in baseline}
    excused = {t: k for t, k in alone.items() if t in exceptions}
    flaky = {t: k for t, k in alone.items() if t in ours.passed_on_rerun}
    timed = {t: k for t, k in alone.items() if _machine_timed(t)}
    unexcused = {
        t: k
        for t, k in alone.items()
        if t not in exceptions and t not in flaky and t not in timed
    }
    what = "failing with the pooled backend alone" if stock else "failing"
    print(
        f"-- {what}: {len(alone)} ({len(excused)} in {EXCEPTIONS_FILE.name}, "
        f"{len(flaky)} passed when run again alone)"
    )
    for test_id, kind in sorted(alone.items()):
        note = ""
        if test_id in excused:
            note = f"  [excepted: {exceptions[test_id]}]"
        elif test_id in flaky:
            note = "  [passed when run again alone]"
        elif test_id in timed:
            note = "  [times the machine, not the database: not counted]"
        print(f"   {kind}: {test_id}{note}")
    stale = sorted(set(exceptions) - set(ours.problems))
    if stale:
        print(f"-- listed in {EXCEPTIONS_FILE.name} but passing now: {stale}")
    return 1 if unexcused else 0


if __name__ == "__main__":
    sys.exit(main())
