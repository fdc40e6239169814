"""Settings of the worker processes of ``tests/tasks``: the test process's databases.

``POOLCONF_TEST_DATABASES`` holds the test process's ``DATABASES`` (its test database
names included) as JSON; this module starts no server.
"""

from __future__ import annotations

import json
import os

SECRET_KEY = "django-poolconf-tests"
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django_poolconf",
    "tests.testapp",
    "django_tasks_db",
]
DATABASES = json.loads(os.environ["POOLCONF_TEST_DATABASES"])
DATABASE_ROUTERS = [
    "tests.tasks.routers.TaskQueueRouter",
    "django_poolconf.routers.ReadWriteRouter",
]
POOLCONF = {"ROUTER": {"CHECK_INTERVAL": 0.1}}
TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
