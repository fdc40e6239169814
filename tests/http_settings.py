"""Settings of the example project under gunicorn, for ``tests/test_shutdown.py`` and ``tests/test_soak.py``.

The example's own settings (``DATABASE_URL``, pools of ``5 + 5``, the router, its
INFO log lines on ``django_poolconf``), without ``DEBUG``: a long load must not fill
Django's list of queries.
"""

from __future__ import annotations

from example_project.settings import *  # noqa: F403

DEBUG = False
