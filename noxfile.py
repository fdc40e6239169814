"""The compatibility matrix: ``nox -l`` lists its rows, ``nox -s NAME`` runs one.

Each row runs the test suite through ``dev.py test`` in a venv of its own
(``.venv-<row>``), on the embedded PostgreSQL unless the row names another server.
``.ci/run`` runs every row but ``python3.13`` (CI's time on two cores); the README's
test command (``python3 dev.py test``: Django 5.2, Python 3.11, the newest SQLAlchemy
and psycopg) is the first row and also runs the demo tests, which no other row repeats.

An interpreter a row needs is found on ``PATH`` or through pyenv; a row whose
interpreter or PostgreSQL is missing fails, it is not skipped.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

import nox

nox.options.default_venv_backend = "none"  # dev.py makes and keeps the venvs
nox.options.error_on_missing_interpreters = True

#: The lowest versions pyproject.toml accepts: keep them in step with its floors.
LOWEST = (
    "django==4.2.1",
    "SQLAlchemy[asyncio]==2.0.16",
    "psycopg[binary]==3.1.8",
    "mysqlclient==2.2.0",  # the mysql extra's floor
)
#: The demo and the documented recipes (processes and servers of their own, the same
#: under every version) run in the README's row only.
MATRIX_ONLY = ("-p", "no:randomly", "-m", "not demo")


def _interpreter(session: nox.Session, version: str) -> str:
    """The real path of a Python ``version`` (pyenv's shims resolved)."""
    env = dict(os.environ)
    if shutil.which("pyenv"):
        names = subprocess.run(
            ["pyenv", "versions", "--bare"], capture_output=True, text=True
        ).stdout.split()
        env["PYENV_VERSION"] = next(
            (name for name in names if name.startswith(f"{version}.")), version
        )
    found = shutil.which(f"python{version}")
    if found is not None:
        result = subprocess.run(
            [found, "-c", "import sys; print(sys.executable)"],
            env=env,
            capture_output=True,
            text=True,
        )
        if result.returncode == 0:
            return result.stdout.strip()
    session.error(f"Python {version} is needed for this row and was not found")


def _test(session: nox.Session, venv: str, *args: str, python: str = "3.11") -> None:
    interpreter = _interpreter(session, python)
    session.run(
        "python3", "dev.py", "test", "--python", interpreter, "--venv", venv,
        *args, *session.posargs, external=True,
    )  # fmt: skip


@nox.session(name="django5.2")
def django52(session: nox.Session) -> None:
    """The README's test command: Django 5.2, Python 3.11, the demo tests included."""
    session.run("python3", "dev.py", "test", *session.posargs, external=True)


@nox.session(name="django4.2")
def django42(session: nox.Session) -> None:
    """Django 4.2 LTS."""
    _test(session, ".venv-django42", "--django", "django>=4.2,<5", *MATRIX_ONLY)


@nox.session(name="django6")
def django6(session: nox.Session) -> None:
    """Django 6.x, which needs Python 3.12+."""
    _test(
        session,
        ".venv-django6",
        "--django",
        "django>=6,<7",
        *MATRIX_ONLY,
        python="3.12",
    )


@nox.session
def lowest(session: nox.Session) -> None:
    """The lowest Django, SQLAlchemy, psycopg and mysqlclient that pyproject.toml accepts."""
    pins = [arg for pin in LOWEST for arg in ("--pin", pin)]
    _test(session, ".venv-lowest", *pins, *MATRIX_ONLY)


@nox.session(name="python3.10")
def python310(session: nox.Session) -> None:
    """The oldest Python supported."""
    _test(session, ".venv-py310", *MATRIX_ONLY, python="3.10")


@nox.session(name="python3.13")
def python313(session: nox.Session) -> None:
    """The newest Python supported."""
    _test(session, ".venv-py313", *MATRIX_ONLY, python="3.13")


@nox.session(name="postgresql-debian")
def postgresql_debian(session: nox.Session) -> None:
    """The suite on the PostgreSQL the system has (Debian's), instead of the embedded 18."""
    installs = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if not installs:
        session.error(
            "no PostgreSQL in /usr/lib/postgresql: install Debian's postgresql"
        )
    bin_dir = os.path.dirname(installs[0])
    session.env["POOLCONF_PG_BIN"] = bin_dir
    session.log(f"PostgreSQL from {bin_dir}")
    _test(session, ".venv", *MATRIX_ONLY)
