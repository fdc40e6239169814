"""What a vendor backend and the pool agree on: the hooks and the record's ``info`` keys."""

from __future__ import annotations

from typing import Any, Final, Protocol

__all__ = [
    "INFO_BORROWED_AT",
    "INFO_FRESH",
    "INFO_HELD",
    "INFO_INVALIDATED",
    "INFO_NEW",
    "INFO_PID",
    "INFO_RETURNED_AT",
    "ConnectionHooks",
]

#: Keys this package keeps in a pooled connection's ``info`` dict.
INFO_NEW: Final = "django_poolconf.new"  # Django has not initialized it yet
INFO_RETURNED_AT: Final = "django_poolconf.returned_at"  # monotonic seconds
INFO_FRESH: Final = "django_poolconf.fresh"  # opened, not yet checked out
INFO_BORROWED_AT: Final = "django_poolconf.borrowed_at"  # monotonic seconds
INFO_HELD: Final = "django_poolconf.held"  # leak detection's record of the borrower
INFO_INVALIDATED: Final = "django_poolconf.invalidated"  # closing as unusable
INFO_PID: Final = "django_poolconf.pid"  # the process that opened it: its owner


class ConnectionHooks(Protocol):
    """What a vendor backend tells the registry about its driver connections."""

    dialect_url: str

    def connect(self) -> Any:
        """Open a new driver connection."""

    def closed_while_idle(self, dbapi_connection: Any) -> bool:
        """Whether the server visibly closed an idle connection: a local check, no round trip."""

    def ping(self, dbapi_connection: Any, timeout: float) -> bool:
        """Whether the server answers within ``timeout`` seconds."""

    def for_sqlalchemy(self, dbapi_connection: Any) -> None:
        """Prepare a connection checked out by SQLAlchemy code, not by Django."""

    def reset(self, dbapi_connection: Any, policy: str) -> bool:
        """Make a returned connection clean; return whether Django must set it up again.

        The reset may be sent without waiting for it: :meth:`complete_reset` collects
        it at the next checkout. Raise to have the connection closed instead of pooled.
        """

    def complete_reset(self, dbapi_connection: Any, timeout: float) -> bool | None:
        """Collect a reset sent on return, within ``timeout`` seconds.

        True when it is done (at once when none is outstanding), False when it failed,
        None when it did not finish in time: it stays outstanding.
        """

    async def async_connect(self) -> Any:
        """Open a new asyncio driver connection, for :func:`get_async_engine`."""
