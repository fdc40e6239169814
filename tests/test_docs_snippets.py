"""Every Python example of the README and the docs runs here, so the docs cannot drift from the code.

The blocks of a page run in order, in one namespace (a later example may use an
earlier one's names), in this process: API calls reach the suite's embedded servers
(``default`` is the pooled primary). Whatever a block assigns to ``DATABASES`` or
``POOLCONF`` is validated with the package's own validators, as ``manage.py check``
does, and must have no error.

``...`` in a dict stands for keys a page leaves out, and is dropped; elsewhere it is
Python's Ellipsis. An rst comment ``.. snippet: MARK`` (in Markdown ``<!-- snippet:
MARK -->``) just before a block changes how it is run:

``skip: REASON``
    not run; the reason is required.
``entry``
    the inside of one ``DATABASES`` entry: validated as a pooled alias's settings.
``program NAME``
    a program of its own, run as a process by the test that :data:`PROGRAMS` names.
``django X.Y+``
    settings only that Django accepts (the page says so): run there and later, not
    before, where the system check refuses them.
"""

from __future__ import annotations

import ast
import contextlib
import io
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import tokenize
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import django
import pytest

from django_poolconf.conf import validate_alias, validate_poolconf, validate_router

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.rst"))]
#: The environment the examples read, as their comments describe it.
ENVIRONMENT = {
    "DATABASE_URL": "postgres://app:secret@primary.db:5432/app?pool_size=10",
    "DATABASE_REPLICA_URLS": "postgres://app:secret@replica-a.db/app,postgres://app:secret@replica-b.db/app",
    "REPORTS_URL": "postgres://app:secret@reports.db/app",
    "HEALTH_TOKEN": "a-token-for-the-docs",
}
SETTINGS_NAMES = frozenset({"DATABASES", "POOLCONF"})
#: Program blocks, by name, and the test that runs each.
PROGRAMS = {
    "devdb.py": "test_dev_database_recipe_serves_every_manage_py_command_one_database"
}
START_TIMEOUT_S = 240.0


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening line, 1-based
    code: str
    mark: str  # "" (run), "entry", "skip: ...", "program NAME"

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The Python code blocks of an rst or Markdown page, with their marks."""
    lines = page.read_text().splitlines()
    found = []
    for number, line in enumerate(lines):
        if page.suffix == ".md":
            if line.strip() != "```python":
                continue
            end = lines.index("```", number + 1)
            code = "\n".join(lines[number + 1 : end])
            mark_pattern = r"<!-- snippet: (.*) -->"
        else:
            opening = re.match(r"(\s*)\.\. code-block:: python\s*$", line)
            if opening is None:
                continue
            indent = len(opening[1])
            body = []
            for following in lines[number + 1 :]:
                if (
                    following.strip()
                    and len(following) - len(following.lstrip()) <= indent
                ):
                    break
                body.append(following)
            code = textwrap.dedent("\n".join(body)).strip("\n")
            mark_pattern = r"\s*\.\. snippet: (.*)"
        previous = next(
            (lines[i] for i in range(number - 1, -1, -1) if lines[i].strip()), ""
        )
        mark = re.fullmatch(mark_pattern, previous)
        found.append(Block(page, number + 1, code, mark[1].strip() if mark else ""))
    return found


def drop_elisions(code: str) -> str:
    """Replace each ``...`` that stands for entries of a dict with ``**{}``."""
    tokens = list(tokenize.generate_tokens(io.StringIO(code).readline))
    lines = code.splitlines(keepends=True)
    opened: list[str] = []
    elided = []
    for token in tokens:
        if token.type == tokenize.OP and token.string in "([{":
            opened.append(token.string)
        elif token.type == tokenize.OP and token.string in ")]}":
            opened.pop()
        elif token.string == "..." and opened and opened[-1] == "{":
            elided.append(token.start)
    for row, column in reversed(elided):
        line = lines[row - 1]
        lines[row - 1] = f"{line[:column]}**{{}}{line[column + 3 :]}"
    return "".join(lines)


def check_settings(namespace: dict[str, Any], where: str) -> None:
    """Validate ``DATABASES`` and ``POOLCONF`` as ``manage.py check`` would; fail on an error."""
    poolconf = namespace.get("POOLCONF", {})
    databases = namespace.get("DATABASES")
    problems = validate_poolconf(poolconf)
    if databases is not None:
        for alias, entry in databases.items():
            problems += validate_alias(
                alias, entry, databases=databases, poolconf=poolconf
            )[1]
    problems += validate_router(poolconf, databases=databases)[1]
    errors = [f"{p.id}: {p.msg}" for p in problems if p.is_error]
    assert not errors, f"{where}: {errors}"


def assigned_names(code: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


@pytest.fixture
def docs_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENVIRONMENT.items():
        monkeypatch.setenv(name, value)


@pytest.mark.django_db(transaction=True, databases=["default", "replica"])
@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_python_example_of_the_page_runs(
    page: Path, docs_environment: None
) -> None:
    namespace: dict[str, Any] = {"__name__": f"docs.{page.stem}"}
    for block in blocks(page):
        if block.mark.startswith("skip"):
            assert re.fullmatch(r"skip: \S.*", block.mark), (
                f"{block.where}: a skipped example needs a reason ('skip: why')"
            )
            continue
        if block.mark.startswith("program"):
            name = block.mark.removeprefix("program").strip()
            assert name in PROGRAMS, f"{block.where}: no test runs the program {name!r}"
            continue
        needs = re.fullmatch(r"django (\d+)\.(\d+)\+", block.mark)
        if needs is not None:
            # An example of settings that only that Django accepts (the page says
            # so); on an older one the system check refuses it, as it should.
            if django.VERSION[:2] < (int(needs[1]), int(needs[2])):
                continue
            block = replace(block, mark="")
        code = drop_elisions(block.code)
        if block.mark == "entry":
            entry = eval(  # the inside of a dict, as the page shows it
                f'{{"ENGINE": "django_poolconf.backends.postgresql", {code}}}'
            )
            check_settings({"DATABASES": {"default": entry}}, block.where)
            continue
        assert block.mark == "", f"{block.where}: unknown mark {block.mark!r}"
        try:
            exec(compile(code, block.where, "exec"), namespace)
        except Exception as err:
            raise AssertionError(f"{block.where} fails:\n{block.code}") from err
        if assigned_names(code) & SETTINGS_NAMES:
            check_settings(namespace, block.where)


def test_pages_have_python_examples() -> None:
    counts = {page.name: len(blocks(page)) for page in PAGES}
    for name in ("README.md", "configuration.rst", "migration.rst", "deployment.rst"):
        assert counts[name] >= 3, counts
    migration = [b for b in blocks(ROOT / "docs" / "migration.rst") if not b.mark]
    assert len(migration) >= 10, "each guide shows its settings before and after"


def test_settings_check_fails_on_a_misspelled_pool_key() -> None:
    namespace: dict[str, Any] = {}
    code = drop_elisions(
        'DATABASES = {"default": {"ENGINE": "django_poolconf.backends.postgresql",'
        ' ..., "POOL": {"pool_szie": 10}}}'
    )
    exec(code, namespace)
    with pytest.raises(AssertionError, match="E002"):
        check_settings(namespace, "example")


def test_elisions_in_dicts_are_dropped_and_elsewhere_kept() -> None:
    code = 'A = {"a": 1, ...}\nB = [..., "x"]\nC = {...}\nD = {"k": [...]}\n'
    namespace: dict[str, Any] = {}
    exec(drop_elisions(code), namespace)
    assert namespace["A"] == {"a": 1}
    assert namespace["B"] == [..., "x"]
    assert namespace["C"] == {}
    assert namespace["D"] == {"k": [...]}


# -- the program blocks --------------------------------------------------------------


def _program(name: str) -> str:
    for page in PAGES:
        for block in blocks(page):
            if block.mark == f"program {name}":
                return block.code
    raise AssertionError(f"no program block {name!r} in the docs")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _user_environment(**extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key
        not in {"DJANGO_SETTINGS_MODULE", "DATABASE_URL", "DATABASE_REPLICA_URLS"}
    }
    return {**env, **extra}


@contextlib.contextmanager
def _process_group(
    command: list[str], **kwargs: Any
) -> Iterator[subprocess.Popen[str]]:
    """Run a command in a process group of its own; stop what is left of it at the end."""
    with subprocess.Popen(
        command, start_new_session=True, text=True, **kwargs
    ) as process:
        try:
            yield process
        finally:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
                process.communicate(timeout=60)


@pytest.mark.demo
def test_dev_database_recipe_serves_every_manage_py_command_one_database(
    tmp_path: Path,
) -> None:
    """docs/testing.rst: one cluster for migrate, and for runserver with its autoreloader."""
    program = tmp_path / "devdb.py"
    program.write_text(_program("devdb.py"))
    with _process_group(
        [sys.executable, str(program)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_user_environment(),
    ) as devdb:
        assert devdb.stdout is not None
        exports: dict[str, str] = {}
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(exports) < 2:
            line = devdb.stdout.readline()
            assert line, f"devdb.py ended: {devdb.communicate()[1]}"
            found = re.fullmatch(r"export (DATABASE_\w+)=(\S+)\n", line)
            if found:
                exports[found[1]] = found[2]
            assert time.monotonic() < deadline
        env = _user_environment(**exports)
        manage = [sys.executable, "example_project/manage.py"]
        migrated = subprocess.run(
            [*manage, "migrate"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert migrated.returncode == 0, migrated.stdout + migrated.stderr

        port = _free_port()
        # With the autoreloader: it runs the settings twice, in two processes.
        with _process_group(
            [*manage, "runserver", f"127.0.0.1:{port}"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        ) as server:
            page = ""
            deadline = time.monotonic() + START_TIMEOUT_S
            while not page:
                assert server.poll() is None, server.communicate()[1]
                assert time.monotonic() < deadline, "runserver did not answer"
                with contextlib.suppress(OSError):
                    url = f"http://127.0.0.1:{port}/"
                    with urllib.request.urlopen(url, timeout=10) as response:
                        page = response.read().decode()
                time.sleep(0.2)
            # The notes table exists: runserver reads the database migrate migrated.
            assert "No notes yet." in page
            os.killpg(server.pid, signal.SIGINT)
            server.communicate(timeout=60)

        devdb.send_signal(signal.SIGINT)
        _, errors = devdb.communicate(timeout=60)
        assert devdb.returncode == 0, errors
        assert "Traceback" not in errors
