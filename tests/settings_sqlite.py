"""A project whose database is a pooled SQLite file, for Django's own test runner.

``POOLCONF_SQLITE_NAME`` names the file. The SQLite backend's end-to-end test
(``tests/backends/sqlite3/test_project.py``) runs ``migrate`` and ``test`` with these.
"""

from __future__ import annotations

import os
from typing import Any

import django

SECRET_KEY = "django-poolconf-tests"
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django_poolconf",
    "tests.testapp",
]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

_default: dict[str, Any] = {
    "ENGINE": "django_poolconf.backends.sqlite3",
    "NAME": os.environ["POOLCONF_SQLITE_NAME"],
    "POOL": {"pool_size": 2, "max_overflow": 2, "pool_timeout": 10},
}
if django.VERSION >= (5, 1):  # before, sqlite3.connect() refuses these
    _default["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode = WAL",
        "transaction_mode": "IMMEDIATE",
    }
DATABASES = {"default": _default}
