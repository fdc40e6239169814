"""The pooled SQLite backend. Django imports ``DatabaseWrapper`` from ``.base``."""
