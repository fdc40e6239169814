"""Django's own database tests, run against django-poolconf's backend.

``python3 dev.py django-tests`` runs :mod:`tests.django_suite.run`; see
``docs/testing.rst``.
"""
