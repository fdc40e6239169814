"""A PostgreSQL server's replication status: one query, for the router and for /health/db.

Both ask the same question (how far behind is this replica?), so both send
:data:`STATUS_SQL` and read its answer the same way.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["STATUS_SQL", "read_status"]

#: One round trip, one row: ``in_recovery`` (bool), ``read_only`` (bool: the
#: session's ``transaction_read_only``), ``position`` (text LSN: the replayed
#: position on a standby, the insert position on a primary) and ``lag`` (seconds).
#:
#: The lag is 0 on a server that replays nothing (not in recovery). On a standby it
#: is 0 while it has replayed all it received *and* its WAL receiver is streaming
#: (an idle primary sends nothing, and the age of the last replayed transaction
#: would grow regardless); otherwise it is the age of the last transaction replayed,
#: which keeps growing while the standby is cut off from its primary. NULL when not
#: known (nothing replayed yet): callers count it as too far behind.
#:
#: The insert position, not ``pg_current_wal_lsn()`` (the write position): with
#: ``synchronous_commit=off`` a committed transaction's WAL may still sit in the WAL
#: buffers, behind the write position; it is always behind the insert position.
STATUS_SQL: Final = """
SELECT pg_is_in_recovery(),
       current_setting('transaction_read_only') = 'on',
       CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
            ELSE pg_current_wal_insert_lsn() END::text,
       CASE
         WHEN NOT pg_is_in_recovery() THEN 0
         WHEN pg_last_wal_replay_lsn() >= pg_last_wal_receive_lsn()
              AND EXISTS (SELECT 1 FROM pg_stat_wal_receiver
                          WHERE status IS NULL OR status = 'streaming')
           THEN 0
         ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8
       END
"""


def read_status(cursor: Any) -> tuple[bool, bool, str | None, float | None]:
    """:data:`STATUS_SQL`'s row, on a DB-API cursor of the server (the router's measurement)."""
    cursor.execute(STATUS_SQL)
    row = cursor.fetchone()
    assert row is not None
    in_recovery, read_only, position, lag = row
    return in_recovery, read_only, position, None if lag is None else float(lag)
