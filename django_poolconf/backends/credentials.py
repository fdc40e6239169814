"""Credentials made by code, once for each new connection: a callable ``PASSWORD`` and ``connect_params``.

A rotated secret (a Vault lease, an AWS RDS IAM token valid 15 minutes) reaches new
connections without a restart when ``DATABASES[alias]["PASSWORD"]`` is a callable
that takes no argument and returns the password, or when the pool option
``connect_params`` names a function ``(alias, params) -> params`` that returns the
connection parameters to use (a user and a password from one lease, say), as
psycopg_pool accepts a callable for its ``kwargs``. :class:`ConnectParams` calls them
for each new physical connection, never for a checkout, outside every lock of the
pool, and turns what they raise into a
:exc:`~django_poolconf.ConnectionFailed` that names the alias and the setting, never
a secret. Connections already open keep working; ``pool_recycle`` or
:func:`~django_poolconf.drain` replaces them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from django.utils.module_loading import import_string

from django_poolconf.errors import ConnectionFailed

__all__ = ["ConnectParams", "password_callable"]


def password_callable(params: Mapping[str, Any]) -> Callable[[], object] | None:
    """The callable ``PASSWORD`` in Django's connection parameters, if it is one."""
    password = params.get("password")
    return password if callable(password) else None


class ConnectParams:
    """Make one new connection's parameters: call the ``PASSWORD`` callable, then ``connect_params``.

    ``path`` is the dotted path of ``connect_params`` (imported at the first call, not
    under a lock); ``function`` gives the function itself instead. Its repr names the
    alias only: never the callable, whose repr may show what it was built with (a
    :func:`functools.partial`'s token), nor what it returns.
    """

    __slots__ = ("_function", "_password", "alias", "path")

    def __init__(
        self,
        alias: str,
        *,
        password: Callable[[], object] | None = None,
        path: str | None = None,
        function: Callable[[str, dict[str, Any]], object] | None = None,
    ) -> None:
        self.alias = alias
        self._password = password
        self.path = path
        self._function = function

    def __bool__(self) -> bool:
        return (
            self._password is not None
            or self.path is not None
            or self._function is not None
        )

    def __repr__(self) -> str:
        parts = []
        if self._password is not None:
            parts.append("PASSWORD callable")
        if self.path is not None or self._function is not None:
            parts.append("connect_params")
        return f"<ConnectParams of {self.alias!r}: {', '.join(parts) or 'nothing'}>"

    def __call__(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The parameters of one new connection, made from ``params`` (not changed).

        :raises ConnectionFailed: when a callable raises or returns what cannot be
            used; chained from what it raised, named by the alias and the setting.
        """
        result = dict(params)
        if self._password is not None:
            where = f"DATABASES[{self.alias!r}]['PASSWORD']"
            password = self._call(where, self._password)
            if not isinstance(password, str) or not password:
                shown = "an empty str" if password == "" else type(password).__name__
                raise self._failed(
                    where, f"returned {shown}, not a password (a non-empty str)"
                )
            result["password"] = password
        function = self._function
        if function is None and self.path is not None:
            function = self._function = import_string(self.path)
        if function is not None:
            where = f"DATABASES[{self.alias!r}]['POOL']['connect_params']"
            if self.path is not None:
                where = f"{where} ({self.path!r})"
            made = self._call(where, lambda: function(self.alias, dict(result)))
            if not isinstance(made, Mapping):
                raise self._failed(where, f"returned {type(made).__name__}, not a dict")
            result = dict(made)
        return result

    def _call(self, where: str, function: Callable[[], object]) -> object:
        try:
            return function()
        except Exception as error:
            # Its message is the user's and may hold anything: only its type is shown.
            raise self._failed(where, f"raised {type(error).__name__}") from error

    def _failed(self, where: str, what: str) -> ConnectionFailed:
        return ConnectionFailed(
            f"Could not open a connection for {self.alias!r}: its credentials "
            f"callable, {where}, {what}."
        )
