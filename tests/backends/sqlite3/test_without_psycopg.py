"""A project on SQLite (or MySQL) runs on a machine without psycopg or libpq.

Each test runs Django in a subprocess whose import system refuses ``psycopg*``, as
on a machine where psycopg is absent or finds no libpq ("no pq wrapper available").
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

_BLOCK = """
import sys

class _NoPsycopg:
    def find_spec(self, name, path=None, target=None):
        if name == "psycopg" or name.startswith(("psycopg.", "psycopg_")):
            raise ImportError("no pq wrapper available (blocked by the test)")

sys.meta_path.insert(0, _NoPsycopg())
"""


def _run(tmp_path: Path, code: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings_sqlite",
        "POOLCONF_SQLITE_NAME": str(tmp_path / "app.sqlite3"),
    }
    return subprocess.run(
        [sys.executable, "-c", _BLOCK + code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def _manage(*args: str) -> str:
    return (
        "from django.core.management import execute_from_command_line\n"
        f"execute_from_command_line(['manage.py', *{list(args)!r}])\n"
    )


def test_check_migrate_and_a_pooled_query_without_psycopg(tmp_path: Path):
    ran = _run(
        tmp_path,
        _manage("check", "--deploy", "--fail-level", "ERROR")
        + _manage("migrate", "--run-syncdb", "--verbosity", "0")
        + "from django.db import connection\n"
        "from tests.testapp.models import Item\n"
        "Item.objects.create(name='kept')\n"
        "print('count', Item.objects.count(), connection.pooled_engine().pool.checkedout())\n"
        "assert not [m for m in sys.modules if m.startswith('psycopg')]\n",
    )

    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "count 1 1" in ran.stdout, ran.stdout


def test_poolstatus_on_an_sqlite_project_without_psycopg(tmp_path: Path):
    ran = _run(tmp_path, _manage("poolstatus", "--workers", "4"))

    assert ran.returncode == 0, ran.stdout + ran.stderr


def test_the_mysql_backend_imports_without_psycopg(tmp_path: Path):
    # mysqlclient is in the test extra: a missing one fails here, it is not skipped.
    ran = _run(
        tmp_path,
        "import django_poolconf.backends.mysql.base\n"
        "import django_poolconf.backends.mysql.probes\n"
        "import django_poolconf.backends.sqlite3.base\n"
        "import django_poolconf.checks, django_poolconf.capacity\n"
        "import django_poolconf.health.capacity\n"
        "assert not [m for m in sys.modules if m.startswith('psycopg')]\n",
    )

    assert ran.returncode == 0, ran.stdout + ran.stderr
