"""Integrations with other Django apps, each importable only when that app is installed."""
