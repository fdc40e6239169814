"""The settings a wrapper's pooled connection was made with, to see when they change.

Django reads a wrapper's ``settings_dict`` at every connect. A connection kept for the
wrapper between requests (parked) is taken back without a connect, so the wrapper
compares its settings with those it connected with first: any change (``NAME``,
``OPTIONS`` replaced or changed in place, ...) makes it connect anew, as Django would.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["SettingsSnapshot"]


class SettingsSnapshot:
    """Shallow copies of a ``settings_dict`` and of its ``OPTIONS``.

    :meth:`matches` runs on every take-back: two dict comparisons in C, without
    allocating. Values are compared with ``==`` (the same object is equal at once):
    a nested dict other than ``OPTIONS`` changed in place is not seen.
    """

    __slots__ = ("options", "settings")

    def __init__(self, settings_dict: Mapping[str, Any]) -> None:
        self.settings = dict(settings_dict)
        options = settings_dict.get("OPTIONS")
        self.options = None if options is None else dict(options)

    def matches(self, settings_dict: Mapping[str, Any]) -> bool:
        """Whether ``settings_dict`` holds the same values, ``OPTIONS``' included."""
        return self.settings == settings_dict and self.options == settings_dict.get(
            "OPTIONS"
        )
