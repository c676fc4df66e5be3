"""Source files (one static partition per source) -> shards per partition -> the DuckDB catalog."""


import base64

import dagster as dg

from assets_defs.resources import LumenPaths
from pipelines.catalog import build_catalog, quarantine_summary
from pipelines.layout import SOURCES, convert_partition, source_files, source_specs
from pipelines.shards import read_table

source_partitions = dg.StaticPartitionsDefinition(list(SOURCES))


@dg.asset(partitions_def=source_partitions, group_name="data",
          description="Source files of one partition. With no files present, the bundled demo sources are written.")
def source_data(context: dg.AssetExecutionContext, paths: LumenPaths) -> dg.MaterializeResult:
    source = context.partition_key
    files = source_files(source, paths.sources)
    if not all(f.exists() for f in files):
        from pipelines.sample_data import write_sample_data

        context.log.info("no %s files under %s: writing the demo sources (%d images)", source, paths.sources, paths.demo_images)
        write_sample_data(paths.sources, n_images=paths.demo_images)
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise dg.Failure(f"missing source files for {source}: {missing}")
    return dg.MaterializeResult(metadata={
        "files": dg.MetadataValue.json([str(f) for f in files]),
        "bytes": sum(f.stat().st_size for f in files),
    })


@dg.asset(partitions_def=source_partitions, deps=[source_data], group_name="data",
          description="Instruction + heatmap Parquet shards of one source partition, one folder per split.")
def shards(context: dg.AssetExecutionContext, paths: LumenPaths) -> dg.MaterializeResult:
    source = context.partition_key
    manifests = convert_partition(source, paths.sources, paths.shards, input_size=paths.input_size)
    reasons: dict[str, int] = {}
    for m in manifests:
        for r, n in m["quarantine_reasons"].items():
            reasons[r] = reasons.get(r, 0) + n
    counts = {k: sum(m["counts"][k] for m in manifests) for k in ("records_read", "samples_written", "records_quarantined")}
    per_task: dict[str, int] = {}
    for m in manifests:
        for t, n in m["counts"]["per_task"].items():
            per_task[t] = per_task.get(t, 0) + n
    preview = _preview_markdown(source_specs(source, paths.sources)[0].shard_dir(paths.shards))
    return dg.MaterializeResult(metadata={
        **counts,
        "per_task": dg.MetadataValue.json(per_task),
        "quarantine_reasons": dg.MetadataValue.md(
            "| reason | records |\n|---|---|\n" + "".join(f"| {r} | {n} |\n" for r, n in reasons.items())
            if reasons else "no record quarantined"),
        "folders": dg.MetadataValue.json([str(s.shard_dir(paths.shards)) for s in source_specs(source, paths.sources)]),
        "preview": dg.MetadataValue.md(preview),
    })


def _preview_markdown(shard_dir) -> str:
    """One instruction with its heatmap over the image, inline in the asset's metadata."""
    from pipelines.preview import render_preview

    table = read_table(shard_dir)
    rows = [r for r in table.slice(0, 64).to_pylist() if r["heatmap"] and r["boxes"]] or table.slice(0, 1).to_pylist()
    if not rows:
        return "(no samples)"
    png = render_preview(rows[0])
    return f"![preview](data:image/png;base64,{base64.b64encode(png).decode()})"


@dg.asset(deps=[shards], group_name="data", pool="catalog_writer",
          description="DuckDB catalog: views `samples`, `quarantine`, `manifests` over every shard folder.")
def catalog(context: dg.AssetExecutionContext, paths: LumenPaths) -> dg.MaterializeResult:
    rows = build_catalog(paths.catalog_db, paths.shard_dirs())
    q = quarantine_summary(paths.catalog_db)
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(paths.catalog_db)),
        "samples": sum(r["samples"] for r in rows),
        "samples_per_source_split_task": dg.MetadataValue.md(
            "| source | split | task | samples |\n|---|---|---|---|\n"
            + "".join(f"| {r['source']} | {r['split']} | {r['task']} | {r['samples']} |\n" for r in rows)),
        "quarantined": sum(r["records"] for r in q),
    })
