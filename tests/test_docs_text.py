"""What the docs say that the code decides: install commands, setting keys, API docstrings.

The Python examples themselves run in ``tests/test_docs_snippets.py``.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

from django_poolconf.conf import POOLCONF_KEYS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [
    ROOT / "README.md",
    ROOT / "example_project" / "README.rst",
    *sorted(DOCS.glob("*.rst")),
]
NUMBERS = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6}


def test_no_page_installs_the_package_by_name_from_pypi() -> None:
    # Not on PyPI yet: `pip install django-poolconf` fails; a clone installs with -e .
    by_name = re.compile(r"pip install\b[^\n`]*?(?<![\w./\[-])django[-_]poolconf\b")
    found = [
        f"{page.relative_to(ROOT)}:{number}: {line.strip()}"
        for page in PAGES
        for number, line in enumerate(page.read_text().splitlines(), 1)
        if by_name.search(line)
    ]
    assert not found, found


def test_configuration_page_counts_and_lists_every_poolconf_key() -> None:
    text = (DOCS / "configuration.rst").read_text()
    section = text.split("Project-wide defaults: ``POOLCONF``", 1)[1]
    count = re.search(r"It accepts\s+(\w+) keys:", section)
    assert count is not None, section[:400]
    listed = re.findall(
        r"^``([A-Z_]+)``$", section.split(".. code-block::", 1)[0], re.M
    )

    assert listed == list(POOLCONF_KEYS)
    assert NUMBERS[count[1]] == len(POOLCONF_KEYS)


def test_check_e007_names_every_poolconf_key() -> None:
    text = (DOCS / "checks.rst").read_text()
    row = text.split("``django_poolconf.E007``", 1)[1].split("   * - ", 1)[0]
    description = row.split("     - ")[2]  # the id's row: level, description, fix
    allowed = description.split("a key other than", 1)[1]

    assert re.findall(r"``([A-Z_]+)``", allowed) == list(POOLCONF_KEYS)


def _documented_objects() -> list[tuple[str, object]]:
    """Every object an autodoc directive of the docs renders, with its listed members."""
    directive = re.compile(
        r"^\.\. auto(?:class|function|exception|data)::\s+(\S+)\n"
        r"((?:[ \t]+:\w+:.*\n)*)",
        re.M,
    )
    found = []
    for page in sorted(DOCS.glob("*.rst")):
        for match in directive.finditer(page.read_text()):
            module, _, name = match[1].rpartition(".")
            obj = getattr(importlib.import_module(module), name)
            found.append((match[1], obj))
            members = re.search(r":members:\s*(.*)", match[2])
            for member in members[1].split(",") if members else []:
                if member.strip():
                    path = f"{match[1]}.{member.strip()}"
                    found.append((path, getattr(obj, member.strip())))
    return found


def test_api_docstrings_hold_no_example_the_snippet_test_would_not_run() -> None:
    # The docs render these docstrings; an example in one would be a code block no
    # test runs, as the dev-server recipe of EmbeddedCluster's was (it served an
    # empty database). Examples go on the pages, where the snippet test runs them.
    documented = _documented_objects()
    assert len(documented) > 40, documented
    with_code = [
        path
        for path, obj in documented
        if re.search(r"::\s*$|^\s*>>>|code-block::", inspect.getdoc(obj) or "", re.M)
    ]
    assert not with_code, with_code
