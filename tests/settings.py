"""Settings for django-poolconf's test suite."""

from __future__ import annotations

from tests.servers import databases

SECRET_KEY = "django-poolconf-tests"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "localhost"]
USE_TZ = True
TIME_ZONE = "UTC"

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django_poolconf",
    "tests.testapp",
]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "tests.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

DATABASES = databases()
# For the router's tests: a second primary with two replicas, on the same servers
# and, in tests, the same database.
DATABASES["analytics"] = {**DATABASES["default"], "TEST": {"MIRROR": "default"}}
for _alias in ("analytics_replica", "analytics_replica2"):
    DATABASES[_alias] = {
        **DATABASES["replica"],
        "REPLICA_OF": "analytics",
        "TEST": {"MIRROR": "default"},
    }
# A database on another backend, which django-poolconf leaves alone.
DATABASES["plain"] = {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"null": {"class": "logging.NullHandler"}},
    # Views in these tests raise on purpose; keep their tracebacks off stderr.
    "loggers": {"django.request": {"handlers": ["null"], "propagate": True}},
}
