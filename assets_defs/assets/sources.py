"""Source files (one partition per source) -> shards per partition -> the DuckDB catalog.

Partitioned assets take a single-run backfill policy: one run can cover every partition (the
main job does), and a sensor or a person can still launch a single partition.
"""


import dagster as dg

from assets_defs.layout import fingerprint, partition_files
from assets_defs.logs import each_line_once
from assets_defs.metadata import png_markdown, table
from assets_defs.partitions import is_corrections, source_partitions
from assets_defs.resources import LumenPaths
from pipelines.catalog import build_catalog, quarantine_summary
from pipelines.shards import read_table

_POLICY = dg.BackfillPolicy.single_run()


@dg.asset(partitions_def=source_partitions, backfill_policy=_POLICY, group_name="data",
          description="Source files of one partition (a built-in source, or a pulled corrections version). "
                      "With no built-in source files present, the bundled demo sources are written.")
def source_data(context: dg.AssetExecutionContext, paths: LumenPaths) -> dg.MaterializeResult:
    for source in context.partition_keys:
        files = partition_files(paths.specs(source))
        if not is_corrections(source) and not all(f.exists() for f in files):
            from pipelines.sample_data import write_sample_data

            context.log.info("no %s files under %s: writing the demo sources (%d images)",
                             source, paths.sources, paths.demo_images)
            write_sample_data(paths.sources, n_images=paths.demo_images)
        missing = [str(f) for f in files if not f.exists()]
        if not files or missing:
            raise dg.Failure(f"missing source files for partition {source}: {missing or 'no input json found'}")
        rows = [{"file": str(f), "bytes": f.stat().st_size} for f in files]
        context.log.info("%s: %d source files, %d bytes", source, len(rows), sum(r["bytes"] for r in rows))
        context.add_asset_metadata({
            "files": table(rows), "bytes": sum(r["bytes"] for r in rows),
            "fingerprint": fingerprint(files),  # what the watched-folder sensor compares against
        }, partition_key=source)
    return dg.MaterializeResult()


@dg.asset(partitions_def=source_partitions, backfill_policy=_POLICY, deps=[source_data], group_name="data",
          description="Instruction + heatmap Parquet shards of one source partition, one folder per split.")
def shards(context: dg.AssetExecutionContext, paths: LumenPaths) -> dg.MaterializeResult:
    from pipelines.convert import convert_source

    with each_line_once("pipelines.convert"):  # convert_source logs each folder it writes; a note once
        for source in context.partition_keys:
            _shard_partition(context, paths, source, convert_source)
    return dg.MaterializeResult()


def _shard_partition(context: dg.AssetExecutionContext, paths: LumenPaths, source: str, convert_source) -> None:
    """Convert every folder of one partition; its counts become that partition's metadata."""
    counts, tasks, reasons, folders = [], [], [], []
    for spec in paths.specs(source):
        m = convert_source(spec.fmt, spec.input_path, spec.shard_dir, source_name=source,
                           input_size=paths.input_size, progress=False, **spec.options)
        c = m["counts"]
        counts.append({"split": spec.split, "format": spec.fmt, "records_read": c["records_read"],
                       "samples_written": c["samples_written"], "quarantined": c["records_quarantined"]})
        tasks += [{"split": spec.split, "task": t, "samples": n} for t, n in c["per_task"].items()]
        reasons += [{"split": spec.split, "reason": r, "records": n} for r, n in m["quarantine_reasons"].items()]
        folders.append(str(spec.shard_dir))
    context.add_asset_metadata({
        **{k: sum(r[k] for r in counts) for k in ("records_read", "samples_written", "quarantined")},
        "counts": table(counts),
        "samples_per_task": table(tasks),
        "quarantine_reasons": table(reasons) if reasons else dg.MetadataValue.md("no record quarantined"),
        "folders": dg.MetadataValue.md("\n".join(f"- `{f}`" for f in folders)),
        "preview": dg.MetadataValue.md(_preview_markdown(source, paths.specs(source)[0].shard_dir)),
    }, partition_key=source)


def _preview_markdown(source: str, shard_dir) -> str:
    """One instruction with its heatmap over the image, inline in the asset's metadata."""
    from pipelines.preview import render_preview

    table = read_table(shard_dir)
    rows = [r for r in table.slice(0, 64).to_pylist() if r["heatmap"] and r["boxes"]] or table.slice(0, 1).to_pylist()
    if not rows:
        return f"**{source}**: (no samples)"
    return f"**{source}**\n\n" + png_markdown(render_preview(rows[0]), f"{source} preview")


@dg.asset(deps=[shards], group_name="data", pool="catalog_writer",
          description="DuckDB catalog: views `samples`, `quarantine`, `manifests` over every shard folder. "
                      "Pool `catalog_writer` (limit 1): one writer at a time.")
def catalog(context: dg.AssetExecutionContext, paths: LumenPaths) -> dg.MaterializeResult:
    rows = build_catalog(paths.catalog_db, paths.shard_dirs())
    q = quarantine_summary(paths.catalog_db)
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(paths.catalog_db)),
        "samples": sum(r["samples"] for r in rows),
        "samples_per_source_split_task": table(rows),
        "quarantined": sum(r["records"] for r in q),
        "quarantine_reasons": table(q),
        "query": dg.MetadataValue.md("`.venv/bin/lumen catalog query \"SELECT source, split, task, count(*) FROM samples "
                                     f"GROUP BY ALL\" --db {paths.catalog_db}`"),
    })
