"""Keeping the host, port and password out of libpq's error messages.

libpq names the server it could not reach (``connection to server at "db.internal"
(10.0.0.5), port 5432 failed: ...``), and psycopg lists every address it tried; a
server may even echo a parameter back. :func:`redact` drops those parts, so a
connection error can be logged, shown by ``/health/db`` or raised to the caller.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["SECRET_PARAMS", "redact"]

# psycopg's summary of several connection attempts: "- host: '...', port: '...', ...: "
_PSYCOPG_ATTEMPT: Final = re.compile(
    r"^- host: '[^']*', port: '[^']*'(?:, hostaddr: '[^']*')?: ", re.MULTILINE
)
_LIBPQ_TARGET: Final = re.compile(
    r'connection to server (?:at|on socket) "[^"]*"(?: \([^)]*\))?(?:, port \d+)? failed: '
)
#: The connection parameters (libpq's names) whose values never appear in a message.
#: User and database names stay: they are no secret, and an operator needs them.
SECRET_PARAMS: Final = ("password", "sslpassword", "host", "hostaddr")


def redact(message: str, conn_params: Mapping[str, Any]) -> str:
    """Drop the host, port and password from a libpq error message."""
    message = _PSYCOPG_ATTEMPT.sub("", _LIBPQ_TARGET.sub("", message))
    for name in SECRET_PARAMS:
        value = conn_params.get(name)
        if isinstance(value, str) and value:
            # Whole words only, so that a short host such as "db" is hidden without
            # mangling the words around it.
            pattern = rf"(?<![\w.-]){re.escape(value)}(?![\w.-])"
            message = re.sub(pattern, "***", message)
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return " ".join(lines) or "the server refused or did not answer"
