"""Step logs without repeats: a library that logs the same line once per file it converts says it
once per step in the Dagster UI (e.g. "images folder not given: using ..." for each split)."""

from __future__ import annotations

import logging
from contextlib import contextmanager


class _FirstTimeOnly(logging.Filter):
    def __init__(self):
        super().__init__()
        self.seen: set[tuple[int, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.levelno, record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


@contextmanager
def each_line_once(*logger_names: str):
    """While inside, each distinct message of these loggers passes once."""
    once = _FirstTimeOnly()
    loggers = [logging.getLogger(n) for n in logger_names]
    for lg in loggers:
        lg.addFilter(once)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(once)
