from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def smoke_run() -> subprocess.CompletedProcess[str]:
    # The example sets up Django itself, on its own settings and embedded cluster.
    env = {
        key: value
        for key, value in os.environ.items()
        if key
        not in {"DJANGO_SETTINGS_MODULE", "DATABASE_URL", "DATABASE_REPLICA_URLS"}
    }
    return subprocess.run(
        [sys.executable, "example_project/run.py", "--smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_example_project_smoke_run_serves_every_page(
    smoke_run: subprocess.CompletedProcess[str],
) -> None:
    output = smoke_run.stdout + smoke_run.stderr
    assert smoke_run.returncode == 0, output
    for line in (
        "GET  /           200",
        "POST /           302",
        "GET  /api/notes  200",
        "GET  /api/notes/wait 200",
        "GET  /pool       200",
        "GET  /api/pool   200",
        "GET  /health/db  200",
        "Smoke test passed",
        "stopped embedded PostgreSQL 'primary'",
    ):
        assert line in output, output
    assert "Traceback" not in output, output


def test_example_project_shutdown_prints_no_sqlalchemy_pool_lines(
    smoke_run: subprocess.CompletedProcess[str],
) -> None:
    assert "Stopped." in smoke_run.stdout, smoke_run.stdout + smoke_run.stderr
    # The log, on stderr, has the example's INFO lines on django_poolconf, and not
    # SQLAlchemy's own pool logging ("Pool disposed. ... Checked out connections: -1").
    log = smoke_run.stderr
    assert "disposed pool for 'default'" in log, log
    for text in ("Pool disposed", "Pool recreating", "Checked out connections"):
        assert text not in log, log


def test_live_chart_draws_a_line_at_its_top_inside_the_chart() -> None:
    # The waiting line is 2 px wide: drawn at y = 0, half of it was clipped, and a
    # pool whose waiters reached the chart's top showed no line at all.
    import time as _time

    from example_project.notes import live

    now = int(_time.time())
    seconds = [live.Second(now - 1, 8, 8), live.Second(now, 8, 8)]

    drawn = live.chart(seconds, pool_size=4, capacity=8)

    tops = [float(point.split(",")[1]) for point in drawn.waiting.split()]
    assert tops and min(tops) >= 1.0, drawn.waiting
    outs = [float(point.split(",")[1]) for point in drawn.checked_out.split()]
    assert min(outs) >= 1.0, drawn.checked_out
