"""The test settings for mypy's django-stubs plugin, without starting database servers."""

from __future__ import annotations

import os

os.environ.setdefault(
    "POOLCONF_TEST_PRIMARY_URL", "postgres://postgres@127.0.0.1:1/app"
)
os.environ.setdefault(
    "POOLCONF_TEST_REPLICA_URL", "postgres://postgres@127.0.0.1:1/app"
)

from tests.settings import *  # noqa: E402, F403
