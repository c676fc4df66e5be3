"""Progress that suits where the output goes: a bar on a terminal, a log line every few seconds elsewhere.

A tqdm bar redraws itself with carriage returns; in a file (the main command's log, a Dagster
step's stderr, CI) every redraw stays, which made 300 KB lines. Off a terminal this logs one plain
line every `every_s` seconds (and one at the end) through `logging`, which Dagster captures; with a
known total each line says about how long is left, at the rate so far.
"""

from __future__ import annotations

import logging
import sys
import time

from tqdm import tqdm

log = logging.getLogger("lumen.progress")


class LogProgress:
    """The part of tqdm's interface the project uses (update, set_postfix, close, iteration)."""

    def __init__(self, iterable=None, total=None, desc="", unit="it", initial=0, every_s=10.0):
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n, self.every_s, self.postfix = initial, every_s, ""
        self.t0 = self.last = time.monotonic()
        self.start_n = initial
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            self.total = len(iterable)

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            self._emit()

    def close(self) -> None:
        if self.n != getattr(self, "_closed_at", None):
            self._closed_at = self.n
            self._emit()

    def _emit(self) -> None:
        elapsed = time.monotonic() - self.t0
        rate = (self.n - self.start_n) / elapsed if elapsed > 0 else 0.0
        of = f"/{self.total}" if self.total else ""
        extra = f" ({self.postfix})" if self.postfix else ""
        log.info("%s: %d%s %s, %.1f %s/s, %s elapsed%s%s", self.desc, self.n, of, self.unit, rate, self.unit,
                 duration(elapsed), self._left(rate), extra)

    def _left(self, rate: float) -> str:
        """`, about 12 min left` at the rate so far (nothing without a total or a rate; `done` at the end)."""
        if not self.total:
            return ""
        if self.n >= self.total:
            return ", done"
        if rate <= 0:
            return ""
        return f", about {duration((self.total - self.n) / rate)} left"


def duration(seconds: float) -> str:
    """45 s, 12 min, 1 h 05 min: as a person reads a time left."""
    s = int(round(seconds))
    if s < 90:
        return f"{s} s"
    if s < 3600:
        return f"{round(s / 60)} min"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def progress(iterable=None, *, total=None, desc="", unit="it", enabled=True, initial=0, every_s=10.0):
    """tqdm on a terminal; a log line every `every_s` seconds otherwise; nothing when not `enabled`."""
    if not enabled:
        return tqdm(iterable, total=total, disable=True)
    if sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True)
    return LogProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, every_s=every_s)
