"""``manage.py dbshell``'s client: a callable PASSWORD is called, never shown as a repr."""

from __future__ import annotations

import functools

from django_poolconf.backends.postgresql.base import DatabaseWrapper


def test_dbshell_calls_a_callable_password_for_psql():
    settings_dict = {
        "NAME": "app",
        "USER": "app",
        "HOST": "db",
        "PORT": "5432",
        "PASSWORD": functools.partial(str, "s3cr3t"),
        "OPTIONS": {},
    }

    args, env = DatabaseWrapper.client_class.settings_to_cmd_args_env(settings_dict, [])

    assert args == ["psql", "-U", "app", "-h", "db", "-p", "5432", "app"]
    assert env == {"PGPASSWORD": "s3cr3t"}


def test_dbshell_passes_a_plain_password_as_django_does():
    settings_dict = {"NAME": "app", "PASSWORD": "plain", "OPTIONS": {}}

    _, env = DatabaseWrapper.client_class.settings_to_cmd_args_env(settings_dict, [])

    assert env == {"PGPASSWORD": "plain"}
