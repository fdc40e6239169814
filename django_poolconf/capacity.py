"""Capacity planning: kept for compatibility; see :mod:`django_poolconf.health.capacity`."""

from __future__ import annotations

from django_poolconf.health.capacity import (
    ServerCapacity,
    deployment_problems,
    plan_capacity,
)

__all__ = ["ServerCapacity", "deployment_problems", "plan_capacity"]
