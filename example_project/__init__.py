"""An example Django project on django-poolconf's pooled PostgreSQL backend."""
