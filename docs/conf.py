"""Sphinx configuration for django-poolconf's documentation.

Build with warnings as errors::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

Links to the Django, SQLAlchemy, psycopg and Python docs (intersphinx) need the
network, so they are off unless ``DOCS_INTERSPHINX=1`` is set in the environment.
Without them the build is the same, with those names printed as code, not links.
"""

from __future__ import annotations

import os
import pathlib
import sys
from importlib import metadata

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# autodoc imports django_poolconf, which imports parts of Django that read settings.
# Never let an inherited DJANGO_SETTINGS_MODULE point them at tests.settings: importing
# it starts the test suite's database servers. These settings open no connection.
os.environ.pop("DJANGO_SETTINGS_MODULE", None)

import django  # noqa: E402
from django.conf import settings  # noqa: E402

if not settings.configured:
    settings.configure(
        INSTALLED_APPS=["django_poolconf"],
        DATABASES={},
        USE_TZ=True,
    )
django.setup()

try:
    from django_poolconf import __version__ as release
except ImportError:  # pragma: no cover - the package is not importable from here
    release = metadata.version("django-poolconf")

project = "django-poolconf"
author = "django-poolconf developers"
copyright = "django-poolconf developers"
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
]

exclude_patterns = ["_build"]
root_doc = "index"
default_role = "literal"

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# django_poolconf.tasks.celery imports Celery, which the docs do not install.
autodoc_mock_imports = ["celery"]

# Off by default: this machine, and many CI runners, cannot fetch the inventories,
# and a failed fetch is a warning, which -W turns into a failed build.
intersphinx_timeout = 1
intersphinx_mapping: dict[str, tuple[str, str | None]] = {}
if os.environ.get("DOCS_INTERSPHINX") == "1":
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3/", None),
        "django": (
            "https://docs.djangoproject.com/en/stable/",
            "https://docs.djangoproject.com/en/stable/_objects/",
        ),
        "sqlalchemy": ("https://docs.sqlalchemy.org/en/20/", None),
        "psycopg": ("https://www.psycopg.org/psycopg3/docs/", None),
    }

html_theme = "alabaster"
html_title = f"django-poolconf {release}"
