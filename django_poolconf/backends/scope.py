"""``checkout_scope = "transaction"``: the cursors that tell when a connection is idle.

In transaction scope a Django connection object holds a pooled connection only while
it works: while a cursor is open, a transaction is open or the session holds state a
statement set. Django's cursor wrappers are given :class:`ScopedCursor` as a base, whose
``close()`` tells the connection object; the connection object decides (see
``PooledDatabaseWrapperMixin.release_if_idle``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["ScopedCursor", "scoped_class"]


class ScopedCursor:
    """A cursor of a connection in transaction scope.

    Counted open from its creation to its ``close()`` (Django closes the cursors of
    the ORM's queries once it has read their rows); a statement that may set state
    for the rest of the session pins the connection to its borrower until the
    request ends.
    """

    db: Any
    cursor: Any
    scope_epoch: int = -1  # the borrowing it was opened in; -1 once closed

    def execute(self, sql: Any, params: Any = None) -> Any:
        db = self.db
        if not db.session_pinned and db.statement_changes_session(sql):
            db.session_pinned = True
        return super().execute(sql, params)  # type: ignore[misc]

    def executemany(self, sql: Any, param_list: Any) -> Any:
        db = self.db
        if not db.session_pinned and db.statement_changes_session(sql):
            db.session_pinned = True
        return super().executemany(sql, param_list)  # type: ignore[misc]

    def callproc(self, procname: Any, params: Any = None, kparams: Any = None) -> Any:
        # A procedure's body is not visible here: it may set anything.
        self.db.session_pinned = True
        return super().callproc(procname, params, kparams)  # type: ignore[misc]

    def close(self) -> None:
        try:
            self.cursor.close()
        finally:
            epoch, self.scope_epoch = self.scope_epoch, -1
            if epoch >= 0:
                self.db.cursor_closed(epoch)


_CLASSES: dict[type, type] = {}


def scoped_class(cls: type) -> type:
    """``cls`` (a Django cursor wrapper class) with :class:`ScopedCursor` in front."""
    scoped = _CLASSES.get(cls)
    if scoped is None:
        scoped = _CLASSES[cls] = type(f"Scoped{cls.__name__}", (ScopedCursor, cls), {})
    return scoped
