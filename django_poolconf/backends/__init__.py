"""Pooled database backends: Django's own wrappers, borrowing from a SQLAlchemy pool."""
