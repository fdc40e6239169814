"""Keeping passwords out of reprs, logs and fingerprints.

Error trackers record the reprs of local variables, debuggers show them and
``logger.debug("%r", obj)`` writes them: no object this package keeps holds a
password in a form its repr or str would show.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Collection, Mapping
from typing import Any, Final

__all__ = ["Secret", "fingerprint", "hide_passwords"]

#: Connection parameters (libpq's names) that are secrets.
SECRET_PARAMS: Final = frozenset({"password", "sslpassword"})

# What a password looks like inside a text: a URL's "scheme://user:password@", a
# conninfo's "password=value" (quoted or not), a mapping's "'PASSWORD': 'value'".
_IN_TEXT: Final = (
    (re.compile(r"(\b[A-Za-z][\w+.-]*://[^:/@\s]*):[^@\s]*@"), r"\1:***@"),
    (
        re.compile(r"(\b(?:ssl)?password\s*=\s*)(?:'(?:[^'\\]|\\.)*'|\S+)", re.I),
        r"\1***",
    ),
    (
        re.compile(
            r"""(['"][^'"]*(?:password|passwd|secret)[^'"]*['"]\s*:\s*)"""
            r"""(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^,}\]]+)""",
            re.I,
        ),
        r"\1'***'",
    ),
)

# Fingerprints hash secrets with a key of this process, so that a hash seen in a
# repr cannot be looked up in a table of common passwords. A forked child keeps
# its parent's key: their fingerprints agree.
_KEY: Final = os.urandom(32)


class Secret:
    """A secret value, shown as ``'***'`` by its repr and str; :meth:`reveal` gives it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The value itself: pass it on, never keep it or show it."""
        return self._value

    def __repr__(self) -> str:
        return "'***'"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(
            self._value.encode(), other._value.encode()
        )

    def __hash__(self) -> int:
        return hash(_digest(self._value))


def _digest(value: str) -> str:
    return hmac.new(_KEY, value.encode(), hashlib.sha256).hexdigest()[:32]


def fingerprint(
    params: Mapping[str, Any], hidden: Collection[str] = SECRET_PARAMS
) -> tuple[tuple[str, Any], ...]:
    """The plain values of ``params``, sorted, with those of ``hidden`` keys hashed.

    Two fingerprints of this process are equal when the parameters are; neither shows
    a hidden value.
    """
    return tuple(
        sorted(
            (
                key,
                f"hmac:{_digest(str(value))}"
                if key in hidden and value is not None
                else value,
            )
            for key, value in params.items()
            if isinstance(value, str | int | float | bool) or value is None
        )
    )


def hide_passwords(text: str) -> str:
    """``text`` with what looks like a password masked as ``***``.

    For messages that show a value a user wrote where it does not belong: a
    database URL's password, a conninfo's ``password=``, a dict's ``'PASSWORD'``.
    """
    for pattern, replacement in _IN_TEXT:
        text = pattern.sub(replacement, text)
    return text
