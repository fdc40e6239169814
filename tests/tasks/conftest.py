"""Fixtures of the background tasks' tests: the router's, and worker processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from django.db import connections

# The router's fixtures: the router installed, the replica caught up or paused.
from tests.routing.conftest import (  # noqa: F401
    FAST,
    ROUTER,
    caught_up,
    fresh_state,
    paused_replay,
    routing,
)

ROOT = Path(__file__).resolve().parents[2]
WORKER_TIMEOUT_S = 120.0


def worker_environment(**extra: str) -> dict[str, str]:
    """The environment of a worker process: this process's test databases."""
    databases = {}
    for alias in ("default", "replica"):
        settings_dict: dict[str, Any] = connections[alias].settings_dict
        databases[alias] = {
            key: settings_dict[key]
            for key in ("ENGINE", "NAME", "USER", "PASSWORD", "HOST", "PORT", "POOL")
        }
    databases["replica"]["REPLICA_OF"] = "default"
    environment = dict(os.environ)
    environment.update(
        DJANGO_SETTINGS_MODULE="tests.tasks.worker_settings",
        POOLCONF_TEST_DATABASES=json.dumps(databases),
        PYTHONPATH=str(ROOT),
        **extra,
    )
    return environment


def run_worker(args: Sequence[str], **extra: str) -> subprocess.CompletedProcess[str]:
    """Run a worker command to its end: ``python -m <args>``, in the worker environment."""
    return subprocess.run(
        [sys.executable, "-m", *args],
        env=worker_environment(**extra),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=WORKER_TIMEOUT_S,
        check=False,
    )
