"""The README's table of POOL keys is the whole list."""

from __future__ import annotations

import re
from pathlib import Path

from django_poolconf.conf.pool import POOL_KEYS

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_lists_every_pool_key() -> None:
    text = README.read_text()
    table = text.split("Every key is optional:", 1)[1].split("\n\n", 2)[1]
    rows = re.findall(r"^\| (\w+) \| ([^|]+) \|", table, re.M)
    listed = [key for key, _ in rows if key != "key"]

    assert sorted(listed) == sorted(POOL_KEYS)
