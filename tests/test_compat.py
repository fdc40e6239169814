"""The startup self-check of the SQLAlchemy and psycopg internals the package uses."""

from __future__ import annotations

import importlib.metadata
import re

import psycopg
import pytest
import sqlalchemy
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, connections
from sqlalchemy.pool import Pool
from sqlalchemy.pool.base import _ConnectionRecord

from django_poolconf import compat, engines, get_engine

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fresh_pools(monkeypatch):
    connections.close_all()
    engines.dispose_all()
    monkeypatch.setattr(compat, "_checked", False)  # check again, restored after
    yield
    connections.close_all()
    engines.dispose_all()


def test_installed_versions_pass_and_serve_queries():
    engine = get_engine()  # built here: the check ran
    assert compat._checked
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT 1").scalar() == 1


@pytest.mark.parametrize(
    ("owner", "name", "shown"),
    [
        (Pool, "_do_get", "Pool._do_get"),
        (Pool, "_create_connection", "Pool._create_connection"),
        (_ConnectionRecord, "_checkin_failed", "_ConnectionRecord._checkin_failed"),
        (psycopg.Connection, "_set_autocommit", "psycopg.Connection._set_autocommit"),
    ],
)
def test_a_missing_internal_fails_the_first_connect_clearly(
    monkeypatch, owner, name, shown
):
    # Take the name away from the class that defines it, as a release without it
    # would; monkeypatch puts it back after the test.
    defining = next(cls for cls in owner.__mro__ if name in vars(cls))
    monkeypatch.delattr(defining, name)

    with pytest.raises(ImproperlyConfigured) as raised:
        connection.ensure_connection()

    message = str(raised.value)
    assert shown in message
    assert f"SQLAlchemy {sqlalchemy.__version__}" in message
    assert f"psycopg {psycopg.__version__}" in message
    assert compat.SUPPORTED in message
    assert not compat._checked
    assert connection.connection is None


def test_a_missing_instance_field_is_named(monkeypatch):
    # Fields set by psycopg's constructor: a constructor that no longer sets one.
    original = psycopg.Connection.__init__

    def without_prepared(self, *args, **kwargs):
        original(self, *args, **kwargs)
        del self._prepared

    monkeypatch.setattr(psycopg.Connection, "__init__", without_prepared)

    with pytest.raises(
        ImproperlyConfigured, match=r"psycopg\.Connection\(\)\._prepared"
    ):
        get_engine()


def test_the_check_runs_once_per_process(monkeypatch):
    get_engine()
    monkeypatch.delattr(Pool, "_do_get")
    engines.dispose_all()
    # The second engine is not checked again: the check costs nothing after startup.
    assert get_engine() is not None


def test_supported_range_matches_the_package_requirements():
    def parse(requirement: str) -> tuple[str, frozenset[str]]:
        name, specifiers = re.fullmatch(r"([\w.-]+)(.*)", requirement).groups()
        return name.lower(), frozenset(specifiers.split(","))

    requires = {
        parse(requirement.replace(" ", ""))
        for requirement in importlib.metadata.requires("django-poolconf") or []
        if "extra" not in requirement
    }
    for part in compat.SUPPORTED.split(" and "):
        assert parse(part) in requires
