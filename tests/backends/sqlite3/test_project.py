"""A project on a pooled SQLite file, run as a user runs it: migrate, queries, Django's test runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _django(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings_sqlite",
        "POOLCONF_SQLITE_NAME": str(tmp_path / "app.sqlite3"),
    }
    return subprocess.run(
        [sys.executable, "-m", "django", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_migrate_and_query_the_file(tmp_path: Path):
    migrated = _django(tmp_path, "migrate", "--run-syncdb", "--verbosity", "0")
    assert migrated.returncode == 0, migrated.stderr

    shell = _django(
        tmp_path,
        "shell",
        "-c",
        "from tests.testapp.models import Item; Item.objects.create(name='kept'); "
        "print(Item.objects.filter(name__startswith='k').count())",
    )
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout.splitlines()[-1] == "1"
    checked = _django(tmp_path, "check", "--fail-level", "WARNING")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_django_test_runner_on_test_database_files(tmp_path: Path):
    ran = _django(
        tmp_path, "test", "tests.backends.sqlite3.project_cases", "--parallel", "2"
    )

    assert ran.returncode == 0, ran.stderr
    assert "OK" in ran.stderr
    # The test databases were files, and are gone; the database itself was never made.
    assert sorted(p.name for p in tmp_path.iterdir()) == []
