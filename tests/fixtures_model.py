"""Fixtures of the model area."""
