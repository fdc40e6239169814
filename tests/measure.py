"""Measurements of the fault tests, for the recovery times in docs/reliability.rst.

``python3 dev.py test -k fault -s`` prints them: ``MEASURED <what>: <n> ms``.
"""

from __future__ import annotations


def measured(what: str, seconds: float) -> float:
    """Print a measurement (``pytest -s`` shows it) and return it."""
    print(f"MEASURED {what}: {seconds * 1000:.0f} ms")
    return seconds
