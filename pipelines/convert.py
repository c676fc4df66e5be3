"""Sources -> instruction + heatmap shards (`lumen convert`, the shards assets).

read (pipelines.sources) -> render targets and build the table (pipelines.sample_table, per unit in
pipelines.convert_parallel) -> write (pipelines.shards). Same input and options give byte-identical shards.

What a *record* is, per format (the unit `records_read` counts; each one ends up in the
`source_ids` of a sample or in a quarantine row, and `account` proves the sum before writing):

    coco            annotation `ann:<id>`; image no annotation refers to `img:<id>` (negatives only)
    coco-keypoints  annotation `ann:<id>`
    refcoco         sentence `ref:<ref_id>/sent:<sent_id>` of a ref in the split; a ref without
                    sentences `ref:<ref_id>`
    vqav2           question `q:<question_id>`
    llava           human->gpt turn `llava:<id>/turn:<k>`; an entry without turns `llava:<id>`

`sample_table.sample_id` hashes source, split, task, image and category id, the sorted source_ids and the
instruction (image and category tell negatives apart, which have no source record).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import replace
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.errors import InputError
from pipelines.images import ImageProblem, check_pixels
from pipelines.schema import SCHEMA_VERSION
from pipelines.convert_parallel import default_workers, unit_tables, usable_workers
from pipelines.shards import check_partition_out, write_partition_stream
from pipelines.sources.coco import plan_coco_instances, plan_coco_keypoints, read_coco_instances, read_coco_keypoints
from pipelines.sources.common import (Draft, RealPaths, ReadResult, SourcePlan, is_inside, plan_of, split_from_name,
                                      unsafe_image_name)
from pipelines.sources.llava import read_llava
from pipelines.sources.refcoco import read_refcoco
from pipelines.sources.vqa import read_vqav2
from pipelines.progress import progress as progress_bar

log = logging.getLogger(__name__)
FORMATS = ("coco", "coco-keypoints", "refcoco", "vqav2", "llava")
# formats whose samples have no heatmap: building their table costs less than shipping it to a worker
_IN_PROCESS = ("vqav2", "llava")
VERIFY_IMAGES_AUTO_LIMIT = 2000  # decode every image by default up to this many (about 10 s on one core)
LONG_TEXT_CHARS = 1000  # instructions/answers longer than this are counted and logged (training cuts them)


def read_source(fmt: str, input_path, *, images_dir=None, annotations=None, split=None, split_by="unc",
                negative_ratio=0.5, seed=0, paraphrase=False) -> ReadResult:
    if fmt == "coco":
        return read_coco_instances(input_path, images_dir=images_dir, negative_ratio=negative_ratio, seed=seed,
                                   paraphrase=paraphrase)
    if fmt == "coco-keypoints":
        return read_coco_keypoints(input_path, images_dir=images_dir, paraphrase=paraphrase, seed=seed)
    if fmt == "refcoco":
        return read_refcoco(input_path, split_by=split_by, split=split, images_dir=images_dir,
                            paraphrase=paraphrase, seed=seed)
    if fmt == "vqav2":
        return read_vqav2(input_path, annotations=annotations, images_dir=images_dir)
    if fmt == "llava":
        return read_llava(input_path, images_dir=images_dir)
    raise InputError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


def plan_source(fmt: str, input_path, *, images_dir=None, annotations=None, split=None, split_by="unc",
                negative_ratio=0.5, seed=0, paraphrase=False, verify_images=None,
                workers: int = 1, progress: bool = False) -> tuple[SourcePlan, bool]:
    """The source read and validated, its drafts built per unit (COCO files: per unit of images, so
    conversion workers share the per-image work); the other formats are read whole. Returns the plan
    and whether images are decoded.

    Every draft's image is checked (inside the images folder, there; decoded when `verify`): COCO's
    while its annotations are checked and, to decode it, in the unit that builds it (the drafts of
    one image are always in one unit, so a worker decodes it); the other formats' here, whole.
    COCO annotations are parsed and checked in `workers` processes.
    """
    if fmt in ("coco", "coco-keypoints"):
        plan_coco = plan_coco_instances if fmt == "coco" else plan_coco_keypoints
        extra = {"negative_ratio": negative_ratio} if fmt == "coco" else {}
        plan = plan_coco(input_path, images_dir=images_dir, seed=seed, paraphrase=paraphrase, workers=workers,
                         progress=progress, **extra)
        verify = verify_images
        if verify is None:
            verify = images_dir is not None and plan.images <= VERIFY_IMAGES_AUTO_LIMIT
        images_dir = Path(images_dir) if images_dir else None
        return replace(plan, build=partial(checked_unit, plan.build, str(input_path), images_dir, verify)), verify
    result = read_source(fmt, input_path, images_dir=images_dir, annotations=annotations, split=split,
                         split_by=split_by, negative_ratio=negative_ratio, seed=seed, paraphrase=paraphrase)
    result, verified = check_images(result, str(input_path), images_dir, verify_images)
    return plan_of(result), verified


def checked_unit(build, source_file: str, images_dir: Path | None, verify: bool, unit) -> tuple[list[Draft], list]:
    """`build(unit)`, then `check_images` over the unit's drafts (a module-level function, so it runs
    in the worker that builds the unit)."""
    drafts, quarantine = build(unit)
    if not verify:  # planning already checked each image's file (inside the folder, there): no decode asked
        return drafts, quarantine
    checked, _ = check_images(ReadResult(drafts, [], 0), source_file, images_dir, verify)
    return checked.drafts, quarantine + checked.quarantine


def _default_images_dir(fmt: str, input_path: Path) -> Path | None:
    """The bundled layout keeps images in <root>/coco/images beside every source folder."""
    for base in (input_path.parent, input_path.parent.parent, input_path.parent.parent.parent):
        for cand in (base / "images", base / "coco" / "images"):
            if cand.is_dir():
                return cand
    return None


def _image_problem(path: str, images_dir: Path | None, verify: bool, real_path: RealPaths) -> str | None:
    """Why a draft's image may not be used: outside the images folder (symlinks resolved), or (verify)
    not decodable to the end, e.g. a truncated JPEG that would otherwise train with a grey fill."""
    if images_dir is None:
        return unsafe_image_name(path)
    real, root = real_path(path), real_path(images_dir)
    if not is_inside(real, root):
        return f"image path outside the images folder: {path} resolves to {real}"
    if not verify:
        return None
    from PIL import Image

    try:
        check_pixels(real)  # from the header: an image too large to decode is refused before decoding it
        with Image.open(real) as im:
            im.load()  # a full decode: a truncated file fails here, not mid-training
    except ImageProblem as exc:
        return str(exc)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"image does not decode: {path} ({str(exc).splitlines()[0][:100]})"
    return None


def check_images(result: ReadResult, source_file: str, images_dir, verify: bool | None) -> tuple[ReadResult, bool]:
    """Quarantine every draft whose image fails `_image_problem` (with all its records); returns the
    result and whether images were decoded. `verify=None`: decode when there are few images."""
    images_dir = Path(images_dir) if images_dir else None
    paths = sorted({d.image_path for d in result.drafts})
    if verify is None:
        verify = images_dir is not None and len(paths) <= VERIFY_IMAGES_AUTO_LIMIT
    real_path = RealPaths()
    problems = {p: _image_problem(p, images_dir, verify, real_path) for p in paths}
    if not any(problems.values()):
        return result, verify
    kept, rows, seen = [], [], set()
    for d in result.drafts:
        why = problems[d.image_path]
        if why is None:
            kept.append(d)
            continue
        for rid in d.source_ids:  # detection and segmentation drafts share ids: quarantine each once
            if rid not in seen:
                seen.add(rid)
                rows.append((source_file, rid, why))
    log.warning("%d images quarantined (%s)", sum(1 for v in problems.values() if v),
                next(v for v in problems.values() if v))
    return ReadResult(kept, result.quarantine + rows, result.records_read), verify


def long_text_rows(table: pa.Table, limit: int = LONG_TEXT_CHARS) -> pa.Array:
    """Which rows have an instruction or answer longer than `limit` characters (the model cuts them)."""
    def longer(col):
        return pc.fill_null(pc.greater(pc.utf8_length(table[col]), limit), False)

    return pc.or_(longer("instruction"), longer("answer"))


def account(result: ReadResult) -> dict:
    """Prove every record read is in a sample's source_ids or in the quarantine (never both)."""
    in_samples = {rid for d in result.drafts for rid in d.source_ids}
    return check_accounting(in_samples, [rid for _, rid, _ in result.quarantine], result.records_read)


def check_accounting(in_samples: set, quarantined: list, records_read: int) -> dict:
    return _accounted(len(in_samples), in_samples & set(quarantined), len(quarantined), records_read)


def _accounted(n_in_samples: int, overlap, n_quarantined: int, records_read: int) -> dict:
    if overlap or n_in_samples + n_quarantined != records_read:
        raise RuntimeError(f"accounting bug: read {records_read}, in samples {n_in_samples}, "
                           f"quarantined {n_quarantined}, in both {sorted(overlap)[:5]}")
    return {"records_read": records_read, "records_in_samples": n_in_samples, "records_quarantined": n_quarantined}


class _Tally:
    """What the unit tables streaming past hold: record ids, samples per task, quarantine rows."""

    def __init__(self, plan: SourcePlan):
        self.records_read = plan.records_read
        self.quarantine = list(plan.quarantine)
        self._source_ids: list[pa.Array] = []  # every sample's record ids, kept in Arrow (C++ counts them)
        self.per_task: Counter = Counter()
        self.samples = 0
        self.long_samples, self.long_example = 0, None

    def watch(self, results, bar=None):
        for table, quarantine in results:
            self.quarantine += quarantine
            self._source_ids.append(pc.list_flatten(table["source_ids"]))
            for count in pc.value_counts(table["task"]).to_pylist():
                self.per_task[count["values"]] += count["counts"]
            self.samples += table.num_rows
            self._count_long(table)
            if bar is not None:
                bar.update(1)
            yield table

    def _count_long(self, table: pa.Table) -> None:
        long = long_text_rows(table)
        n = pc.sum(long).as_py() or 0
        if n and self.long_example is None:
            self.long_example = (table.filter(long)["source_ids"][0].as_py() or [])[:1]
        self.long_samples += n

    def long_texts(self) -> dict:
        if self.long_samples:
            log.warning("%d samples have an instruction or answer over %d characters (the model keeps only its first "
                        "tokens), e.g. %s", self.long_samples, LONG_TEXT_CHARS, self.long_example)
        return {"limit_chars": LONG_TEXT_CHARS, "samples": self.long_samples}

    def counts(self) -> dict:
        in_samples = pc.unique(pa.chunked_array(self._source_ids, pa.string()))
        quarantined = pa.array([rid for _, rid, _ in self.quarantine], pa.string())
        overlap = in_samples.filter(pc.is_in(in_samples, value_set=quarantined)).to_pylist()
        counts = _accounted(len(in_samples), overlap, len(quarantined), self.records_read)
        counts["samples_written"] = self.samples
        counts["per_task"] = dict(sorted(self.per_task.items()))
        return counts


def convert_source(fmt, input_path, out_dir, *, images_dir=None, annotations=None, split=None, split_by="unc",
                   source_name=None, input_size=448, heatmap_size=None, negative_ratio=0.5, seed=0,
                   rows_per_shard=2048, paraphrase=False, progress=True, workers=None, verify_images=None) -> dict:
    """Convert one source into a shard partition folder; returns its manifest.

    `workers` processes (default: every core) build and render the samples (and check their
    images); the shards are byte-identical whatever their number.
    """
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    input_path = Path(input_path)
    if not input_path.exists():
        raise InputError(f"{fmt}: input not found: {input_path}")
    heatmap_size = heatmap_size or input_size // 4
    _check_options(input_size, heatmap_size, negative_ratio, rows_per_shard)
    if workers is not None and not (isinstance(workers, int) and workers >= 1):
        raise InputError(f"workers must be an integer >= 1, got {workers!r}")
    check_partition_out(out_dir)  # a user's folder or a checkpoint as --out: refused before any work
    if images_dir is not None and not Path(images_dir).is_dir():  # else every record: "image not found"
        raise InputError(f"{fmt}: images folder not found: {images_dir}")
    if images_dir is None:
        images_dir = _default_images_dir(fmt, input_path)
        if images_dir is not None:
            log.info("images folder not given: using %s (records whose image is not there are quarantined)", images_dir)
    # llava has no splits; refcoco without --split converts the refs of every split
    split = split or ("all" if fmt in ("llava", "refcoco") else split_from_name(input_path))
    source = source_name or fmt
    workers = usable_workers(1 if fmt in _IN_PROCESS else (workers or default_workers()))
    plan, verified = plan_source(fmt, input_path, images_dir=images_dir, annotations=annotations,
                                 split=split if fmt == "refcoco" and split != "all" else None, split_by=split_by,
                                 negative_ratio=negative_ratio, seed=seed, paraphrase=paraphrase,
                                 verify_images=verify_images, workers=workers, progress=progress)
    tally = _Tally(plan)
    bar = progress_bar(total=len(plan.units), desc=f"convert {source}", unit="unit", enabled=progress)
    tables = tally.watch(unit_tables(plan, workers=workers, source=source, split=split, input_size=input_size,
                                     heatmap_size=heatmap_size), bar)

    def finish():
        bar.close()
        counts = tally.counts()
        quarantine = pa.table({"source_file": [q[0] for q in tally.quarantine],
                               "record_id": [q[1] for q in tally.quarantine],
                               "reason": [q[2] for q in tally.quarantine]})
        reasons = Counter(_reason_kind(q[2]) for q in tally.quarantine)
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "source": source,
            "format": fmt,
            "split": split,
            "inputs": {"input": str(input_path), "annotations": str(annotations) if annotations else None,
                       "images_dir": str(images_dir) if images_dir else None},
            "options": {"input_size": input_size, "heatmap_size": heatmap_size, "negative_ratio": negative_ratio,
                        "seed": seed, "split_by": split_by if fmt == "refcoco" else None, "paraphrase": paraphrase,
                        "rows_per_shard": rows_per_shard},
            "counts": counts,
            "quarantine_reasons": dict(reasons.most_common()),
            "images_verified": verified,
            "long_texts": tally.long_texts(),
        }
        return quarantine, manifest

    manifest = write_partition_stream(tables, finish, out_dir, rows_per_shard)
    counts = manifest["counts"]
    log.info("%s -> %s: %d records read, %d samples, %d quarantined", input_path, out_dir,
             counts["records_read"], counts["samples_written"], counts["records_quarantined"])
    return manifest


def _check_options(input_size, heatmap_size, negative_ratio, rows_per_shard) -> None:
    if not (isinstance(input_size, int) and input_size >= 4):
        raise InputError(f"input size must be an integer >= 4, got {input_size!r}")
    if not (isinstance(heatmap_size, int) and 1 <= heatmap_size <= input_size):
        raise InputError(f"heatmap size must be an integer in 1..{input_size}, got {heatmap_size!r}")
    if not negative_ratio >= 0:
        raise InputError(f"negative ratio must be >= 0, got {negative_ratio!r}")
    if not (isinstance(rows_per_shard, int) and rows_per_shard >= 1):
        raise InputError(f"rows per shard must be an integer >= 1, got {rows_per_shard!r}")


def _reason_kind(reason: str) -> str:
    """Group quarantine reasons without their ids, numbers and values, for summaries."""
    head = re.sub(r"\[[^\]]*\]|\([^)]*\)|'[^']*'", "", reason.split(":")[0])
    return " ".join(re.sub(r"\d+(?:\.\d+)?(?:x\d+)?", "", head).split())
