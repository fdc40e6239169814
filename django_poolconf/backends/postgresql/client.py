"""``manage.py dbshell``: Django's ``psql`` client, with a callable ``PASSWORD`` called."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db.backends.postgresql import client as postgresql_client

__all__ = ["DatabaseClient"]


class DatabaseClient(postgresql_client.DatabaseClient):
    """Django's client; a callable ``PASSWORD`` is called for ``psql``'s ``PGPASSWORD``.

    Django would pass its ``str()``, the callable's repr, as the password. The pool
    option ``connect_params`` is not applied: ``psql`` connects with ``DATABASES``.
    """

    @classmethod
    def settings_to_cmd_args_env(
        cls, settings_dict: dict[str, Any], parameters: Iterable[str]
    ) -> tuple[list[str], dict[str, str] | None]:
        password = settings_dict.get("PASSWORD")
        if callable(password):
            settings_dict = {**settings_dict, "PASSWORD": password()}
        return super().settings_to_cmd_args_env(settings_dict, parameters)
