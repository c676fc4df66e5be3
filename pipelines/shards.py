"""Shard files: zstd Parquet parts + manifest.json + quarantine.parquet in one folder per partition.

Writing goes to a temporary sibling folder that then replaces the old one, so a re-run never
leaves duplicates or a half-written partition. Reading accepts local paths or fsspec URLs.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.errors import InputError
from pipelines.schema import QUARANTINE_SCHEMA, SAMPLE_SCHEMA
from pipelines.tempdirs import OutputInUse, check_replaceable, publish_dir, staged, writing

MANIFEST = "manifest.json"
QUARANTINE = "quarantine.parquet"
PART_GLOB = "part-*.parquet"


# min/max statistics where readers filter (ids, task, split, sizes): not on PNG bytes, masks or
# per-instance lists, where they cost time and say nothing
_NESTED = {"heatmap", "masks", "ignore_masks", "boxes", "ignore_boxes", "keypoints", "centers", "sizes", "source_ids"}
# every value different: a dictionary would be tried, filled and thrown away
_UNIQUE = {"sample_id", "heatmap", "masks", "boxes", "centers", "sizes", "source_ids"}


def _write_parquet(table: pa.Table, path: Path) -> None:
    names = table.column_names
    pq.write_table(table, path, compression="zstd", compression_level=1, row_group_size=1024,
                   write_statistics=[c for c in names if c not in _NESTED],
                   use_dictionary=[c for c in names if c not in _UNIQUE], store_schema=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_partition(table: pa.Table, quarantine: pa.Table, manifest: dict, out_dir: str | Path,
                    rows_per_shard: int = 2048) -> dict:
    """Write one partition folder, replacing the old one; returns the manifest with shard hashes."""
    return write_partition_stream([table], lambda: (quarantine, manifest), out_dir, rows_per_shard)


def write_partition_stream(tables, finish, out_dir: str | Path, rows_per_shard: int = 2048) -> dict:
    """Write the rows of `tables` (an iterable, consumed once) as parts of `rows_per_shard` rows,
    then `finish()` -> (quarantine table, manifest); returns the manifest with shard hashes.

    Parts are cut by row count alone, so the files do not depend on how the rows were batched.
    Locally the folder is written beside the target and swapped in by rename, so readers see the
    old or the new partition, never a mix; whatever fails before the swap (`finish` included)
    leaves the old partition and no temporary folder. An fsspec URL (object storage has no
    rename) gets the new files uploaded under a temporary prefix first, then moved over the old ones.
    """
    fs, path = _fs_and_path(out_dir)
    if _is_local(fs):
        return _write_local(tables, finish, Path(path), rows_per_shard)
    check_partition_out(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = _write_local(tables, finish, Path(tmp) / "partition", rows_per_shard)
        staging = f"{path.rstrip('/')}.tmp-{os.getpid()}"
        fs.put(str(Path(tmp) / "partition"), staging, recursive=True)
        if fs.exists(path):
            fs.rm(path, recursive=True)
        fs.mv(staging, path, recursive=True)
    return manifest


def check_partition_out(out_dir: str | Path) -> None:
    """Refuse, before any work, an output folder that a partition may not replace (`tempdirs.check_replaceable`):
    only an empty folder or a partition of ours (a manifest listing its shards) is replaced."""
    fs, path = _fs_and_path(out_dir)
    if _is_local(fs):
        return check_replaceable(Path(path), "partition")
    if not fs.exists(path) or not fs.isdir(path) or not fs.ls(path):
        return
    try:
        ours = isinstance(json.loads(fs.cat_file(f"{path.rstrip('/')}/{MANIFEST}")).get("shards"), list)
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise OutputInUse(f"refusing to replace {out_dir} with a shard partition: it holds files this project did "
                          f"not write (no {MANIFEST} of a shard partition); give a new or empty folder")


def _parts(tables, rows_per_shard: int):
    """The rows of `tables` regrouped into contiguous tables of rows_per_shard rows (at least one part)."""
    pending, n, made = [], 0, 0
    for t in tables:
        t = t.cast(SAMPLE_SCHEMA)
        while t.num_rows:
            take = min(rows_per_shard - n, t.num_rows)
            pending.append(t.slice(0, take))
            n, t = n + take, t.slice(take)
            if n == rows_per_shard:
                yield pa.concat_tables(pending).combine_chunks()
                pending, n, made = [], 0, made + 1
    if pending or not made:
        yield pa.concat_tables(pending).combine_chunks() if pending else SAMPLE_SCHEMA.empty_table()


def _write_local(tables, finish, out: Path, rows_per_shard: int) -> dict:
    if rows_per_shard < 1:
        raise ValueError("rows_per_shard must be at least 1")
    # stale temp folders of killed runs go first, then `out` is checked; ours goes on any error (`finish` included)
    with staged(out, "partition") as tmp:
        manifest = _write_files(tables, finish, tmp, rows_per_shard)
        publish_dir(tmp, out, "partition")
    return manifest


def _write_files(tables, finish, tmp: Path, rows_per_shard: int) -> dict:
    shards, total = [], hashlib.sha256()
    for i, part in enumerate(_parts(tables, rows_per_shard)):
        name = f"part-{i:05d}.parquet"
        with writing(tmp / name):
            _write_parquet(part, tmp / name)
        digest = sha256_file(tmp / name)
        total.update(digest.encode())
        # the size lets a reader notice a truncated or replaced file without hashing it
        shards.append({"file": name, "rows": part.num_rows, "sha256": digest, "bytes": (tmp / name).stat().st_size})
    quarantine, manifest = finish()
    with writing(tmp / QUARANTINE):
        _write_parquet(quarantine.cast(QUARANTINE_SCHEMA), tmp / QUARANTINE)
    manifest = dict(manifest, shards=shards, content_hash=total.hexdigest())
    with writing(tmp / MANIFEST):
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def write_shards(rows, out_dir: str | Path, *, quarantine=None, manifest: dict | None = None,
                 rows_per_shard: int = 2048) -> dict:
    """Write sample rows (an Arrow table or a list of dicts in SAMPLE_SCHEMA) as a partition."""
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(list(rows), schema=SAMPLE_SCHEMA)
    if quarantine is None:
        quarantine = QUARANTINE_SCHEMA.empty_table()
    elif not isinstance(quarantine, pa.Table):
        quarantine = pa.Table.from_pylist(list(quarantine), schema=QUARANTINE_SCHEMA)
    return write_partition(table, quarantine, dict(manifest or {}), out_dir, rows_per_shard)


def _is_local(fs) -> bool:
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    return protocol in ("file", "local")


def _fs_and_path(path: str | Path):
    fs, p = fsspec.core.url_to_fs(str(path))
    return fs, p


def read_manifest(out_dir: str | Path) -> dict:
    fs, p = _fs_and_path(out_dir)
    with fs.open(f"{p.rstrip('/')}/{MANIFEST}", "r") as fh:
        return json.load(fh)


def _listed_shards(out_dir: str | Path) -> list[dict]:
    """The manifest's part files ({file, rows, sha256}): never a stray or half-written file beside them."""
    try:
        manifest = read_manifest(out_dir)
    except FileNotFoundError:
        raise InputError(f"not a shard folder (no {MANIFEST}): {out_dir}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"corrupt shard manifest {str(out_dir).rstrip('/')}/{MANIFEST}: {exc}") from None
    return manifest.get("shards", [])


def shard_files(out_dir: str | Path) -> list[str]:
    """The Parquet part files a partition's manifest lists, as URLs/paths pyarrow and duckdb can read."""
    fs, p = _fs_and_path(out_dir)
    files = [f"{p.rstrip('/')}/{s['file']}" for s in _listed_shards(out_dir)]
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    return files if _is_local(fs) else [f"{protocol}://{f}" for f in files]


def read_verified(fs, path: str, sha256: str | None) -> bytes:
    """A part file's bytes, checked against the manifest's sha256 (a flipped byte is one clear line)."""
    try:
        with fs.open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise InputError(f"shard file listed in its manifest is missing: {path}") from None
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        raise InputError(f"corrupt shard file {path}: its sha256 does not match the manifest (re-run the conversion)")
    return data


def check_parts(out_dir: str | Path, checksums: bool = False) -> None:
    """Every part file the manifest lists is there with its recorded size (manifests written before
    sizes were recorded: only there); with `checksums`, its sha256 matches too (reads every byte).
    A problem is one line naming the file."""
    fs, p = _fs_and_path(out_dir)
    for s in _listed_shards(out_dir):
        path = f"{p.rstrip('/')}/{s['file']}"
        try:
            size = fs.info(path)["size"]
        except FileNotFoundError:
            raise InputError(f"part file {path} listed in its manifest is missing (re-run the conversion)") from None
        if s.get("bytes") is not None and size != s["bytes"]:
            raise InputError(f"corrupt shard file {path}: {size} bytes, its manifest says {s['bytes']} "
                             "(re-run the conversion)")
        if checksums:
            read_verified(fs, path, s.get("sha256"))


def verify_shards(out_dir: str | Path) -> None:
    """Check every listed part file against the manifest's checksum."""
    fs, p = _fs_and_path(out_dir)
    for s in _listed_shards(out_dir):
        read_verified(fs, f"{p.rstrip('/')}/{s['file']}", s.get("sha256"))


def read_table(out_dirs, columns: list[str] | None = None) -> pa.Table:
    """All samples of one or more partitions as one Arrow table."""
    if isinstance(out_dirs, (str, Path)):
        out_dirs = [out_dirs]
    tables = []
    for d in out_dirs:
        fs, p = _fs_and_path(d)
        for s in _listed_shards(d):
            path = f"{p.rstrip('/')}/{s['file']}"
            data = read_verified(fs, path, s.get("sha256"))
            try:
                tables.append(pq.read_table(pa.BufferReader(data), columns=columns))
            except (pa.ArrowException, OSError) as exc:  # checksum fine, yet unreadable (e.g. no checksum)
                raise InputError(f"corrupt shard file {path}: {exc}") from None
    if not tables:
        schema = SAMPLE_SCHEMA if columns is None else pa.schema([SAMPLE_SCHEMA.field(c) for c in columns])
        return schema.empty_table()
    return pa.concat_tables(tables)


def read_quarantine(out_dir: str | Path) -> pa.Table:
    fs, p = _fs_and_path(out_dir)
    return pq.read_table(f"{p.rstrip('/')}/{QUARANTINE}", filesystem=fs)
