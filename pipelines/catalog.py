"""A DuckDB file catalog over shard folders: views over the Parquet files, never copies.

Re-running `build_catalog` re-points the views at the folders' current files, so it is the
refresh. Data engineers query it with plain SQL:

    duckdb var/catalog.duckdb "SELECT source, split, task, count(*) FROM samples GROUP BY ALL"
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from pipelines.shards import MANIFEST, QUARANTINE, shard_files


def _sql_str(s: str) -> str:
    return "'" + str(s).replace("'", "''") + "'"


def build_catalog(db_path: str | Path, shard_dirs) -> list[dict]:
    """Create or refresh the views `samples`, `quarantine`, `manifests`; returns `summary()`."""
    dirs = [str(d) for d in shard_dirs]
    sample_parts, quarantine_parts, manifest_files = [], [], []
    for d in dirs:
        files = shard_files(d)
        name = Path(d.rstrip("/")).name
        if files:
            sample_parts.append(f"SELECT {_sql_str(name)} AS partition, * FROM read_parquet([{', '.join(map(_sql_str, files))}])")
        quarantine_parts.append(f"SELECT {_sql_str(name)} AS partition, * FROM read_parquet({_sql_str(d.rstrip('/') + '/' + QUARANTINE)})")
        manifest_files.append(d.rstrip("/") + "/" + MANIFEST)
    Path(db_path).parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(db_path))
    try:
        con.execute("BEGIN")
        empty = ("SELECT NULL::VARCHAR AS partition, NULL::VARCHAR AS sample_id, NULL::VARCHAR AS source, "
                 "NULL::VARCHAR AS split, NULL::VARCHAR AS task WHERE false")
        con.execute("CREATE OR REPLACE VIEW samples AS " + (" UNION ALL BY NAME ".join(sample_parts) or empty))
        con.execute("CREATE OR REPLACE VIEW quarantine AS " + (" UNION ALL ".join(quarantine_parts) or
                    "SELECT NULL::VARCHAR AS partition, NULL::VARCHAR AS source_file, NULL::VARCHAR AS record_id, NULL::VARCHAR AS reason WHERE false"))
        if manifest_files:
            con.execute("CREATE OR REPLACE VIEW manifests AS SELECT * FROM read_json_auto(["
                        + ", ".join(map(_sql_str, manifest_files)) + "], union_by_name = true, filename = true)")
        con.execute("COMMIT")
    finally:
        con.close()
    return summary(db_path)


def summary(db_path: str | Path) -> list[dict]:
    """Samples per source, split and task."""
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        rows = con.execute("SELECT source, split, task, count(*) AS samples FROM samples "
                           "GROUP BY ALL ORDER BY source, split, task").fetchall()
    finally:
        con.close()
    return [{"source": s, "split": sp, "task": t, "samples": n} for s, sp, t, n in rows]


def quarantine_summary(db_path: str | Path) -> list[dict]:
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        rows = con.execute("SELECT partition, reason, count(*) FROM quarantine GROUP BY ALL ORDER BY 3 DESC").fetchall()
    finally:
        con.close()
    return [{"partition": p, "reason": r, "records": n} for p, r, n in rows]


def format_table(rows: list[dict]) -> str:
    if not rows:
        return "(no samples)"
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    line = "  ".join(k.ljust(widths[k]) for k in keys)
    out = [line, "  ".join("-" * widths[k] for k in keys)]
    out += ["  ".join(str(r[k]).ljust(widths[k]) for k in keys) for r in rows]
    return "\n".join(out)
