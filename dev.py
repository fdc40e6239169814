#!/usr/bin/env python3
"""Set up and run django-poolconf's example project, test suite and linters.

Needs only Python 3.10+ and pip: each command creates a virtual environment in the
repository (``.venv`` by default), installs what it needs, and runs.

    python3 dev.py example   # the example project on an embedded primary and replica
    python3 dev.py test      # the whole test suite, on its own embedded servers
    python3 dev.py lint      # ruff and mypy
    python3 dev.py docs      # the Sphinx docs, warnings as errors
    python3 dev.py bench     # the benchmark suite (not part of CI)
    python3 dev.py django-tests  # Django's own database tests on the pooled backend

``--pin REQUIREMENT`` (repeatable) installs a version other than pip's choice, e.g. the
lowest supported ones: ``python3 dev.py test --venv .venv-lowest --pin SQLAlchemy==2.0.0``.

Arguments after the command go to the program it runs (``python3 dev.py test -k fork``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
EXTRAS = {
    "example": "embedded",
    "test": "test,embedded",
    "lint": "test,lint",
    "docs": "docs",
    "bench": "bench",
    "django-tests": "test,django-suite",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=sorted(EXTRAS))
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter for the venv (default: this one)",
    )
    parser.add_argument(
        "--venv", default=".venv", help="venv directory (default: .venv)"
    )
    parser.add_argument(
        "--pin",
        action="append",
        default=[],
        metavar="REQUIREMENT",
        help="a requirement to install over the project's (repeatable), "
        "e.g. 'SQLAlchemy==2.0.0'; use a venv of its own (--venv)",
    )
    parser.add_argument(
        "--django",
        default="",
        help="a Django requirement to test against, e.g. 'django>=6,<7' "
        "(the same as --pin)",
    )
    args, rest = parser.parse_known_args()

    pins = [*([args.django] if args.django else []), *args.pin]
    python = _ensure_venv(ROOT / args.venv, args.python, EXTRAS[args.command], pins)
    os.chdir(ROOT)
    if args.command == "example":
        return _exec([python, "example_project/run.py", *rest])
    if args.command == "test":
        return _exec(
            [
                python,
                "-m",
                "pytest",
                "--cov",
                "--cov-report=term-missing:skip-covered",
                *rest,
            ]
        )
    if args.command == "django-tests":
        # tests/django_suite/run.py: fetches Django's tests, compares with Django's backend.
        return _run([python, "-m", "tests.django_suite.run", *rest])
    if args.command == "bench":
        # -P: the benchmarks folder must not shadow the standard library.
        return _exec([python, "-P", "benchmarks/run.py", *rest])
    if args.command == "docs":
        return _exec(
            [
                python,
                "-m",
                "sphinx",
                "-W",
                "--keep-going",
                "-q",
                "-b",
                "html",
                "docs",
                "docs/_build/html",
            ]
        )
    code = _run([python, "-m", "ruff", "check", "."])
    code |= _run([python, "-m", "ruff", "format", "--check", "."])
    return code | _run([python, "-m", "mypy"])


def _ensure_venv(path: Path, base_python: str, extras: str, pins: list[str]) -> str:
    python = path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    if not python.exists():
        print(f"creating {path.name} with {base_python}", flush=True)
        subprocess.run([base_python, "-m", "venv", str(path)], check=True)
    # Install only when pyproject.toml changed, or an extra or a pin not installed yet
    # is asked for; then with the extras and pins already there, so that a command
    # without pins (`dev.py example`, as the demo test runs it) keeps a venv's pins.
    project = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    stamp = path / ".django-poolconf-installed"
    installed: dict[str, Any] = {"extras": [], "pins": {}}
    try:
        recorded = json.loads(stamp.read_text())
        if recorded["project"] == project:
            installed = recorded
    except (OSError, ValueError, KeyError, TypeError):
        pass  # none yet, or of an older dev.py: install
    wanted_extras = set(extras.split(","))
    wanted_pins = {_requirement_name(pin): pin for pin in pins}
    if wanted_extras <= set(installed["extras"]) and all(
        installed["pins"].get(name) == pin for name, pin in wanted_pins.items()
    ):
        return str(python)
    extras = ",".join(sorted(wanted_extras | set(installed["extras"])))
    pins = list({**installed["pins"], **wanted_pins}.values())
    print(f"installing django-poolconf[{extras}] into {path.name}", flush=True)
    pip = [
        str(python),
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ]
    subprocess.run(
        [*pip, "--editable", f".[{extras}]", *pins],
        check=True,
        cwd=ROOT,
    )
    stamp.write_text(
        json.dumps(
            {
                "project": project,
                "extras": extras.split(","),
                "pins": {_requirement_name(pin): pin for pin in pins},
            }
        )
    )
    return str(python)


def _requirement_name(requirement: str) -> str:
    """The normalized project name of a requirement: 'SQLAlchemy[asyncio]==2.0.16' -> 'sqlalchemy'."""
    name = re.match(r"[A-Za-z0-9._-]*", requirement.strip())
    return re.sub(r"[-_.]+", "-", name.group() if name else requirement).lower()


def _run(command: list[str]) -> int:
    """Run one of several programs (the linters) and return its exit status."""
    print("$", " ".join(command), flush=True)
    return subprocess.call(command)


def _exec(command: list[str]) -> int:
    """Become the program, so that signals reach it as if it had been started directly.

    A wrapper process would see a terminal's Ctrl-C too, and sending it on would
    interrupt the program a second time while it stops its servers. A shell starts a
    background job with SIGINT ignored, which a program inherits across exec: reset it,
    so that ``kill -INT`` still stops the program. ``kill`` (SIGTERM) ends it too; the
    example and the test suite then stop their servers (see ``embedded``'s watchdog).
    """
    print("$", " ".join(command), flush=True)
    if os.name == "nt":  # pragma: no cover - no exec that keeps the console's signals
        return subprocess.call(command)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.execv(command[0], command)
    raise AssertionError("unreachable")  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
