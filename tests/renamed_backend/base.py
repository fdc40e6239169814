"""A project's own PostgreSQL backend, under a name that does not say so."""

from __future__ import annotations

from django.db.backends.postgresql.base import DatabaseWrapper

__all__ = ["DatabaseWrapper"]
