#!/usr/bin/env python
"""The example project's manage.py, for the servers ``run.py`` started.

``run.py`` prints the command line to use, with the two environment variables that
name its servers::

    DATABASE_URL=... DATABASE_REPLICA_URLS=... .venv/bin/python example_project/manage.py poolstatus
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    # The project is imported as example_project.*, from the repository root.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")
    if not os.environ.get("DATABASE_URL"):
        sys.exit(
            "DATABASE_URL is not set: start the example with `python3 dev.py example`,"
            " which prints the command line to use here."
        )
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
