"""Publishing a folder by rename, and cleaning up what a crash or a full disk left behind.

A writer builds `.NAME.tmp-PID` beside the target folder NAME and swaps it in: NAME moves to
`.NAME.old-PID`, the temp folder becomes NAME, the old one is deleted. Readers see the old or the
new folder, never a mix. On an error the writer deletes its temp folder; after a kill -9 the next
writer of NAME deletes the leftovers of processes that are gone (and puts an old folder back if
the kill fell between the two renames).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
from pathlib import Path

from pipelines.errors import LumenError

log = logging.getLogger(__name__)
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)$")


class StorageError(LumenError):
    """Writing failed for a reason of the disk (full, read-only, no permission), not of the input."""


def temp_sibling(out: Path, kind: str = "tmp") -> Path:
    return out.parent / f".{out.name}.{kind}-{os.getpid()}"


def is_leftover(path: Path) -> bool:
    """A temp or old folder of a publish (never a partition or checkpoint itself)."""
    return _LEFTOVER.match(Path(path).name) is not None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(out: Path) -> list[Path]:
    """Delete `.NAME.tmp-PID` / `.NAME.old-PID` beside `out` whose process is gone; returns them.

    An old folder with no NAME beside it is a swap cut short between its two renames: it is the
    last complete version, so it is put back instead.
    """
    out = Path(out)
    if not out.parent.is_dir():
        return []
    removed = []
    for p in sorted(out.parent.iterdir()):
        m = _LEFTOVER.match(p.name)
        if not m or m["name"] != out.name or int(m["pid"]) == os.getpid() or pid_alive(int(m["pid"])):
            continue
        if m["kind"] == "old" and not out.exists():
            p.rename(out)
            log.warning("restored %s from %s (a publish was cut short)", out, p.name)
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
        log.info("removed %s, left by process %s that is gone", p, m["pid"])
    return removed


def publish_dir(tmp: Path, out: Path) -> None:
    """Replace `out` by the complete folder `tmp` (two renames; see the module doc)."""
    old = temp_sibling(out, "old")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def writing(path: Path):
    """Turn a disk error while writing `path` into one line that names it (the caller cleans up).

    torch and safetensors report a full disk as their own RuntimeError without an errno, so a
    failed write on a disk with (almost) no free space left counts as "no space left" too.
    """
    try:
        yield
    except Exception as exc:
        reason = _disk_reason(exc, Path(path))
        if reason is None:
            raise
        raise StorageError(f"cannot write {path}: {reason}") from None


def _disk_reason(exc: Exception, path: Path) -> str | None:
    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
        return os.strerror(code)
    if "No space left" in str(exc):
        return os.strerror(errno.ENOSPC)
    if isinstance(exc, (OSError, RuntimeError)) or type(exc).__name__ == "SafetensorError":
        try:
            free = shutil.disk_usage(path.parent).free
        except OSError:
            return None
        if free < (1 << 20):
            return f"{os.strerror(errno.ENOSPC)} ({free} bytes free)"
    return None


@contextlib.contextmanager
def staged(out: Path):
    """A fresh temp folder beside `out` (stale leftovers cleaned first), deleted again on any error."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out)
    tmp = temp_sibling(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
