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
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
EXTRAS = {
    "example": "embedded",
    "test": "test",
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
        return _run([python, "example_project/run.py", *rest])
    if args.command == "test":
        return _run(
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
        return _run([python, "-P", "benchmarks/run.py", *rest])
    if args.command == "docs":
        return _run(
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
    # Reinstall only when what is asked for, or the project's requirements, change.
    wanted = hashlib.sha256(
        (ROOT / "pyproject.toml").read_bytes() + "|".join([extras, *pins]).encode()
    ).hexdigest()
    stamp = path / ".django-poolconf-installed"
    if stamp.exists() and stamp.read_text() == wanted:
        return str(python)
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
    stamp.write_text(wanted)
    return str(python)


def _run(command: list[str]) -> int:
    print("$", " ".join(command), flush=True)
    # A shell starts a background job with SIGINT ignored; `kill -INT` must still stop
    # it, and `kill -TERM` too: both reach the program, which stops its servers.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    process = subprocess.Popen(command)
    previous = signal.signal(
        signal.SIGTERM, lambda signum, frame: process.send_signal(signal.SIGINT)
    )
    try:
        while True:
            try:
                return process.wait()
            except KeyboardInterrupt:
                # Ctrl-C reaches the whole process group; a SIGINT sent to this
                # process alone must still let the program (and the servers it
                # started) stop cleanly.
                process.send_signal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
