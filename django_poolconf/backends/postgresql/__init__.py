"""The pooled PostgreSQL backend. Django imports ``DatabaseWrapper`` from ``.base``."""
