"""What of a libpq error message django-poolconf passes on.

libpq names the server it could not reach (``connection to server at "db.internal"
(10.0.0.5), port 5432 failed: ...``), psycopg lists every address it tried, and a
server may even echo a parameter back. A failed connect names the server tried, as
Django's own backend does: an operator must see which one failed. :func:`redact`
takes out passwords, and the password of any URL; with ``hosts``, for the health
view's error text (shown with detail only), the host and port too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["describe_target", "redact"]

# psycopg's summary of several connection attempts: "- host: '...', port: '...', ...: "
_PSYCOPG_ATTEMPT: Final = re.compile(
    r"^- host: '[^']*', port: '[^']*'(?:, hostaddr: '[^']*')?: ", re.MULTILINE
)
_LIBPQ_TARGET: Final = re.compile(
    r'connection to server (?:at|on socket) "[^"]*"(?: \([^)]*\))?(?:, port \d+)? failed: '
)
# A database URL's password: "scheme://user:password@".
_URL_PASSWORD: Final = re.compile(r"(\b[A-Za-z][\w+.-]*://[^:/@\s]*):[^@\s]*@")
_PASSWORD_PARAMS: Final = ("password", "sslpassword")
_HOST_PARAMS: Final = ("host", "hostaddr")


def describe_target(conn_params: Mapping[str, Any]) -> str:
    """``host 'db', port 5432``: the server a connection was opened to, for messages."""
    host = conn_params.get("host")
    port = conn_params.get("port")
    shown = _URL_PASSWORD.sub(r"\1:***@", str(host)) if host else None
    return (f"host {shown!r}" if shown else "libpq's default host") + (
        f", port {port}" if port else ", libpq's default port"
    )


def redact(message: str, conn_params: Mapping[str, Any], *, hosts: bool = False) -> str:
    """Drop the password (and with ``hosts``, the host and port) from a libpq error message.

    User and database names stay: they are no secret, and an operator needs them.
    """
    if hosts:
        message = _PSYCOPG_ATTEMPT.sub("", _LIBPQ_TARGET.sub("", message))
    message = _URL_PASSWORD.sub(r"\1:***@", message)
    names = _PASSWORD_PARAMS + _HOST_PARAMS if hosts else _PASSWORD_PARAMS
    for name in names:
        value = conn_params.get(name)
        if not isinstance(value, str):
            continue
        # libpq takes a comma-separated list of hosts (and addresses); a message
        # names one of them. A password may hold a comma: it is hidden whole.
        parts = value.split(",") if name in _HOST_PARAMS else [value]
        for part in filter(None, parts):
            # Whole words only, so that a short host such as "db" is hidden without
            # mangling the words around it.
            pattern = rf"(?<![\w.-]){re.escape(part)}(?![\w.-])"
            message = re.sub(pattern, "***", message)
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return " ".join(lines) or "the server refused or did not answer"
