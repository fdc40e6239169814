"""The pool: one SQLAlchemy pool per engine, lent to Django's connections and checked on the way.

One concept per module, imported one way only (each imports only those above it)::

    hooks       ConnectionHooks (what a backend supplies) and the INFO_* record keys
    ownership   which process owns a record; a parent's records are kept, untouched
    waitline    the first-come, first-served line of waiting checkouts
    parking     records parked with their Django connection object between requests
    state       PoolState: a pool's idle, waiting and parked records and its counters,
                under one lock (the line and the parking lot are parts of it)
    sqla        the only module that touches SQLAlchemy's private pool internals,
                and LendingPool, the engine's pool class over the state
    orphans     connections left behind by borrowers, and the reaper thread
    policy      the checks on checkout and checkin (ping, reset), leak watch
    lender      Lender: checkout and return, the state's I/O (a CheckPolicy)
    listeners   the SQLAlchemy pool events of SQLAlchemy code's checkouts
    registry    one engine per alias per process: get_engine(), dispose_all(), fork

Import the public names from :mod:`django_poolconf`; this package imports nothing at
its top, so importing one of its modules imports no other.
"""
