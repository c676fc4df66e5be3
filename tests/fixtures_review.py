"""Fixtures of the review area."""
