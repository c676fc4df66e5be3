"""A DuckDB file catalog over shard folders: views over the Parquet files, never copies.

Re-running `build_catalog` re-points the views at the folders' current files, so it is the
refresh. The `samples` view reads only the part files a partition's manifest lists (read at query
time, so a re-converted folder shows without a refresh; a stray or half-written file beside them
is never counted). Building checks that every listed part is there with its recorded size, and
with `checksums=True` (`lumen catalog --verify-checksums`) also its sha256, which reads every byte.
Data engineers query it with plain SQL:

    duckdb var/catalog.duckdb "SELECT source, split, task, count(*) FROM samples GROUP BY ALL"
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

import duckdb
import fsspec

from pipelines.errors import InputError
from pipelines.shards import MANIFEST, PART_GLOB, QUARANTINE, check_parts, shard_files
from pipelines.tempdirs import is_leftover


def _sql_str(s: str) -> str:
    return "'" + str(s).replace("'", "''") + "'"


def partition_names(shard_dirs) -> list[str]:
    """A readable, unique name per folder: its path below the folders' common parent
    (`coco-train` for flat folders, `coco/train` for the source/split layout)."""
    parts = [PurePosixPath(str(d).rstrip("/").split("://")[-1]).parts for d in shard_dirs]
    if len(parts) == 1:
        return [parts[0][-1]]
    common = 0
    while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    return ["/".join(p[common:]) for p in parts]


def connect(db_path: str | Path, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """A connection to the catalog file; a folder, a file another process holds, or a file that is
    no DuckDB database is one line."""
    db = Path(db_path)
    if db.is_dir():
        raise InputError(f"catalog {db} is a folder, not a DuckDB file; give a file path such as {db / 'catalog.duckdb'}")
    try:
        if not read_only:
            db.parent.mkdir(parents=True, exist_ok=True)
        return duckdb.connect(str(db), read_only=read_only)
    except (duckdb.Error, OSError) as exc:
        raise InputError(_open_error(db, exc)) from None


def _open_error(db: Path, exc: Exception) -> str:
    text = str(exc)
    if "Could not set lock" in text:  # DuckDB: one writer process, or any number of read-only ones
        holder = re.search(r"held in (.+?) \(PID (\d+)\)", text)
        who = f"process {holder[2]} ({holder[1]})" if holder else "another process"
        return (f"catalog {db} is in use by {who}; close it (or wait for it to finish), then re-run "
                "(DuckDB lets one process write a file, or several read it)")
    return f"cannot open catalog {db}: {_first_line(exc)}"


def _samples_sql(name: str, d: str) -> str:
    """A partition's rows from the part files its manifest lists, read at query time (a stray
    file matched by the glob is filtered out by name)."""
    listed = (f"SELECT unnest(shards).file FROM read_json({_sql_str(d + '/' + MANIFEST)}, "
              "columns = {'shards': 'STRUCT(file VARCHAR)[]'})")
    return (f"SELECT {_sql_str(name)} AS partition, * EXCLUDE (_part_file) FROM "
            f"read_parquet({_sql_str(d + '/' + PART_GLOB)}, filename = '_part_file') "
            f"WHERE parse_filename(_part_file) IN ({listed})")


def build_catalog(db_path: str | Path, shard_dirs, checksums: bool = False) -> list[dict]:
    """Create or refresh the views `samples`, `quarantine`, `manifests`; returns `summary()`.

    `samples` reads the part files each manifest lists (see the module doc), so a re-converted
    folder shows its new files without a refresh; re-running picks up added or removed folders.
    A folder is only ever published whole (pipelines.tempdirs), and the temp folders beside it are
    refused here. Every listed part must be there with its recorded size (and, with `checksums`,
    its sha256): a missing or damaged one is one line naming the partition and the file.
    """
    dirs = [str(d).rstrip("/") for d in shard_dirs]
    for d in dirs:
        fs, path = fsspec.core.url_to_fs(d)
        if not fs.exists(f"{path}/{MANIFEST}"):
            raise InputError(f"not a shard folder (no {MANIFEST}): {d}")
        if is_leftover(PurePosixPath(path)):
            raise InputError(f"not a shard folder (the temp folder of a conversion): {d}")
    names = partition_names(dirs)
    if len(set(names)) != len(names):
        raise InputError(f"shard folders given twice: {sorted(n for n in names if names.count(n) > 1)[0]}")
    sample_parts, quarantine_parts = [], []
    for d, name in zip(dirs, names):
        try:
            check_parts(d, checksums=checksums)
        except InputError as exc:
            raise InputError(f"partition {name}: {exc}") from None
        fs, path = fsspec.core.url_to_fs(d)
        if not fs.exists(f"{path}/{QUARANTINE}"):
            raise InputError(f"partition {name}: {d}/{QUARANTINE} is missing (re-run the conversion)")
        if shard_files(d):
            sample_parts.append(_samples_sql(name, d))
        quarantine_parts.append(f"SELECT {_sql_str(name)} AS partition, * FROM read_parquet({_sql_str(d + '/' + QUARANTINE)})")
    con = connect(db_path)
    try:
        con.execute("BEGIN")
        con.execute("CREATE OR REPLACE VIEW samples AS " + (" UNION ALL BY NAME ".join(sample_parts) or _EMPTY_SAMPLES))
        con.execute("CREATE OR REPLACE VIEW quarantine AS " + (" UNION ALL ".join(quarantine_parts) or _EMPTY_QUARANTINE))
        if dirs:
            files = ", ".join(_sql_str(d + "/" + MANIFEST) for d in dirs)
            con.execute(f"CREATE OR REPLACE VIEW manifests AS SELECT * FROM read_json_auto([{files}], "
                        "union_by_name = true, filename = true)")
        else:
            con.execute("CREATE OR REPLACE VIEW manifests AS SELECT NULL::VARCHAR AS source WHERE false")
        con.execute("COMMIT")
    except duckdb.Error as exc:  # e.g. a part file replaced by one of another schema
        raise InputError(f"cannot build the catalog {db_path}: {_first_line(exc)}") from None
    finally:
        con.close()
    return summary(db_path)


def _first_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _query(db_path, sql: str) -> list[tuple]:
    """Rows of a read-only query; a part file DuckDB cannot read is one line."""
    con = connect(db_path, read_only=True)
    try:
        return con.execute(sql).fetchall()
    except duckdb.Error as exc:
        raise InputError(f"reading the catalog {db_path} failed: {_first_line(exc)} (a part file changed since the "
                         "catalog was built? `lumen catalog DIR ... --verify-checksums` names a damaged one)") from None
    finally:
        con.close()


_EMPTY_SAMPLES = ("SELECT NULL::VARCHAR AS partition, NULL::VARCHAR AS sample_id, NULL::VARCHAR AS source, "
                  "NULL::VARCHAR AS split, NULL::VARCHAR AS task WHERE false")
_EMPTY_QUARANTINE = ("SELECT NULL::VARCHAR AS partition, NULL::VARCHAR AS source_file, NULL::VARCHAR AS record_id, "
                     "NULL::VARCHAR AS reason WHERE false")


def summary(db_path: str | Path) -> list[dict]:
    """Samples per source, split and task."""
    rows = _query(db_path, "SELECT source, split, task, count(*) AS samples FROM samples "
                           "GROUP BY ALL ORDER BY source, split, task")
    return [{"source": s, "split": sp, "task": t, "samples": n} for s, sp, t, n in rows]


def quarantine_summary(db_path: str | Path) -> list[dict]:
    rows = _query(db_path, "SELECT partition, reason, count(*) FROM quarantine GROUP BY ALL ORDER BY 3 DESC")
    return [{"partition": p, "reason": r, "records": n} for p, r, n in rows]


def eval_overlap_report(shard_dirs) -> list[dict]:
    """Training images of these folders whose content is an image of their val/test splits
    (pipelines/leakage.py): what `lumen train` refuses."""
    from pipelines.leakage import find_eval_overlap

    return [{"train_image": o.train_image, "eval_image": o.eval_image, "eval_in": o.eval_in}
            for o in find_eval_overlap(shard_dirs, shard_dirs)]


def format_table(rows: list[dict]) -> str:
    if not rows:
        return "(no samples)"
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    line = "  ".join(k.ljust(widths[k]) for k in keys)
    out = [line, "  ".join("-" * widths[k] for k in keys)]
    out += ["  ".join(str(r[k]).ljust(widths[k]) for k in keys) for r in rows]
    return "\n".join(out)
