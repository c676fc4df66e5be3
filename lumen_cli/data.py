"""`lumen sample-data`, `lumen convert`, `lumen catalog`."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    _register_sample_data(sub)
    _register_convert(sub)
    _register_catalog(sub)


def _register_sample_data(sub) -> None:
    p = sub.add_parser("sample-data", help="write the bundled demo sources (COCO, RefCOCO, VQAv2, LLaVA layouts)",
                       description="Write a small deterministic demo data set in the sources' real on-disk layouts: "
                                   "DIR/coco/images, DIR/coco/annotations/{instances,person_keypoints}_{train,val}.json, "
                                   "DIR/refcoco/refs(unc).p + instances.json, DIR/vqa/v2_*_{train,val}_*.json, "
                                   "DIR/llava/llava_instruct.json, and an unlabeled pool DIR/coco/annotations/image_info_unlabeled.json "
                                   "(images only) whose true labels go to DIR/oracle/ for simulated labelers. Same seed -> byte-identical files; re-running "
                                   "into the same folder replaces the previous demo set. Prints the counts as JSON.")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write into (created)")
    p.add_argument("--images", type=int, default=400, metavar="N", help="number of images, about 20%% of them val (default: 400)")
    p.add_argument("--pool", type=int, default=None, metavar="N",
                   help="images in the unlabeled pool (default: as many as the train split; 0: none)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed; same seed -> identical files (default: 0)")
    p.set_defaults(func=_sample_data)


def _sample_data(args) -> int:
    from pipelines.sample_data import write_sample_data

    counts = write_sample_data(args.out, n_images=args.images, seed=args.seed, progress=True, pool=args.pool)
    print(json.dumps(counts, indent=2))
    return 0


def _register_convert(sub) -> None:
    from pipelines.convert import FORMATS

    p = sub.add_parser("convert", help="convert one source into instruction + heatmap shards",
                       description="Convert a COCO / COCO keypoints / RefCOCO / VQAv2 / LLaVA source into zstd Parquet "
                                   "shards with manifest.json and quarantine.parquet. Re-running replaces the folder.")
    p.add_argument("format", choices=FORMATS, help="source format")
    p.add_argument("--input", required=True, help="annotation file (refcoco: the folder with refs(<split_by>).p and instances.json)")
    p.add_argument("--images", help="image folder (default: <root>/coco/images or a sibling 'images' folder when present)")
    p.add_argument("--annotations", help="vqav2: the annotations json that goes with --input questions")
    p.add_argument("--split", help="split name (default: from the file name); refcoco: which refs' split to convert")
    p.add_argument("--split-by", default="unc", choices=("unc", "google", "umd"), help="refcoco: refs(<split_by>).p")
    p.add_argument("--source-name", help="partition name written in the `source` column (default: the format)")
    p.add_argument("--input-size", type=int, default=448, help="model input side S (default: 448; tiny preset: 128)")
    p.add_argument("--heatmap-size", type=int, help="heatmap side M (default: S/4)")
    p.add_argument("--negative-ratio", type=float, default=0.5, help="coco: negative (absent category) samples per positive")
    p.add_argument("--paraphrase", action="store_true", help="draw seeded paraphrases of the instructions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rows-per-shard", type=int, default=2048)
    p.add_argument("--workers", type=int, metavar="N",
                   help="processes that build and render samples (default: every core); the shards are "
                        "byte-identical whatever N")
    p.add_argument("--verify-images", action=argparse.BooleanOptionalAction, default=None,
                   help="decode every image, quarantining those that do not decode (default: on up to 2000 images)")
    p.add_argument("--out", required=True, help="partition folder to write (replaced atomically)")
    p.set_defaults(func=_convert)


def _convert(args) -> int:
    from pipelines.convert import convert_source

    manifest = convert_source(args.format, args.input, args.out, images_dir=args.images, annotations=args.annotations,
                              split=args.split, split_by=args.split_by, source_name=args.source_name,
                              input_size=args.input_size, heatmap_size=args.heatmap_size,
                              negative_ratio=args.negative_ratio, seed=args.seed, rows_per_shard=args.rows_per_shard,
                              paraphrase=args.paraphrase, workers=args.workers, verify_images=args.verify_images)
    print(json.dumps({"out": args.out, "counts": manifest["counts"], "quarantine_reasons": manifest["quarantine_reasons"]},
                     indent=2))
    return 0


def _register_catalog(sub) -> None:
    p = sub.add_parser("catalog", help="build/refresh the DuckDB catalog over shard folders, or query it",
                       description="Create or refresh DuckDB views (samples, quarantine, manifests) over shard folders:\n"
                                   "    lumen catalog var/shards/*/* --db var/catalog.duckdb\n"
                                   "Query it (read-only; no duckdb command needed):\n"
                                   "    lumen catalog query \"SELECT source, split, task, count(*) FROM samples GROUP BY ALL\"",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="+", metavar="DIR | query SQL", help="shard partition folders, or `query` and one SQL statement")
    p.add_argument("--db", default="var/catalog.duckdb", help="DuckDB file (default: var/catalog.duckdb)")
    p.add_argument("--eval-overlap", action="store_true",
                   help="also list training images whose content (SHA-256) is an image of a val/test split of these "
                        "folders: what `lumen train` refuses")
    p.add_argument("--verify-checksums", action="store_true",
                   help="also check every part file's sha256 against its manifest (reads every byte; without it "
                        "each listed part is checked to be there with its recorded size)")
    p.set_defaults(func=_catalog)


def _catalog(args) -> int:
    from pathlib import Path

    from pipelines.catalog import build_catalog, eval_overlap_report, format_table, quarantine_summary
    from pipelines.errors import InputError

    if args.dirs[0] == "query":
        return _query(args.db, " ".join(args.dirs[1:]))
    missing = [d for d in args.dirs if not (Path(d) / "manifest.json").is_file() and "://" not in d]
    if missing:
        raise InputError(f"not a shard folder (no manifest.json): {missing[0]}")
    rows = build_catalog(args.db, args.dirs, checksums=args.verify_checksums)
    print(format_table(rows))
    q = quarantine_summary(args.db)
    if q:
        print("\nquarantine:")
        print(format_table(q))
    if args.eval_overlap:
        overlap = eval_overlap_report(args.dirs)
        print(f"\neval overlap: {len(overlap)} training image(s) with the content of a val/test image")
        if overlap:
            print(format_table(overlap))
    print(f"\ncatalog: {args.db}  (try: lumen catalog query \"SELECT * FROM samples LIMIT 5\" --db {args.db})")
    return 0


def _query(db: str, sql: str) -> int:
    from pathlib import Path

    import duckdb

    from pipelines.catalog import connect, format_table
    from pipelines.errors import InputError

    if not sql.strip():
        raise InputError('lumen catalog query: give one SQL statement, e.g. "SELECT count(*) FROM samples"')
    if not Path(db).exists():
        raise InputError(f"no catalog at {db}: build it first with `lumen catalog DIR ... --db {db}`")
    with connect(db, read_only=True) as con:  # a folder or a file another process writes: one line
        try:
            cur = con.execute(sql)
        except duckdb.Error as e:
            raise InputError(f"query failed: {str(e).splitlines()[0]}") from None
        names = [d[0] for d in cur.description or []]
        rows = [dict(zip(names, r)) for r in cur.fetchall()]
    print(format_table(rows) if rows else "(no rows)")
    return 0
