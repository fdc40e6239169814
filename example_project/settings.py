"""Settings of the example project.

The databases come from the environment, as in a real deployment: ``DATABASE_URL``
names the primary and ``DATABASE_REPLICA_URLS`` its replicas (``run.py`` sets both
from the embedded cluster it starts). The primary becomes the alias ``"default"``, the
replica ``"replica1"``; the read/write router sends reads to the replica.
"""

from __future__ import annotations

import os
from pathlib import Path

import django_poolconf

BASE_DIR = Path(__file__).resolve().parent

# An example only: a real project reads its secret from the environment.
SECRET_KEY = os.environ.get(
    "DJANGO_SECRET_KEY", "django-insecure-poolconf-example-not-for-production"
)
DEBUG = True
ALLOWED_HOSTS = ["localhost", "127.0.0.1"]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django_poolconf",
    "example_project.notes",
]

MIDDLEWARE = [
    # First, so that every request routes from a fresh start and a write pins the client.
    "django_poolconf.middleware.ReadWriteMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "example_project.urls"
WSGI_APPLICATION = "example_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
    },
]

# Five connections per alias, five more under load. Options in a URL's query string
# (?pool_size=10) override these for that alias.
DATABASES = django_poolconf.databases_from_env(pool_size=5, max_overflow=5)

# Writes go to "default", reads to "replica1". After a write, the client's next
# requests read the primary until the replica has replayed that write (at most 15 s).
DATABASE_ROUTERS = ["django_poolconf.routers.ReadWriteRouter"]
POOLCONF = {"ROUTER": {"PIN_SECONDS": 15, "CAUSAL": True}}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    # Shows when each pool is created and disposed of.
    "loggers": {"django_poolconf": {"handlers": ["console"], "level": "INFO"}},
}
