"""Publishing a folder by rename, and cleaning up what a crash or a full disk left behind.

A writer builds `.NAME.tmp-PID` beside the target folder NAME and swaps it in: NAME moves to
`.NAME.old-PID`, the temp folder becomes NAME, the old one is deleted. Readers see the old or the
new folder, never a mix. On an error the writer deletes its temp folder; after a kill -9 the next
writer of NAME deletes the leftovers of processes that are gone (and puts an old folder back if
the kill fell between the two renames).

Only a folder this project wrote, of the same kind, is ever replaced (`check_replaceable`): a shard
partition by a partition, a checkpoint by a checkpoint. An `--out` that names a user's folder, or a
partition given to `lumen train`, is refused in one line before any work, never deleted.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
from pathlib import Path

from pipelines.errors import InputError, LumenError

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
    """Whether process `pid` runs. A zombie does not: a process killed with its parent is reparented to
    PID 1, and where PID 1 does not reap (containers, sandboxes) it stays a zombie that `kill(pid, 0)`
    still finds; a dead run must not keep its slot or its temp folder for that."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


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


# The folders this project publishes: the file that marks each kind, and what that file must say.
_KINDS = {
    "partition": ("manifest.json", lambda d: isinstance(d.get("shards"), list), "shard partition"),
    "checkpoint": ("config.json", lambda d: d.get("model_type") == "lumen", "model checkpoint"),
}


class OutputInUse(InputError):
    """The output folder holds something this writer may not replace (a user's files, another kind of output)."""


def folder_kind(path: Path) -> str | None:
    """"partition" or "checkpoint" when `path` is a folder this project wrote, else None (unreadable marks too)."""
    for kind, (mark, says_ours, _) in _KINDS.items():
        try:
            data = json.loads((Path(path) / mark).read_text())
        except (OSError, ValueError):  # absent, unreadable or not JSON: not a mark of ours
            continue
        if isinstance(data, dict) and says_ours(data):
            return kind
    return None


def check_replaceable(out: Path, kind: str) -> None:
    """Refuse, in one line naming it, an `out` that a `kind` output may not replace.

    Fine: no `out` yet, an empty folder, or a folder of the same kind this project wrote. Anything
    else would be deleted by the publish: a user's folder (`--out ~/mydata`), a file, or an output of
    the other kind (a partition given as a checkpoint's --out).
    """
    out = Path(out)
    what = _KINDS[kind][2]
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputInUse(f"refusing to write a {what} to {out}: it is a file, not a folder; "
                          "give a new or empty folder")
    if not any(out.iterdir()):
        return
    found = folder_kind(out)
    if found == kind:
        return
    holds = f"a {_KINDS[found][2]}" if found else (f"files this project did not write (no {_KINDS[kind][0]} "
                                                    f"of a {what})")
    raise OutputInUse(f"refusing to replace {out} with a {what}: it holds {holds}; give a new or empty folder, "
                      "or delete it yourself")


def publish_dir(tmp: Path, out: Path, kind: str) -> None:
    """Replace `out` by the complete folder `tmp` (two renames; see the module doc), if a `kind` may replace it."""
    check_replaceable(out, kind)
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
def staged(out: Path, kind: str):
    """A fresh temp folder beside `out` (stale leftovers cleaned first), deleted again on any error.

    `out` is checked first (`check_replaceable`), so a writer refuses before its work, not after."""
    out = Path(out)
    clean_stale(out)  # an interrupted swap is put back first: what it restores is what gets checked
    check_replaceable(out, kind)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_output_file(path: Path, flag: str = "--out") -> None:
    """Refuse, before any work, a results file path that cannot be written: a folder, or under a file."""
    path = Path(path)
    if path.is_dir():
        raise OutputInUse(f"{flag} {path} is a folder; give a file name for the results (e.g. {path / 'results.json'})")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputInUse(f"{flag} {path}: {parent} is a file, not a folder")
            break
