"""The unlabeled pool in partitions of a bounded size: which image is pseudo-labelled in which step.

The rule. An image's partition is decided once, the first time a plan sees it, and never changes:
the images new to a plan are ordered by a hash of their file name (so the order of the pool file
does not matter) and fill NEW partitions of at most `max_size` images (`pool-0000`, `pool-0001`,
...). A partition already planned is never grown or shrunk, so a partition that was labeled stays
labeled when the pool grows, and a growing pool only adds partitions. The plan is its own state:
re-planning with no new image writes nothing (idempotent).

The plan (a folder, `<data root>/pool_plan`):
- `partitions/<key>.json`: the partition's images in COCO image_info layout (images + categories),
  what `lumen predict --annotations` reads; written once, by rename;
- `assignments.parquet`: file_name, image_id, partition, source_file of every planned image;
- `quarantine.parquet`: source_file, record_id, reason of every record not planned (why);
- `manifest.json`: the partitions with their sizes, the pool files read and their fingerprints.

The pool files are read a chunk of images at a time (`pipelines.sources.json_stream`): 123k images
plan in seconds and a fraction of a GB.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.errors import InputError
from pipelines.sources.common import unsafe_image_name
from pipelines.sources.json_stream import stream_object_array

PREFIX = "pool-"
MAX_SIZE = 1000  # images per partition: a step of minutes on a GPU worker, so a lost one costs little
MANIFEST, ASSIGNMENTS, QUARANTINE, PARTITIONS_DIR = "manifest.json", "assignments.parquet", "quarantine.parquet", "partitions"


def partition_key(index: int) -> str:
    return f"{PREFIX}{index:04d}"


def is_pool_partition(key: str) -> bool:
    return key.startswith(PREFIX) and key[len(PREFIX):].isdigit()


def name_hash(file_name: str) -> int:
    """The order new images fill partitions in: independent of the pool file's order and of the machine."""
    return int.from_bytes(hashlib.sha1(file_name.encode("utf-8", "surrogatepass")).digest()[:8], "big")


def assign(new_names: list[str], first_index: int, max_size: int) -> dict[str, str]:
    """file name -> partition key for images no plan has seen: sorted by `name_hash`, `max_size` per partition,
    numbered from `first_index` (the partitions before it are closed)."""
    if max_size < 1:
        raise InputError(f"pool partitions: max_size must be >= 1, got {max_size!r}")
    ordered = sorted(new_names, key=lambda n: (name_hash(n), n))
    return {n: partition_key(first_index + k // max_size) for k, n in enumerate(ordered)}


@dataclass
class PoolPlan:
    """What a planning pass found and wrote."""

    plan_dir: Path
    partitions: dict[str, int]  # key -> images, every partition of the plan
    new_partitions: list[str]  # added by this pass
    images_read: int = 0
    images_new: int = 0
    images_known: int = 0  # already planned (same file name and id)
    quarantined: int = 0
    reasons: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"plan_dir": str(self.plan_dir), "partitions": len(self.partitions),
                "new_partitions": self.new_partitions, "images_read": self.images_read,
                "images_new": self.images_new, "images_known": self.images_known,
                "quarantined": self.quarantined, "reasons": self.reasons}


def record_problem(im) -> str | None:
    """Why a pool record cannot be labeled, or None."""
    if not isinstance(im, dict):
        return f"an image record must be an object, got {type(im).__name__}"
    iid, name = im.get("id"), im.get("file_name")
    if not isinstance(iid, int) or isinstance(iid, bool) or iid < 0:
        return f"image id must be a whole number >= 0, got {iid!r}"
    if not isinstance(name, str) or not name.strip():
        return f"image file_name must be a non-empty string, got {name!r}"
    unsafe = unsafe_image_name(name)
    if unsafe:
        return unsafe
    for k in ("width", "height"):
        v = im.get(k)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
            return f"image {k} must be a whole number > 0, got {v!r}"
    return None


def read_plan(plan_dir) -> dict:
    """The manifest of a plan folder ({} before the first plan)."""
    p = Path(plan_dir) / MANIFEST
    return json.loads(p.read_text()) if p.is_file() else {}


def partition_file(plan_dir, key: str) -> Path:
    return Path(plan_dir) / PARTITIONS_DIR / f"{key}.json"


def partition_images(plan_dir, key: str) -> dict:
    """A planned partition's image_info json (images + categories); one line when it is not planned."""
    p = partition_file(plan_dir, key)
    if not p.is_file():
        raise InputError(f"pool partition {key} is not planned in {plan_dir} (no {p.name}): plan the pool first")
    return json.loads(p.read_text())


def plan_pool(pool_files, plan_dir, *, max_size: int = MAX_SIZE) -> PoolPlan:
    """Read the pool files, put every image no plan has seen into new partitions, write them; returns what it did.
    A bad record is a quarantine row saying why; a bad file is one line (InputError)."""
    plan_dir = Path(plan_dir)
    manifest = read_plan(plan_dir)
    if manifest and manifest.get("max_size") not in (None, max_size):
        max_size = manifest["max_size"]  # the rule a plan started with stays its rule
    known, planned = _read_assignments(plan_dir)  # file_name -> image id; partition -> images
    ids = {iid: n for n, iid in known.items()}
    old_q = _read_quarantine(plan_dir)
    quarantine: list[tuple[str, str, str]] = []
    new: dict[str, dict] = {}
    categories = manifest.get("categories") or []
    source: dict[str, str] = {}
    out = PoolPlan(plan_dir, planned, [])  # the assignments are the truth: a crash before the manifest loses nothing
    for pool in [Path(p) for p in pool_files]:
        root, chunks = stream_object_array(pool, "images", "pool image_info json")
        categories = _merge_categories(categories, root.get("categories") or [])
        for chunk in chunks:
            for im in chunk:
                out.images_read += 1
                why = record_problem(im)
                if why is None:
                    why = _duplicate_problem(im, known, ids, new)
                if why == "known":
                    out.images_known += 1
                elif why:
                    rid = im.get("id") if isinstance(im, dict) else None
                    quarantine.append((str(pool), str(rid if rid is not None else f"#{out.images_read}"), why))
                else:
                    new[im["file_name"]] = {k: im[k] for k in ("id", "file_name", "width", "height") if k in im}
                    ids[im["id"]] = im["file_name"]
                    source[im["file_name"]] = str(pool)
    if new and not categories:
        raise InputError(f"pool files {', '.join(map(str, pool_files))} name no categories: the model is asked "
                         "for each category of the pool's image_info json")
    first = 1 + max((int(k[len(PREFIX):]) for k in out.partitions), default=-1)
    keys = assign(list(new), first, max_size)
    by_part: dict[str, list] = {}
    for name, key in keys.items():
        by_part.setdefault(key, []).append(new[name])
    (plan_dir / PARTITIONS_DIR).mkdir(parents=True, exist_ok=True)
    for key, images in by_part.items():  # each partition file appears whole, and before the manifest names it
        _write_atomic(partition_file(plan_dir, key), json.dumps({"images": images, "categories": categories}))
        out.partitions[key] = len(images)
    out.new_partitions = sorted(by_part)
    out.images_new = len(new)
    # a re-plan of the same file must not count its bad records twice: one row per (file, record, reason)
    all_q = list(dict.fromkeys(old_q + quarantine))
    out.quarantined = len(quarantine)
    for _, _, why in quarantine:
        reason = why.split(":")[0]
        out.reasons[reason] = out.reasons.get(reason, 0) + 1
    if new:
        _append_assignments(plan_dir, keys, new, source)
    if len(all_q) != len(old_q) or not (plan_dir / QUARANTINE).exists():
        _write_quarantine(plan_dir, all_q)
    wanted = {"max_size": max_size, "partitions": dict(sorted(out.partitions.items())),
              "images": sum(out.partitions.values()), "categories": categories,
              "pool_files": sorted(set(manifest.get("pool_files", [])) | {str(Path(p)) for p in pool_files}),
              "quarantined": len(all_q)}
    if wanted != manifest:  # unchanged: nothing written (a re-plan is free)
        _write_atomic(plan_dir / MANIFEST, json.dumps(wanted, indent=1))
    return out


def _duplicate_problem(im: dict, known: dict, ids: dict, new: dict) -> str | None:
    """'known' for an image the plan has (same name, same id); a reason for a clash; None for a new image."""
    name, iid = im["file_name"], im["id"]
    if name in known:
        return "known" if known[name] == iid else f"file name already has image id {known[name]}: {name!r}"
    if name in new:
        return "known" if new[name]["id"] == iid else f"file name already has image id {new[name]['id']}: {name!r}"
    if iid in ids:
        return f"image id already names another file: {ids[iid]!r}"
    return None


def _merge_categories(a: list, b: list) -> list:
    by_id = {c["id"]: c for c in a if isinstance(c, dict) and "id" in c}
    for c in b:
        if isinstance(c, dict) and "id" in c and "name" in c:
            by_id.setdefault(c["id"], c)
    return [by_id[k] for k in sorted(by_id)]


def _read_assignments(plan_dir: Path) -> tuple[dict, dict]:
    """(file_name -> image id, partition -> images) of the planned images."""
    p = plan_dir / ASSIGNMENTS
    if not p.is_file():
        return {}, {}
    t = pq.read_table(p, columns=["file_name", "image_id", "partition"])
    sizes = {r["values"]: r["counts"] for r in t.column("partition").value_counts().to_pylist()}
    return dict(zip(t.column("file_name").to_pylist(), t.column("image_id").to_pylist())), sizes


def read_assignments(plan_dir) -> pa.Table:
    """Every planned image: file_name, image_id, partition, source_file."""
    return pq.read_table(Path(plan_dir) / ASSIGNMENTS)


def _append_assignments(plan_dir: Path, keys: dict, new: dict, sources: dict) -> None:
    names = list(keys)
    add = pa.table({"file_name": names, "image_id": pa.array([new[n]["id"] for n in names], pa.int64()),
                    "partition": [keys[n] for n in names], "source_file": [sources[n] for n in names]})
    p = plan_dir / ASSIGNMENTS
    table = pa.concat_tables([pq.read_table(p), add]) if p.is_file() else add
    tmp = p.with_name(p.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, p)


def _read_quarantine(plan_dir: Path) -> list[tuple]:
    p = plan_dir / QUARANTINE
    if not p.is_file():
        return []
    t = pq.read_table(p)
    return list(zip(*(t.column(c).to_pylist() for c in ("source_file", "record_id", "reason"))))


def read_quarantine(plan_dir) -> list[dict]:
    return [dict(zip(("source_file", "record_id", "reason"), r)) for r in _read_quarantine(Path(plan_dir))]


def _write_quarantine(plan_dir: Path, rows: list[tuple]) -> None:
    cols = list(zip(*rows)) if rows else [[], [], []]
    t = pa.table({k: pa.array(list(v), pa.string()) for k, v in zip(("source_file", "record_id", "reason"), cols)})
    p = plan_dir / QUARANTINE
    tmp = p.with_name(p.name + ".tmp")
    pq.write_table(t, tmp)
    os.replace(tmp, p)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# -- the pool's files and a partition's labels ------------------------------------------------------------------

POOL_DROP_DIR = "pool"  # <sources>/pool/*.json: more image_info files, each one more batch of the pool
DONE = "done.json"


def pool_files(sources) -> list[Path]:
    """The pool's image_info files: the demo's/COCO's unlabeled json, then every json dropped into <sources>/pool/."""
    from pipelines.layout import pool_file

    first = pool_file(sources)
    dropped = sorted(p for p in (Path(sources) / POOL_DROP_DIR).glob("*.json") if p.is_file())
    return ([first] if first.is_file() else []) + dropped


def labels_dir(predictions_root, model_version: str, key: str) -> Path:
    """Where one model version's pseudo-labels of one partition go."""
    return Path(predictions_root) / "pool" / model_version / key


def labels_done(predictions_root, model_version: str, key: str) -> dict | None:
    """The record of a finished labelling of this partition by this version (None: not finished)."""
    p = labels_dir(predictions_root, model_version, key) / DONE
    return json.loads(p.read_text()) if p.is_file() else None


def write_images_to_label(info: dict, skip_files: set[str], out: Path) -> list[dict]:
    """The partition's image_info json without the images in `skip_files` (reviewed ones), written to `out`."""
    todo = [im for im in info["images"] if im["file_name"] not in skip_files]
    _write_atomic(out, json.dumps({"images": todo, "categories": info["categories"]}))
    return todo


def mark_labels_done(predictions_root, model_version: str, key: str, record: dict) -> dict:
    """Written last, by rename: a partition is labeled by a version once this file exists, never before."""
    record = {"model_version": model_version, "partition": key, **record}
    _write_atomic(labels_dir(predictions_root, model_version, key) / DONE, json.dumps(record, indent=1))
    return record
