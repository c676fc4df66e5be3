"""Fixtures of the data area."""
