"""A project's subclass of the pooled backend that overrides Django's setup hooks."""

from __future__ import annotations

from typing import Any

from django_poolconf.backends.postgresql import base

__all__ = ["DatabaseWrapper"]


class DatabaseWrapper(base.DatabaseWrapper):
    """Leaves the time zone alone, counts its role setup and its setup per checkout.

    ``roles_set`` and ``per_checkout`` (lists on the class) record the backend pid
    of each ``_configure_role()`` and ``init_connection_state()``; ``tenant`` (a
    one-item list) is set in the session after Django's setup when it holds a value.
    """

    per_checkout: list[int] = []
    roles_set: list[int] = []
    tenant: list[str | None] = [None]

    # Django 5.1+ names the hooks _configure_timezone() and _configure_role(); 4.2
    # ensure_timezone() and ensure_role().

    def _configure_timezone(self, connection: Any) -> bool:
        return False

    def ensure_timezone(self) -> bool:
        return False

    def _configure_role(self, connection: Any) -> bool:
        self.roles_set.append(connection.info.backend_pid)
        return bool(super()._configure_role(connection))

    def ensure_role(self) -> bool:
        self.roles_set.append(self.connection.info.backend_pid)
        return bool(super().ensure_role())  # type: ignore[misc]

    def init_connection_state(self) -> None:
        super().init_connection_state()
        self.per_checkout.append(self.connection.info.backend_pid)
        tenant = self.tenant[0]
        if tenant is not None:
            with self.connection.cursor() as cursor:
                cursor.execute("SELECT set_config('app.tenant', %s, false)", [tenant])
