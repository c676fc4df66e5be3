"""Numbered version folders (`v0001`, `v0002`, ...) for checkpoints and predictions."""

from __future__ import annotations

import re
from pathlib import Path

_VERSION = re.compile(r"^v(\d{4,})$")


def versions(parent) -> list[str]:
    p = Path(parent)
    if not p.is_dir():
        return []
    return sorted((d.name for d in p.iterdir() if d.is_dir() and _VERSION.match(d.name)),
                  key=lambda n: int(n[1:]))


def next_version(parent) -> str:
    have = versions(parent)
    return f"v{(int(have[-1][1:]) + 1) if have else 1:04d}"
