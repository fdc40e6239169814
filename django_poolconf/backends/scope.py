"""``checkout_scope = "transaction"``: hold a connection only while it works.

In transaction scope a Django connection object holds a pooled connection only while
it works: while a cursor is open, a transaction is open or the session holds state a
statement set. Django's cursor wrappers are given :class:`ScopedCursor` as a base, whose
``close()`` tells the connection object; the connection object decides (see
``PooledDatabaseWrapperMixin.release_if_idle``).
"""

from __future__ import annotations

from typing import Any

from django_poolconf.errors import PoolError

__all__ = [
    "CheckoutScopeMixin",
    "GuardedCursor",
    "ScopedCursor",
    "guarded_class",
    "scoped_class",
]


class GuardedCursor:
    """A cursor of a pooled connection in request scope.

    Once its connection is checked in (the request ends, ``close()``), it runs
    nothing more: its driver cursor belongs to a connection that another borrower
    may be using. Django's own ``close()`` would have closed the connection under
    it; here it raises :class:`~django_poolconf.PoolError`.
    """

    db: Any
    scope_epoch: int = -1  # the borrowing it was opened in

    def execute(self, sql: Any, params: Any = None) -> Any:
        if self.scope_epoch != self.db._scope_epoch:
            raise _stale(self.db)
        return super().execute(sql, params)  # type: ignore[misc]

    def executemany(self, sql: Any, param_list: Any) -> Any:
        if self.scope_epoch != self.db._scope_epoch:
            raise _stale(self.db)
        return super().executemany(sql, param_list)  # type: ignore[misc]

    def callproc(self, procname: Any, params: Any = None, kparams: Any = None) -> Any:
        if self.scope_epoch != self.db._scope_epoch:
            raise _stale(self.db)
        return super().callproc(procname, params, kparams)  # type: ignore[misc]


class ScopedCursor:
    """A cursor of a connection in transaction scope.

    Counted open from its creation to its ``close()`` (Django closes the cursors of
    the ORM's queries once it has read their rows); a statement that may set state
    for the rest of the session pins the connection to its borrower until the
    request ends, unless Django's setup of a checkout runs it (a
    ``connection_created`` receiver), which runs again at every checkout. Once its connection is checked in while it is open (the request
    ends, ``close()``), it runs nothing more: :class:`~django_poolconf.PoolError`.
    """

    db: Any
    cursor: Any
    scope_epoch: int = -1  # the borrowing it was opened in; -1 once closed

    def execute(self, sql: Any, params: Any = None) -> Any:
        db = self.db
        if self.scope_epoch != db._scope_epoch and self.scope_epoch >= 0:
            raise _stale(db)
        if (
            not db.session_pinned
            and not db.checking_out  # the setup runs again at every checkout
            and db.statement_changes_session(sql)
        ):
            db.session_pinned = True
        return super().execute(sql, params)  # type: ignore[misc]

    def executemany(self, sql: Any, param_list: Any) -> Any:
        db = self.db
        if self.scope_epoch != db._scope_epoch and self.scope_epoch >= 0:
            raise _stale(db)
        if (
            not db.session_pinned
            and not db.checking_out
            and db.statement_changes_session(sql)
        ):
            db.session_pinned = True
        return super().executemany(sql, param_list)  # type: ignore[misc]

    def callproc(self, procname: Any, params: Any = None, kparams: Any = None) -> Any:
        db = self.db
        if self.scope_epoch != db._scope_epoch and self.scope_epoch >= 0:
            raise _stale(db)
        # A procedure's body is not visible here: it may set anything.
        if not db.checking_out:
            db.session_pinned = True
        return super().callproc(procname, params, kparams)  # type: ignore[misc]

    def close(self) -> None:
        try:
            self.cursor.close()
        finally:
            epoch, self.scope_epoch = self.scope_epoch, -1
            if epoch >= 0:
                self.db.cursor_closed(epoch)


def _stale(db: Any) -> PoolError:
    # Its driver cursor is bound to a connection that went back to the pool (the
    # request ended, or close()): another borrower may be using it now.
    return PoolError(
        f"This cursor of {db.alias!r} was opened before its connection was checked "
        "in (the request ended, or close()): open a new cursor."
    )


_CLASSES: dict[tuple[type, type], type] = {}


def scoped_class(cls: type) -> type:
    """``cls`` (a Django cursor wrapper class) with :class:`ScopedCursor` in front."""
    return _subclass(ScopedCursor, cls)


def guarded_class(cls: type) -> type:
    """``cls`` (a Django cursor wrapper class) with :class:`GuardedCursor` in front."""
    return _subclass(GuardedCursor, cls)


def _subclass(front: type, cls: type) -> type:
    made = _CLASSES.get((front, cls))
    if made is None:
        name = f"{front.__name__.removesuffix('Cursor')}{cls.__name__}"
        made = _CLASSES[front, cls] = type(name, (front, cls), {})
    return made


class CheckoutScopeMixin:
    """``checkout_scope = "transaction"`` for ``PooledDatabaseWrapperMixin``."""

    # The connection is parked (reset, kept for this object unless someone waits)
    # whenever it is idle: no cursor open, no transaction, no session state a
    # statement set. The next statement takes it back as a request's first does.

    # Declared for type checkers: Django's DatabaseWrapper and
    # PooledDatabaseWrapperMixin define them.
    settings_dict: dict[str, Any]
    in_atomic_block: bool
    autocommit: bool
    errors_occurred: bool
    _thread_sharing_count: int
    _loan: Any
    _parked: bool
    _conn: Any

    def _park(self, loan: Any) -> None:
        raise NotImplementedError  # pragma: no cover

    def connection_is_broken(self, dbapi_connection: Any) -> bool:
        raise NotImplementedError  # pragma: no cover

    def connection_is_idle(self, dbapi_connection: Any) -> bool:
        """Whether the server has no transaction open on it (vendors; no round trip).

        A ``BEGIN`` sent as SQL in autocommit opens one that Django knows nothing of.
        """
        raise NotImplementedError  # pragma: no cover

    _open_cursors = 0  # cursors of this borrowing not closed yet
    _scope_epoch = 0  # which borrowing: a cursor of an earlier one counts no more
    session_pinned = False  # a statement may have set session state: hold till the end
    # Django's setup of a checkout is running (init_connection_state(), the
    # connection_created receivers): a statement of theirs must not park the
    # connection that is being handed to the caller.
    checking_out = False

    def make_cursor(self, cursor: Any) -> Any:
        """Django's; in transaction scope, a cursor whose close may release the connection."""
        return self._scoped(super().make_cursor(cursor))  # type: ignore[misc]

    def make_debug_cursor(self, cursor: Any) -> Any:
        """Django's; in transaction scope, a cursor whose close may release the connection."""
        return self._scoped(super().make_debug_cursor(cursor))  # type: ignore[misc]

    def _scoped(self, wrapped: Any) -> Any:
        lender = self._loan.lender
        if lender is None or self._loan.record is None:
            return wrapped  # not a pooled connection
        if lender.settings.checkout_scope != "transaction":
            wrapped.__class__ = guarded_class(type(wrapped))
            wrapped.scope_epoch = self._scope_epoch
            return wrapped
        wrapped.__class__ = scoped_class(type(wrapped))
        wrapped.scope_epoch = self._scope_epoch
        self._open_cursors += 1
        return wrapped

    def cursor_closed(self, epoch: int) -> None:
        """A cursor of this connection closed: release the connection if it is idle."""
        if epoch != self._scope_epoch:
            return
        self._open_cursors -= 1
        if self._open_cursors == 0:
            self.release_if_idle()

    def set_autocommit(
        self,
        autocommit: bool,
        force_begin_transaction_with_broken_autocommit: bool = False,
    ) -> None:
        """Django's; the end of a transaction may release the connection.

        Also when an ``on_commit`` callback that Django runs here raises.
        """
        try:
            super().set_autocommit(  # type: ignore[misc]
                autocommit, force_begin_transaction_with_broken_autocommit
            )
        finally:
            if autocommit and self._open_cursors == 0:
                self.release_if_idle()

    def release_if_idle(self) -> None:
        """In transaction scope, park the connection unless something holds it.

        Held while a checkout's setup runs, while a cursor is open, in a
        transaction (Django's, or one the server has open: a ``BEGIN`` sent as
        SQL) or an atomic block, after a statement that may have set session state
        (until the request ends), after an error, while the connection object is
        shared between threads, and with a non-zero ``CONN_MAX_AGE``.
        """
        loan = self._loan
        lender = loan.lender
        if (
            lender is None
            or loan.record is None
            or lender.settings.checkout_scope != "transaction"
            or self.session_pinned
            or self.checking_out
            or self.in_atomic_block
            or not self.autocommit
            or loan.error is not None
            or self.errors_occurred
            or self._thread_sharing_count
            or self._parked
            or self.settings_dict["CONN_MAX_AGE"] != 0  # W010: held, as it asks
            or not self.connection_is_idle(self._conn)
        ):
            return
        self._park(loan)

    def _end_scope(self) -> None:
        self._open_cursors = 0
        self._scope_epoch += 1
        self.session_pinned = False

    def statement_changes_session(self, sql: Any) -> bool:
        """Whether a statement may set state that lasts beyond it in the session (vendors)."""
        raise NotImplementedError  # pragma: no cover
