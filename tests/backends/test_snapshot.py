"""The settings a pooled connection was made with (in process, no server)."""

from __future__ import annotations

from typing import Any

from django_poolconf.backends.snapshot import SettingsSnapshot


def _settings() -> dict[str, Any]:
    return {"NAME": "app", "OPTIONS": {"sslmode": "prefer"}, "TEST": {"NAME": None}}


def test_the_same_settings_match():
    settings_dict = _settings()
    snapshot = SettingsSnapshot(settings_dict)

    assert snapshot.matches(settings_dict)
    assert snapshot.matches(_settings())  # equal values, other objects


def test_a_key_changed_in_place_does_not_match():
    settings_dict = _settings()
    snapshot = SettingsSnapshot(settings_dict)
    settings_dict["NAME"] = "other"

    assert not snapshot.matches(settings_dict)


def test_options_changed_in_place_do_not_match():
    settings_dict = _settings()
    snapshot = SettingsSnapshot(settings_dict)
    settings_dict["OPTIONS"]["assume_role"] = "tenant"

    assert not snapshot.matches(settings_dict)


def test_options_replaced_with_others_do_not_match():
    settings_dict = _settings()
    snapshot = SettingsSnapshot(settings_dict)
    settings_dict["OPTIONS"] = {"sslmode": "require"}

    assert not snapshot.matches(settings_dict)


def test_settings_without_options():
    snapshot = SettingsSnapshot({"NAME": "app"})

    assert snapshot.matches({"NAME": "app"})
    assert not snapshot.matches({"NAME": "app", "OPTIONS": {}})
