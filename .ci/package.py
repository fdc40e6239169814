"""Build the sdist and the wheel, check them, and try the wheel as a user would.

    python3 .ci/package.py [--keep DIR]

1. ``python -m build`` in a venv of its own: an sdist, and a wheel built from it;
2. ``twine check --strict`` on both;
3. the wheel holds ``django_poolconf`` (with ``py.typed``) and its metadata, nothing
   else; its version is the package's ``__version__`` and the changelog's;
4. a clean venv installs the wheel (and psycopg's binary build, for a machine without
   libpq), imports the package, and runs ``manage.py check`` on a tiny project with a
   pooled alias: it passes, and a misspelled pool option is reported as
   ``django_poolconf.E002``, so the app's checks come with the wheel.

Exits with status 0 when everything holds; prints what failed otherwise.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import textwrap
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PIP = ["-m", "pip", "install", "--quiet", "--disable-pip-version-check"]

SETTINGS = """\
SECRET_KEY = "package-smoke-test"
INSTALLED_APPS = ["django_poolconf"]
DATABASES = {
    "default": {
        "ENGINE": "django_poolconf.backends.postgresql",
        "NAME": "app",
        "HOST": "127.0.0.1",
        "POOL": {%s: 4, "max_overflow": 2},
    },
}
DATABASE_ROUTERS = ["django_poolconf.routers.ReadWriteRouter"]
USE_TZ = True
"""
MANAGE = """\
import os, sys
from django.core.management import execute_from_command_line
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")
execute_from_command_line(sys.argv)
"""


def run(
    command: list[str], *, quiet: bool = False, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    """Run a command, or fail with its output; ``quiet`` prints only its last line."""
    print("$", " ".join(command), flush=True)
    if not quiet:
        return subprocess.run(command, text=True, check=True, **kwargs)  # type: ignore[call-overload, no-any-return]
    result = subprocess.run(
        command, text=True, capture_output=True, check=False, **kwargs
    )  # type: ignore[call-overload]
    if result.returncode:
        print(result.stdout + result.stderr, file=sys.stderr)
        result.check_returncode()
    print(f"  {(result.stdout.strip().splitlines() or [''])[-1]}", flush=True)
    return result  # type: ignore[no-any-return]


def venv(path: Path) -> str:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    return str(path / "bin" / "python")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, help="build in DIR and keep it")
    args = parser.parse_args()
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="poolconf-package-") as temporary:
        work = (args.keep or Path(temporary)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        failures = check(work)
    for failure in failures:
        print(f"!! {failure}", file=sys.stderr)
    verdict = "FAILED" if failures else "passed"
    print(f"package checks {verdict} in {time.monotonic() - began:.0f} s")
    return 1 if failures else 0


def check(work: Path) -> list[str]:
    failures: list[str] = []
    tools = venv(work / "tools")
    run([tools, *PIP, "build", "twine"])
    dist = work / "dist"
    run([tools, "-m", "build", "--outdir", str(dist), str(ROOT)], quiet=True)
    sdists = sorted(dist.glob("*.tar.gz"))
    wheels = sorted(dist.glob("*.whl"))
    if len(sdists) != 1 or len(wheels) != 1:
        return [f"expected one sdist and one wheel, got {sorted(dist.iterdir())}"]
    run([tools, "-m", "twine", "check", "--strict", str(sdists[0]), str(wheels[0])])

    pyproject = (ROOT / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', pyproject, re.MULTILINE)[1]  # type: ignore[index]
    package_version = re.search(
        r'^__version__ = "([^"]+)"',
        (ROOT / "django_poolconf" / "__init__.py").read_text(),
        re.MULTILINE,
    )
    if package_version is None or package_version[1] != version:
        failures.append(f"django_poolconf.__version__ is not {version!r}")
    changelog = (ROOT / "CHANGELOG.rst").read_text()
    if not re.search(rf"^(Unreleased|{re.escape(version)}\b.*)$", changelog, re.M):
        failures.append(f"CHANGELOG.rst has neither 'Unreleased' nor {version!r}")

    names = zipfile.ZipFile(wheels[0]).namelist()
    tops = {name.split("/")[0] for name in names}
    expected = {"django_poolconf", f"django_poolconf-{version}.dist-info"}
    if tops != expected:
        failures.append(f"the wheel holds {sorted(tops)}, not {sorted(expected)}")
    if "django_poolconf/py.typed" not in names:
        failures.append("the wheel has no django_poolconf/py.typed")
    print(f"wheel: {wheels[0].name}, {len(names)} files in {sorted(tops)}")

    python = venv(work / "clean")
    run([python, *PIP, str(wheels[0]), "psycopg[binary]"])
    imported = run(
        [python, "-c", "import django_poolconf; print(django_poolconf.__version__)"],
        capture_output=True,
        cwd=work,  # not the repository, whose django_poolconf would shadow the wheel's
    )
    if imported.stdout.strip() != version:
        failures.append(f"the installed package says {imported.stdout.strip()!r}")

    project = work / "project"
    project.mkdir()
    (project / "manage.py").write_text(MANAGE)
    (project / "settings.py").write_text(SETTINGS % '"pool_size"')
    run([python, "manage.py", "check"], cwd=project)
    (project / "settings.py").write_text(SETTINGS % '"pool_szie"')
    broken = subprocess.run(
        [python, "manage.py", "check"],
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
    )
    if broken.returncode == 0 or "django_poolconf.E002" not in broken.stderr:
        failures.append(
            "a misspelled pool option passed manage.py check:\n"
            + textwrap.indent(broken.stdout + broken.stderr, "    ")
        )
    return failures


if __name__ == "__main__":
    sys.exit(main())
