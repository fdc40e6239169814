"""Read-your-writes for background tasks.

A request writes, then enqueues a task that reads what it wrote; the task runs in
another process, maybe before the replicas have replayed the write. The task carries
the primary's WAL position from its enqueue, and its reads go to a replica only once
that replica has replayed it, as GitLab's load balancer does for Sidekiq jobs.

* :mod:`~django_poolconf.tasks.positions`: the positions recorded at enqueue time,
  and the routing scope a task runs in;
* :mod:`~django_poolconf.tasks.celery`: Celery, through its signals;
* :mod:`~django_poolconf.tasks.django_tasks`: Django's tasks framework
  (``django.tasks``, or the ``django-tasks`` backport before Django 6.0).

This package imports nothing itself: the Celery module is loaded only where Celery
is used.
"""
