"""Settings of the example project.

The databases come from the environment, as in a real deployment: ``DATABASE_URL``
names the primary and ``DATABASE_REPLICA_URLS`` its replicas (``run.py`` sets both
from the embedded cluster it starts). The primary becomes the alias ``"default"``, the
replica ``"replica1"``.
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
