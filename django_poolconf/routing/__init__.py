"""Read/write splitting over replicas.

* :mod:`~django_poolconf.routing.scope`: the routing state of a request or task, and
  :func:`~django_poolconf.routing.scope.use_primary`, ``use_replica``, ``routing_scope``;
* :mod:`~django_poolconf.routing.replicas`: each replica's circuit breaker and lag;
* :mod:`~django_poolconf.routing.retry`: reads retried on the primary when their
  replica fails under them;
* :mod:`~django_poolconf.routing.router`: :class:`~django_poolconf.routers.ReadWriteRouter`;
* :mod:`~django_poolconf.routing.middleware`: :class:`~django_poolconf.middleware.ReadWriteMiddleware`.

The documented paths stay :mod:`django_poolconf.routers`,
:mod:`django_poolconf.middleware` and :mod:`django_poolconf.replicas`, which
re-export these. This package imports nothing itself, so importing one of its
modules loads only what that module needs.
"""
