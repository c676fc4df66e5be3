"""Fixtures of the dagster area."""
