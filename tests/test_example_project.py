from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_example_project_smoke_run_serves_every_page() -> None:
    # The example sets up Django itself, on its own settings and embedded cluster.
    env = {
        key: value
        for key, value in os.environ.items()
        if key
        not in {"DJANGO_SETTINGS_MODULE", "DATABASE_URL", "DATABASE_REPLICA_URLS"}
    }
    result = subprocess.run(
        [sys.executable, "example_project/run.py", "--smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for line in (
        "GET  /           200",
        "POST /           302",
        "GET  /api/notes  200",
        "GET  /pool       200",
        "Smoke test passed",
        "stopped embedded PostgreSQL 'primary'",
    ):
        assert line in output, output
