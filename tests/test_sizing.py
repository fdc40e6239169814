"""Pool sizing: presets and calculate_pool_size(). Pure configuration: no database."""

from __future__ import annotations

import dataclasses
import os

import pytest

from django_poolconf.sizing import PRESETS, PoolSize, calculate_pool_size


def test_presets_are_exactly_the_documented_four():
    assert dict(PRESETS) == {
        "development": PoolSize(pool_size=5, max_overflow=5),
        "small_api": PoolSize(pool_size=10, max_overflow=10),
        "high_traffic": PoolSize(pool_size=20, max_overflow=30),
        "background_worker": PoolSize(pool_size=5, max_overflow=5),
    }


def test_auto_is_not_a_fixed_preset():
    assert "auto" not in PRESETS


@pytest.mark.parametrize(
    ("preset", "capacity"),
    [
        ("development", 10),
        ("small_api", 20),
        ("high_traffic", 50),
        ("background_worker", 10),
    ],
)
def test_preset_capacity(preset, capacity):
    assert PRESETS[preset].capacity == capacity


def test_pool_size_is_frozen():
    size = PoolSize(pool_size=1, max_overflow=1)

    with pytest.raises(dataclasses.FrozenInstanceError):
        size.pool_size = 2  # type: ignore[misc]


def test_pool_size_is_keyword_only():
    with pytest.raises(TypeError):
        PoolSize(1, 1)  # type: ignore[misc]


def test_production_with_four_cores_is_twelve_and_twelve():
    assert calculate_pool_size(environment="production", cpu_count=4) == PoolSize(
        pool_size=12, max_overflow=12
    )


@pytest.mark.parametrize(("cpu_count", "size"), [(1, 6), (2, 8), (16, 36)])
def test_production_is_twice_the_cores_plus_four(cpu_count, size):
    result = calculate_pool_size(environment="production", cpu_count=cpu_count)

    assert result == PoolSize(pool_size=size, max_overflow=size)


@pytest.mark.parametrize("environment", ["Production", " PRODUCTION ", "production\n"])
def test_production_ignores_case_and_surrounding_space(environment):
    assert calculate_pool_size(environment=environment, cpu_count=4).pool_size == 12


@pytest.mark.parametrize(
    "environment", ["", "development", "staging", "test", "prod", "production-eu"]
)
def test_non_production_is_five_and_five(environment):
    assert calculate_pool_size(environment=environment, cpu_count=64) == PoolSize(
        pool_size=5, max_overflow=5
    )


def test_production_without_cpu_count_uses_usable_cores():
    size = len(os.sched_getaffinity(0)) * 2 + 4

    assert calculate_pool_size(environment="production") == PoolSize(
        pool_size=size, max_overflow=size
    )


def test_environment_defaults_to_env_variable(monkeypatch):
    monkeypatch.setenv("ENV", "production")

    assert calculate_pool_size(cpu_count=4) == PoolSize(pool_size=12, max_overflow=12)


def test_env_variable_other_than_production_is_small(monkeypatch):
    monkeypatch.setenv("ENV", "staging")

    assert calculate_pool_size(cpu_count=4) == PoolSize(pool_size=5, max_overflow=5)


def test_missing_env_variable_is_small(monkeypatch):
    monkeypatch.delenv("ENV", raising=False)

    assert calculate_pool_size(cpu_count=4) == PoolSize(pool_size=5, max_overflow=5)


def test_explicit_environment_wins_over_env_variable(monkeypatch):
    monkeypatch.setenv("ENV", "production")

    assert calculate_pool_size(environment="development", cpu_count=4).pool_size == 5
