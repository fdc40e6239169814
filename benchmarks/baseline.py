"""django-poolconf as it was at another git revision, importable beside today's.

    python -P benchmarks/inprocess.py --baseline e94dfff
    python -P benchmarks/http_bench.py --baseline e94dfff

``prepare(rev)`` exports the package at ``rev`` into a temporary folder under the name
``django_poolconf_baseline`` (every ``django_poolconf`` in its code renamed), so that
one benchmark run measures the change against its baseline interleaved, each in the
same process or under the same gunicorn set-up, as strategy ``poolconf_baseline``.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[1]
PACKAGE: Final = "django_poolconf_baseline"
ENGINE: Final = f"{PACKAGE}.backends.postgresql"


def prepare(rev: str) -> Path:
    """Export the package at ``rev``; return the folder to put on ``sys.path``."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev, "django_poolconf"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout
    folder = Path(tempfile.mkdtemp(prefix="poolconf-baseline-"))
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    package = folder / PACKAGE
    shutil.move(folder / "django_poolconf", package)
    for path in package.rglob("*.py"):
        text = path.read_text()
        path.write_text(re.sub(r"\bdjango_poolconf\b", PACKAGE, text))
    return folder


def install(rev: str) -> Path:
    """Prepare ``rev`` and make it importable in this process."""
    folder = prepare(rev)
    sys.path.insert(0, str(folder))
    return folder
