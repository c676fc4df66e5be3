"""Shard parts as memory-mapped Arrow files, so a training process holds no copy of the data.

Parquet parts are compressed, so they cannot be mapped; each part is decoded ONCE into an
uncompressed Arrow IPC file in a local cache, named by the part's sha256 (from the partition's
manifest), and every later process maps it: opening costs no decoding, the pages are the OS's
page cache (shared by DDP ranks and DataLoader workers, dropped under memory pressure), and a
re-converted partition gets new files because its parts have new hashes.

Cache folder: $LUMEN_ARROW_CACHE, else $XDG_CACHE_HOME/lumen/arrow (~/.cache/lumen/arrow). A cache
disk that is full (or read-only) is one line naming the file and the variable; the partial file goes.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.errors import InputError
from pipelines.shards import read_manifest, read_verified, shard_files
from pipelines.tempdirs import StorageError, writing


def cache_root() -> Path:
    if os.environ.get("LUMEN_ARROW_CACHE"):
        return Path(os.environ["LUMEN_ARROW_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lumen" / "arrow"


def _part_hashes(shard_dir) -> dict[str, str]:
    """file name -> sha256 from the manifest (empty when there is none)."""
    try:
        manifest = read_manifest(shard_dir)
    except (FileNotFoundError, OSError, ValueError):
        return {}
    return {s["file"]: s["sha256"] for s in manifest.get("shards", []) if s.get("sha256")}


def arrow_files(shard_dirs, root: Path | None = None) -> list[Path]:
    """The local Arrow file of every part of these partitions, in part order (made where missing).

    Every part is checked against its manifest sha256 first, cached or not, so a flipped byte is
    one line naming the file (hashing costs far less than decoding)."""
    root = root or cache_root()
    out = []
    for d in shard_dirs:
        hashes = _part_hashes(d)
        for f in shard_files(d):
            fs, path = fsspec.core.url_to_fs(f)
            data = read_verified(fs, path, hashes.get(f.rsplit("/", 1)[-1]))
            digest = hashes.get(f.rsplit("/", 1)[-1]) or hashlib.sha256(data).hexdigest()
            target = root / digest[:2] / f"{digest}.arrow"
            if not target.is_file():
                _decode(data, f, target)
            out.append(target)
    return out


def _decode(data: bytes, url: str, target: Path) -> None:
    """Parquet part -> one uncompressed record batch in an Arrow file (written aside, then renamed,
    so a concurrent or killed writer never leaves a partial file under the final name)."""
    try:
        table = pq.read_table(pa.BufferReader(data)).combine_chunks()
    except (pa.ArrowException, OSError) as exc:  # checksum fine (or none), yet unreadable
        raise InputError(f"corrupt shard file {url}: {exc}") from None
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        with writing(target):  # a full or read-only cache disk: one line, not pyarrow's traceback
            target.parent.mkdir(parents=True, exist_ok=True)
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
            os.replace(tmp, target)
    except StorageError as exc:
        raise StorageError(f"{exc} (the Arrow cache of decoded shard parts: free space there, or set "
                           "LUMEN_ARROW_CACHE to a folder on a disk with room)") from None
    finally:
        tmp.unlink(missing_ok=True)


def open_mapped(path: Path) -> pa.Table:
    """The table of an Arrow file, its buffers pointing into the mapped file (nothing is copied)."""
    return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
