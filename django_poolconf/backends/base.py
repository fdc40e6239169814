"""The mixin that makes a Django ``DatabaseWrapper`` borrow its connection from a pool.

``connect()`` checks a connection out of the alias's SQLAlchemy pool and ``close()``
checks it back in. Django's setup of a new connection (``_configure_connection()``:
time zone, role) and :data:`~django_poolconf.signals.physical_connection_created`
run once per physical connection, and what they set is the session's baseline, which
every reset restores; ``init_connection_state()`` and ``connection_created`` run on
every checkout, as with Django's own pool, on a session reset to that baseline.

A wrapper that asks for no pool (``OPTIONS["pool"]`` false), for Django's pool
(``OPTIONS["pool"]`` true), or a ``copy()`` whose settings differ from its
original's gets what Django would give it, outside our pool.

A vendor module subclasses Django's wrapper with this mixin first and supplies
:class:`~django_poolconf.pool.hooks.ConnectionHooks` and an error classifier.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import weakref
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, Final

from django.core.exceptions import ImproperlyConfigured
from django.db.backends.base.base import NO_DB_ALIAS
from django.db.backends.signals import connection_created
from django.db.utils import DatabaseErrorWrapper, ProgrammingError
from django.utils.asyncio import async_unsafe
from django.utils.functional import cached_property
from sqlalchemy import exc as sa_exc

from django_poolconf.backends.credentials import ConnectParams, password_callable
from django_poolconf.backends.scope import CheckoutScopeMixin
from django_poolconf.backends.snapshot import SettingsSnapshot
from django_poolconf.conf.pool import PoolSettings, pool_settings
from django_poolconf.conf.rules import get_poolconf
from django_poolconf.errors import ConnectionFailed, PoolTimeout, ReadOnlyServer
from django_poolconf.pool import registry
from django_poolconf.pool.hooks import INFO_NEW, ConnectionHooks
from django_poolconf.pool.lender import Lender
from django_poolconf.pool.orphans import ORPHANS, PARKED
from django_poolconf.pool.ownership import INHERITED
from django_poolconf.signals import physical_connection_created

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool.base import _ConnectionRecord

__all__ = [
    "DISCONNECT",
    "READ_ONLY",
    "RECOVERY_CONFLICT",
    "PooledDatabaseWrapperMixin",
]

logger = logging.getLogger(__name__)

#: Error kinds returned by ``classify_error()``.
DISCONNECT: Final = "disconnect"  # the connection is gone: replace older ones too
READ_ONLY: Final = "read_only"  # a write reached a read-only server
UNUSABLE: Final = "unusable"  # it failed Django's health check (CONN_HEALTH_CHECKS)
#: Returned by ``classify_read_failure()``: a standby cancelled the statement to replay
#: WAL; the connection itself is fine.
RECOVERY_CONFLICT: Final = "recovery_conflict"


class _PoolErrorWrapper(DatabaseErrorWrapper):
    """Django's error wrapper that first tells the pool what kind of error it saw.

    It keeps no reference to the wrapper of its own: Django 6 drops its ``wrapper``
    when the error wrapper is finalized, and a second reference would keep a dropped
    copy of a connection for the garbage collector.
    """

    wrapper: PooledDatabaseWrapperMixin

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        if exc_type is None:
            return  # the common case, without a second call
        kind = None if exc_value is None else self.wrapper.note_pool_error(exc_value)
        if kind != READ_ONLY:
            super().__exit__(exc_type, exc_value, traceback)
            return
        try:
            super().__exit__(exc_type, exc_value, traceback)  # marks errors_occurred
        except Exception:
            alias = self.wrapper.alias
            raise ReadOnlyServer(
                f"A write on {alias!r} reached a read-only server (a standby: the "
                "primary moved?); the pool's connections are replaced. Point "
                f"DATABASES[{alias!r}]['HOST'] at the primary, or list every server "
                "in HOST with OPTIONS['target_session_attrs'] = 'read-write'."
            ).with_traceback(traceback) from exc_value


class PooledDatabaseWrapperMixin(CheckoutScopeMixin):
    """Check connections out of the alias's pool on connect, and in on close.

    Put it before Django's ``DatabaseWrapper`` in the bases. The ``__no_db__``
    connection Django opens to create and drop test databases is never pooled.
    """

    # Declared for type checkers; Django's DatabaseWrapper defines them.
    alias: str
    settings_dict: dict[str, Any]
    in_atomic_block: bool
    closed_in_transaction: bool
    errors_occurred: bool
    autocommit: bool
    close_at: float | None
    run_on_commit: list[Any]
    _thread_sharing_count: int
    health_check_enabled: bool
    health_check_done: bool

    _conn: Any = None  # the driver connection, borrowed or parked
    _parked = False  # returned to the pool at request end, but kept for this object
    _made_with: SettingsSnapshot | None = None  # the settings it last connected with

    _pool_settings_cache: tuple[tuple[object, ...], PoolSettings] | None = None
    _fingerprint_cache: tuple[object, PoolSettings, Hashable] | None = None

    #: Marks a backend as pooled for the settings checks, whatever its ENGINE path.
    poolconf_backend: Final = True

    _connecting_unpooled = False  # connect() is opening a connection outside our pool
    _original: weakref.ref[PooledDatabaseWrapperMixin] | None = None  # of a copy
    _setting_up = False  # connect() is setting up a connection the pool has just opened

    # -- configuration ---------------------------------------------------------

    @property
    def is_pooled(self) -> bool:
        """Whether this wrapper borrows from our pool.

        Not the ``__no_db__`` connection Django opens to create and drop test
        databases, nor one whose ``OPTIONS["pool"]`` is set: false asks Django for a
        plain connection, true for Django's own pool.
        """
        if self.alias == NO_DB_ALIAS:
            return False
        options = self.settings_dict.get("OPTIONS")
        return options is None or options.get("pool") is None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loan = loan = _Loan()
        # A wrapper dropped with a connection still borrowed (its thread ended
        # without closing it) gives the connection back instead of leaking it.
        weakref.finalize(self, loan.checkin_orphan).atexit = False

    def get_pool_settings(self) -> PoolSettings:
        """Return this alias's validated pool options.

        :raises ImproperlyConfigured: when they are invalid.
        """
        settings_dict = self.settings_dict
        # What validation reads. Objects compare by identity, not equality:
        # override_settings swaps whole objects, and identity keeps this cheap.
        key = (
            id(settings_dict.get("POOL")),
            id(get_poolconf()),
            id(settings_dict.get("OPTIONS")),
            settings_dict.get("CONN_MAX_AGE"),
            settings_dict.get("REPLICA_OF"),
            settings_dict.get("HOST"),
        )
        cached = self._pool_settings_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        from django.db import connections

        result = pool_settings(
            self.alias, settings_dict, databases=connections.settings
        )
        self._pool_settings_cache = (key, result)
        return result

    def close_if_health_check_failed(self) -> None:
        """Django's ``CONN_HEALTH_CHECKS``; a pooled connection that fails it is closed.

        Given back, it would be the next one the pool lends.
        """
        connection = self.connection
        if connection is None:
            # Django calls this before connecting: report a configuration error first.
            if self.is_pooled:
                self.get_pool_settings()
            return
        loan = self._loan
        if (
            loan.record is None
            or not self.health_check_enabled
            or self.health_check_done
        ):
            super().close_if_health_check_failed()  # type: ignore[misc]
            return
        if not self.is_usable():  # type: ignore[attr-defined]
            if loan.error is None:
                loan.error = UNUSABLE
            self.close()
        self.health_check_done = True

    def copy(self, alias: str | None = None) -> Any:
        """Django's ``copy()``; the copy remembers its original, whose pool it may share.

        A copy of a copy remembers the first original: a copy is never the alias's.
        """
        new = super().copy(alias)  # type: ignore[misc]
        original = self._original
        new._original = weakref.ref(self) if original is None else original
        return new

    def shares_alias_pool(self, conn_params: dict[str, Any]) -> bool:
        """Whether this wrapper borrows from its alias's pool.

        A wrapper Django's ``ConnectionHandler`` makes, or one built by hand, is the
        alias's: a change of its settings (the test runner's database name)
        replaces the pool. A ``copy()`` (Django's idiom for a second connection,
        often with other ``OPTIONS``), or a copy of a copy, shares the first
        original's pool only when it has the same alias and would make the same
        connections: never a connection made with other settings, and never
        replacing the alias's pool.
        """
        original_ref = self._original
        if original_ref is None:
            return True
        original = original_ref()
        if original is None or original.alias != self.alias or not original.is_pooled:
            return False
        theirs = original._fingerprint(original.get_connection_params())  # type: ignore[attr-defined]
        return bool(self._fingerprint(conn_params) == theirs)

    # -- the connection, kept between requests -------------------------------------
    #
    # With thread_affinity, the end of a request resets the connection and parks it
    # instead of checking it in: it is idle and any borrower may take it when no
    # other connection is idle, but the next request of this object (of this
    # thread) takes it back with one dict operation, without Django's connect().
    # Every use goes through Django's ``connection`` attribute, so the attribute
    # takes a parked connection back before anyone sees it, or reads None when
    # another borrower took it: Django then connects anew.

    @property
    def connection(self) -> Any:
        """Django's driver connection; a parked one is taken back first.

        Except in an event loop's thread: taking a connection back may ping the
        server, and no network I/O may happen there. A parked connection reads
        ``None`` there and stays parked for the next synchronous use (Django's
        ``connect()`` and ``cursor()`` raise ``SynchronousOnlyOperation`` there
        anyway); ``DJANGO_ALLOW_ASYNC_UNSAFE`` lifts this, as it lifts Django's check.
        """
        if self._parked:
            if _in_event_loop():
                return None
            return self._take_back()
        return self._conn

    @connection.setter
    def connection(self, value: Any) -> None:
        if self._parked:  # replaced without being taken back: check it in
            self._parked = False
            lender = self._loan.lender
            assert lender is not None
            lender.checkin_parked(self._loan)
        self._conn = value

    def _take_back(self) -> Any:
        # Forget the connection first: if anything interrupts the take-back, this
        # object borrows anew rather than use a connection it may not own.
        connection, self._conn = self._conn, None
        self._parked = False
        loan = self._loan
        lender = loan.lender
        assert lender is not None
        made_with = self._made_with
        if made_with is None or not made_with.matches(self.settings_dict):
            # The settings changed since it connected (NAME, OPTIONS, ...): into the
            # pool with it, and Django connects anew with the new ones.
            lender.checkin_parked(loan)
            return None
        try:
            record = lender.take_back(loan)
        except Exception:  # noqa: BLE001 - connect() borrows anew, and reports
            return None
        if record is None:
            return None
        loan.record = record
        lender.lent(loan, record, self._thread_sharing_count > 0)
        self._conn = connection
        self._checked_out()
        return connection

    def close_if_unusable_or_obsolete(self) -> None:
        """At a request's start and end: park the connection, or Django's own checks."""
        loan = self._loan
        if self._parked:
            # Reset when parked, checked when taken back. Parked between statements
            # (transaction scope) without thread affinity: checked in at the end.
            if loan.lender is not None and not loan.lender.affinity:
                self.close()
            return
        if (
            loan.record is not None
            and loan.error is None
            and not self.errors_occurred
            and not self.in_atomic_block
            and self.autocommit == self.settings_dict["AUTOCOMMIT"]
            and self.close_at is not None
            and time.monotonic() >= self.close_at
            and loan.lender is not None
            and loan.lender.affinity
            and not self.connection_is_broken(self._conn)
        ):
            self._park(loan)
            return
        super().close_if_unusable_or_obsolete()  # type: ignore[misc]

    def _park(self, loan: _Loan) -> None:
        # Reset the connection and park it for this object (given to the first
        # waiter instead, if any).
        lender = loan.lender
        assert lender is not None and loan.record is not None
        self.run_on_commit = []
        self._end_scope()
        record, loan.record = loan.record, None
        connection, self._conn = self._conn, None
        if lender.borrowed.pop(loan, None) is None:
            return  # returned by the reaper: no longer this object's
        if lender.checkin(record, park=loan):
            self._conn = connection
            self._parked = True

    def inc_thread_sharing(self) -> None:
        """Django's, and the borrowed connection is never taken for an ended thread's."""
        super().inc_thread_sharing()  # type: ignore[misc]
        loan = self._loan
        lender = loan.lender
        if lender is not None:
            entry = lender.borrowed.get(loan)
            if entry is not None:
                # Other threads use it now: the one that borrowed may end first.
                lender.borrowed[loan] = (entry[0], None)

    def close(self) -> None:
        """Check the connection in (Django's ``close()``), parked or not."""
        if self._parked:
            self.connection = None  # the setter checks the parked one in
            return
        super().close()  # type: ignore[misc]

    def credentials_for(self, conn_params: dict[str, Any]) -> ConnectParams:
        """What makes a new connection's credentials: a callable ``PASSWORD``, ``connect_params``.

        Call the result with ``conn_params`` for each new physical connection (it is
        falsy when there is nothing to call). An alias whose pool options are
        invalid has no ``connect_params`` here: connecting reports the error.
        """
        try:
            path = self.get_pool_settings().connect_params
        except ImproperlyConfigured:
            path = None
        return ConnectParams(
            self.alias, password=password_callable(conn_params), path=path
        )

    # -- vendor hooks ------------------------------------------------------------

    def pool_fingerprint(self, conn_params: dict[str, Any]) -> Hashable:
        """What identifies the server and session this alias's connections go to."""
        raise NotImplementedError  # pragma: no cover

    def make_pool_hooks(self, conn_params: dict[str, Any]) -> ConnectionHooks:
        """Return the hooks that open, check and reset this vendor's connections."""
        raise NotImplementedError  # pragma: no cover

    def classify_error(self, error: BaseException) -> str | None:
        """Return :data:`DISCONNECT`, :data:`READ_ONLY` or ``None`` for a driver error."""
        raise NotImplementedError  # pragma: no cover

    def connection_is_broken(self, dbapi_connection: Any) -> bool:
        """Whether a driver connection must be closed rather than pooled (no round trip)."""
        raise NotImplementedError  # pragma: no cover

    def connection_autocommit(self, dbapi_connection: Any) -> bool | None:
        """The driver connection's autocommit mode, as the driver knows it (no round trip)."""
        return getattr(dbapi_connection, "autocommit", None)

    def session_in_transaction(self) -> bool:
        """Whether the open driver connection's session is in a transaction (no round trip).

        Also when Django's autocommit is on: a raw ``BEGIN`` opened one.
        """
        raise NotImplementedError  # pragma: no cover

    def classify_read_failure(self, error: BaseException) -> str | None:
        """Why a statement that failed here, before returning a row, could run elsewhere.

        :data:`DISCONNECT` when the connection is gone, :data:`RECOVERY_CONFLICT`
        when a standby cancelled the statement to replay WAL, else ``None``. Called
        with the driver's error, after Django's error wrapper has seen it.
        """
        raise NotImplementedError  # pragma: no cover

    def cursor_like(self, cursor: Any) -> Any:
        """A new cursor of this connection, of the kind of another connection's driver ``cursor``.

        A server-side (named) cursor gets one, as ``chunked_cursor()`` makes them;
        any other cursor, a plain one. Connects first if needed.
        """
        raise NotImplementedError  # pragma: no cover

    # -- the engine ----------------------------------------------------------------

    def pooled_engine(self) -> Engine:
        """Return the engine whose pool this connection borrows from.

        Prefer :func:`django_poolconf.get_engine`.
        """
        return self._get_lender(self.get_connection_params()).engine  # type: ignore[attr-defined]

    def _fingerprint(
        self, conn_params: dict[str, Any]
    ) -> tuple[PoolSettings, Hashable]:
        cached = self._fingerprint_cache
        # Backends hand back the same params dict while nothing they read changed
        # (pool settings, OPTIONS' contents): fingerprint it once.
        if cached is not None and cached[0] is conn_params:
            return cached[1], cached[2]
        settings = self.get_pool_settings()
        fingerprint = (self.pool_fingerprint(conn_params), settings)
        self._fingerprint_cache = (conn_params, settings, fingerprint)
        return settings, fingerprint

    def _get_lender(self, conn_params: dict[str, Any]) -> Lender:
        settings, fingerprint = self._fingerprint(conn_params)
        return registry.get_lender(
            self.alias,
            fingerprint,
            settings,
            lambda: self.make_pool_hooks(conn_params),
        )

    # -- connect and close ------------------------------------------------------------

    @async_unsafe
    def connect(self) -> None:
        """Borrow a connection from the pool (Django's ``connect()``, pooled).

        A wrapper that is not pooled (see :attr:`is_pooled`), or whose settings are
        not those of its alias's pool (see :meth:`shares_alias_pool`), connects as
        Django's wrapper does, outside the pool.
        """
        if self._parked:  # called directly, not by ensure_connection()
            self.close()
        elif self._loan.record is not None:
            # Called again while holding a connection: give that one back first,
            # or it would stay checked out for the life of the process.
            self._close()
        if not self.is_pooled or not self.shares_alias_pool(
            self.get_connection_params()  # type: ignore[attr-defined]
        ):
            self._connecting_unpooled = True
            try:
                return super().connect()  # type: ignore[misc, no-any-return]
            finally:
                self._connecting_unpooled = False
        # What follows is Django's BaseDatabaseWrapper.connect() (unchanged from 4.2
        # to 6.1), except that Django's setup of the connection runs only for a
        # connection the pool has just opened or fully reset (init_connection_state).
        if self.in_atomic_block and self.closed_in_transaction:
            # Django 5.1+ refuses this in ensure_connection(); 4.2 would connect anew
            # and carry on outside the transaction the block thinks it is in.
            raise ProgrammingError("Cannot open a new connection in an atomic block.")
        self.check_settings()  # type: ignore[attr-defined]
        self.in_atomic_block = False
        self.savepoint_ids: list[str] = []
        self.atomic_blocks: list[Any] = []
        self.needs_rollback = False
        self.health_check_enabled = self.settings_dict["CONN_HEALTH_CHECKS"]
        max_age = self.settings_dict["CONN_MAX_AGE"]
        self.close_at = None if max_age is None else time.monotonic() + max_age
        self.closed_in_transaction = False
        self.errors_occurred = False
        self.health_check_done = True
        self._loan.error = None
        conn_params = self.get_connection_params()  # type: ignore[attr-defined]
        made_with = self._made_with
        if made_with is None or not made_with.matches(self.settings_dict):
            self._made_with = SettingsSnapshot(self.settings_dict)
        self.connection = connection = self.get_new_connection(conn_params)  # type: ignore[attr-defined]
        # Django's set_autocommit(), minus what cannot apply to a connection that was
        # just borrowed (no atomic block, no health check due, and close() already
        # dropped the commit hooks), and minus the driver call when the connection
        # is already in that mode.
        autocommit = self.settings_dict["AUTOCOMMIT"]
        if self.connection_autocommit(connection) != autocommit:
            self._set_autocommit(autocommit)  # type: ignore[attr-defined]
        self.autocommit = autocommit
        self.run_commit_hooks_on_set_autocommit_on = False
        record = self._loan.record
        self._setting_up = record is not None and bool(record.info.get(INFO_NEW))
        self.checking_out = True
        try:
            try:
                self.init_connection_state()
            finally:
                self._setting_up = False
            if record is not None:
                record.info.pop(INFO_NEW, None)
            connection_created.send(sender=self.__class__, connection=self)
        finally:
            self.checking_out = False
        self.run_on_commit = []

    def _checked_out(self) -> None:
        # A parked connection taken back is a checkout too, though Django's
        # connect() does not run: what it would run on each checkout runs here. A
        # receiver that sets something per request finds it reset, never another
        # request's, as with Django's own pool. Their statements do not park it.
        self.checking_out = True
        try:
            self.init_connection_state()
            connection_created.send(sender=self.__class__, connection=self)
        finally:
            self.checking_out = False

    def init_connection_state(self) -> None:
        """Django's setup, in full for a connection the pool has just opened.

        Then :data:`~django_poolconf.signals.physical_connection_created` is sent,
        and the session as they leave it becomes the connection's baseline, which
        every reset restores. A connection that comes back from the pool already has
        its baseline: only a subclass's additions run (after ``super()``).
        """
        if not self._setting_up:
            if self._loan.record is None:  # not ours: Django's setup in full
                super().init_connection_state()  # type: ignore[misc]
            return
        super().init_connection_state()  # type: ignore[misc]
        physical_connection_created.send(sender=self.__class__, connection=self)
        self.note_session_baseline(self.connection)

    def checkout_connection(self, conn_params: dict[str, Any]) -> Any:
        """Check a driver connection out of the pool; vendors call it from ``get_new_connection()``.

        :raises PoolTimeout: when no connection is free within ``pool_timeout``.
        """
        lender = self._get_lender(conn_params)
        try:
            record = lender.borrow()
        except sa_exc.TimeoutError:
            settings = self.get_pool_settings()
            raise PoolTimeout(
                f"No connection for {self.alias!r} within {settings.pool_timeout} s "
                f"(pool_size={settings.pool_size}, max_overflow={settings.max_overflow})."
            ) from None
        except sa_exc.SQLAlchemyError:
            # Reconnecting failed its checks twice.
            raise ConnectionFailed(
                f"Could not get a working connection for {self.alias!r}: new "
                "connections failed their checks."
            ) from None
        loan = self._loan
        loan.lender = lender
        loan.record = record
        lender.lent(loan, record, self._thread_sharing_count > 0)
        return record.dbapi_connection

    def note_session_baseline(self, dbapi_connection: Any) -> None:
        """Remember the session as Django's setup left it: each reset restores it."""

    def _close(self) -> None:
        loan = self._loan
        record = loan.record
        if record is None:
            return super()._close()  # type: ignore[misc, no-any-return]
        self._end_scope()
        loan.record = None
        lender = loan.lender
        assert lender is not None
        dbapi_connection = self.connection
        # As in Django's own pool: this wrapper must never touch the connection again,
        # even when it is closed inside an atomic block.
        self.connection = None
        error = loan.error
        loan.error = None
        if lender.borrowed.pop(loan, None) is None:
            return  # returned by the reaper already: no longer this object's
        if error is None and not self.connection_is_broken(dbapi_connection):
            lender.checkin(record)
        elif error in (DISCONNECT, READ_ONLY):
            # Connections opened before this one went to the same server before the
            # same event: replace them too, as SQLAlchemy does on a disconnect.
            lender.discard(
                record,
                "the server closed it"
                if error == DISCONNECT
                else "a write reached a read-only server",
                older_too=True,
            )
        elif error == UNUSABLE:
            lender.discard(record, "it failed Django's health check")
        else:
            lender.discard(record, "it is broken")

    def note_pool_error(self, error: BaseException) -> str | None:
        """Remember how a driver error affects the borrowed connection (called by Django's error wrapper).

        Return the error's kind (:data:`DISCONNECT`, :data:`READ_ONLY`) or ``None``.
        """
        if self._loan.record is None:
            return None
        kind = self.classify_error(error)
        if kind == READ_ONLY and self.get_pool_settings().replica_of is not None:
            kind = None  # a replica is read-only by design
        if kind is not None and self._loan.error != DISCONNECT:
            self._loan.error = kind
        return kind

    @cached_property
    def wrap_database_errors(self) -> DatabaseErrorWrapper:
        """Django's error wrapper, which also classifies errors for the pool."""
        return _PoolErrorWrapper(self)

    def forget_inherited_connection(self) -> None:
        """Drop, without closing, a connection inherited from the parent across ``fork()``."""
        # The parent's open cursors are not the child's: they must not hold the
        # child's connections (transaction scope), nor run on the parent's.
        self._end_scope()
        if self._parked:
            # The lender kept the parent's parked entries (forget_fork_state): drop
            # the connection without touching the lender.
            self._parked = False
            self._conn = None
            return
        record = self._loan.record
        if record is None:
            return
        self._loan.record = None
        self.connection = None
        # Touch nothing of the parent's pool: another thread of the parent may have
        # held its lock at fork time, and it stays held in the child forever. Keep
        # the borrowed entry referenced, so that nothing ever returns it there.
        INHERITED.append(record)


def _in_event_loop() -> bool:
    """Whether this thread runs an event loop, as Django's ``async_unsafe`` decides it."""
    # asyncio's own test, without the exception get_running_loop() raises: this runs
    # once per request.
    if asyncio._get_running_loop() is None:
        return False
    return not os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")


class _Loan:
    """What a wrapper has borrowed: kept apart from the wrapper for its finalizer."""

    __slots__ = ("error", "lender", "record")

    def __init__(self) -> None:
        self.lender: Lender | None = None
        self.record: _ConnectionRecord | None = None
        self.error: str | None = None  # what the borrower's errors said of it

    def checkin_orphan(self) -> None:
        # Runs when the garbage collector frees the wrapper: in any thread, at any
        # allocation, maybe while that thread holds one of the pool's locks. So
        # nothing here takes a lock or talks to the server: the next checkout, a
        # waiter or the reaper gives the connection back (ORPHANS).
        self.record = None
        lender = self.lender
        if lender is None:
            return
        # Whoever pops the loan's entry returns the connection: not this finalizer
        # if the reaper did already, nor in a forked child (the entry is the parent's).
        entry = lender.borrowed.pop(self, None)
        if entry is not None:
            ORPHANS.append((lender, entry[0], self.error, entry[1]))
            return
        # Parked by a wrapper that will not be back for it (a thread that ended, a
        # request's own wrapper under ASGI): into the pool with it, where the most
        # recently used connection is lent first. One dict operation.
        record = lender.parked.take_back(self)
        if record is not None:
            ORPHANS.append((lender, record, PARKED, None))
