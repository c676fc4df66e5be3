"""What every reader returns, and the checks they share."""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from pipelines.errors import InputError

try:  # optional speed-up; the standard parser is the fallback and the reference
    import orjson
except ImportError:  # pragma: no cover - depends on the environment
    orjson = None


@dataclass
class Draft:
    """One sample before heatmap rendering; geometry in original pixels."""

    task: str
    image_id: int | None
    image_path: str
    width: int
    height: int
    instruction: str
    answer: str
    source_ids: list[str]
    category: str | None = None
    category_id: int | None = None
    expression: str | None = None
    boxes: list[list[float]] = field(default_factory=list)
    masks: list[dict] | None = None
    keypoints: list[list[float]] | None = None
    ignore_boxes: list[list[float]] = field(default_factory=list)
    ignore_masks: list[dict] = field(default_factory=list)


@dataclass
class ReadResult:
    drafts: list[Draft]
    quarantine: list[tuple[str, str, str]]  # (source_file, record_id, reason)
    records_read: int


class LazyUnits:
    """A sequence of work units, each made when first asked for (and made only once)."""

    def __init__(self, n: int, make: Callable[[int], Any]):
        self._n, self._make = n, make

    def __len__(self) -> int:
        return self._n

    def __iter__(self):
        return (self._make(k) for k in range(self._n))

    def __getitem__(self, k: int):
        """Unit `k` (a forked conversion worker makes its own units from the shared plan)."""
        if not 0 <= k < self._n:
            raise IndexError(k)
        return self._make(k)


@dataclass
class SourcePlan:
    """A source parsed and validated, its drafts still to build: `build(unit)` turns one unit of
    `units` into (drafts, quarantine rows); it is a module-level function, so a unit can be built in
    a worker process. Units are in output order: concatenating their drafts gives the read's drafts."""

    quarantine: list[tuple[str, str, str]]
    records_read: int
    units: Sequence
    build: Callable[[Any], tuple[list[Draft], list]]
    images: int = 0  # distinct images the units cover (decides whether conversion decodes them by default)

    def run(self) -> ReadResult:
        """Build every unit here, in order (the single-process read)."""
        drafts, quarantine = [], list(self.quarantine)
        for unit in self.units:
            d, q = self.build(unit)
            drafts += d
            quarantine += q
        return ReadResult(drafts, quarantine, self.records_read)


def drafts_as_is(unit) -> tuple[list[Draft], list]:
    """`build` of a plan whose units are ready-made drafts (sources read whole in one pass)."""
    return unit, []


DRAFTS_PER_UNIT = 4096


def plan_of(result: ReadResult, drafts_per_unit: int | None = None) -> SourcePlan:
    """A finished read as a plan whose units are slices of its drafts."""
    d, drafts_per_unit = result.drafts, drafts_per_unit or DRAFTS_PER_UNIT
    units = [d[k:k + drafts_per_unit] for k in range(0, len(d), drafts_per_unit)]
    return SourcePlan(result.quarantine, result.records_read, units, drafts_as_is,
                      images=len({x.image_path for x in d}))


def load_json(path: str | Path, expect: type, what: str) -> Any:
    """Load a JSON file or raise one clear InputError line.

    orjson (when installed) parses several times faster; whatever it refuses (NaN/Infinity
    literals that Python's json writes, huge integers) goes through the standard parser, so the
    result never depends on which one ran.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what}: file not found: {p}")
    raw = p.read_bytes()
    data = _NOT_PARSED
    if orjson is not None:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    if data is _NOT_PARSED:
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{what}: {p} is not valid JSON ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(data, expect):
        raise InputError(f"{what}: {p} must hold a JSON {expect.__name__} at the top level, found {type(data).__name__}")
    return data


_NOT_PARSED = object()


def require_keys(data: dict, keys: tuple[str, ...], path, what: str) -> None:
    missing = [k for k in keys if not isinstance(data.get(k), list)]
    if missing:
        raise InputError(f"{what}: {path} has no list {', '.join(repr(k) for k in missing)} at the top level")


def bad_box(bbox) -> str | None:
    """Why a COCO xywh box is unusable, or None."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return "bbox is not a list of 4 numbers"
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return "bbox has non-numeric values"
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return f"bbox has a non-finite value {list(bbox)}"
    if w <= 0 or h <= 0:
        return f"bbox has non-positive size (w={w:g}, h={h:g})"
    return None


def polygon_area(flat) -> float:
    """Shoelace area of one flat [x0, y0, x1, y1, ...] polygon."""
    return float(polygon_areas([flat])[0])


def polygon_areas(polys: list) -> np.ndarray:
    """Shoelace areas of many flat polygons in one vectorized pass (NaN where a value is not finite)."""
    if not polys:
        return np.zeros(0)
    lengths = np.fromiter((len(p) // 2 for p in polys), np.int64, len(polys))
    flat = np.fromiter(itertools.chain.from_iterable(polys), np.float64, int(lengths.sum()) * 2)
    x, y = flat[0::2], flat[1::2]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    nxt = np.arange(1, len(x) + 1)
    nxt[np.cumsum(lengths) - 1] = starts  # each polygon closes on its own first point
    cross = x * y[nxt] - x[nxt] * y
    return 0.5 * np.abs(np.add.reduceat(cross, starts))


def polygon_structure_problem(seg) -> str | None:
    """Cheap per-annotation checks of a polygon list (the area check runs in bulk)."""
    if not isinstance(seg, list) or not seg:
        return "segmentation is empty"
    for poly in seg:
        if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
            return "polygon has fewer than 3 points or an odd number of coordinates"
    return None


def polygon_area_problems(segs: list) -> list[str | None]:
    """For structurally valid polygon lists: which are non-numeric, non-finite or without area."""
    polys = [p for seg in segs for p in seg]
    try:
        areas = polygon_areas(polys)
    except (TypeError, ValueError):  # some value is not a number: find which, one by one
        return [_numeric_problem(seg) or polygon_area_problems([seg])[0] for seg in segs]
    counts = np.fromiter((len(seg) for seg in segs), np.int64, len(segs))
    if not len(segs) or counts.min() == 0:  # reduceat needs every list non-empty (callers check that first)
        out, k = [], 0
        for n in counts.tolist():
            a = areas[k:k + n]
            k += n
            out.append("polygon has non-finite coordinates" if not np.isfinite(a).all()
                       else "polygons have zero area" if a.max(initial=0) <= 0 else None)
        return out
    # per annotation, in one pass: all areas finite, and the largest
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    finite = np.logical_and.reduceat(np.isfinite(areas), starts)
    largest = np.maximum.reduceat(areas, starts)
    return [None if f and m > 0 else "polygons have zero area" if f else "polygon has non-finite coordinates"
            for f, m in zip(finite.tolist(), largest.tolist())]


def _numeric_problem(seg) -> str | None:
    try:
        polygon_areas(seg)
    except (TypeError, ValueError):
        return "polygon has non-numeric coordinates"
    return None


def rle_problem(seg: dict, height: int | None = None, width: int | None = None) -> str | None:
    if "counts" not in seg or "size" not in seg:
        return "RLE segmentation without 'counts' and 'size'"
    size = seg["size"]
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size)):
        return "RLE 'size' is not [height, width]"
    if height is not None and list(size) != [height, width]:
        return f"RLE size {size} does not match the image ({height}x{width})"
    if not isinstance(seg["counts"], (str, list)):
        return "RLE 'counts' is neither a string nor a list"
    return None


def bad_segmentation(seg, height: int | None = None, width: int | None = None) -> str | None:
    """Why one COCO segmentation (polygons or RLE) cannot form an area, or None."""
    if isinstance(seg, dict):
        return rle_problem(seg, height, width)
    return polygon_structure_problem(seg) or polygon_area_problems([seg])[0]


_DRIVE = re.compile(r"^[A-Za-z]:")


def unsafe_image_name(name: str) -> str | None:
    """Why an image name from a source file cannot be a path below the images folder (absolute,
    `..`, a home or drive prefix), or None. A source file must never point the pipeline, the shards
    or the review App at files elsewhere on the machine."""
    posix = name.replace("\\", "/")  # string tests, what PurePosixPath would say (per image: 118k of them)
    if posix.startswith(("/", "~")) or ".." in posix.split("/") or _DRIVE.match(name):
        return f"image path outside the images folder: {name!r}"
    return None


class RealPaths:
    """`os.path.realpath` (what `Path.resolve()` does) of many files in a few folders: each folder
    is resolved once, then a file costs one lstat instead of one per component of its path
    (118k images of COCO train2017: seconds). Short-lived: a folder's symlinks are read once."""

    def __init__(self):
        self._dirs: dict[str, str] = {}

    def folder(self, path) -> str:
        """A folder's realpath, resolved once."""
        path = os.fspath(path)
        if path not in self._dirs:
            self._dirs[path] = os.path.realpath(path)
        return self._dirs[path]

    def __call__(self, path) -> str:
        path = os.fspath(path)
        head, tail = os.path.split(path)
        if tail in ("", ".", "..") or not head:
            return os.path.realpath(path)
        if head not in self._dirs:
            self._dirs[head] = os.path.realpath(head)
        real = os.path.join(self._dirs[head], tail)
        try:
            link = stat.S_ISLNK(os.lstat(real).st_mode)
        except OSError:  # not there: realpath keeps the name as it is
            return real
        return os.path.realpath(real) if link else real


def is_inside(real: str, root: str) -> bool:
    """Whether resolved path `real` is `root` or below it (`Path.is_relative_to` on resolved paths)."""
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def image_outside(images_dir: Path, name: str, real_path: RealPaths | None = None) -> str | None:
    """Why `images_dir/name` is not a file inside `images_dir` once symlinks are resolved, or None."""
    problem = unsafe_image_name(name)
    if problem:
        return problem
    real_path = real_path or RealPaths()
    real, root = real_path(os.path.join(images_dir, name)), real_path.folder(images_dir)
    if not is_inside(real, root):
        return f"image path outside the images folder: {name!r} resolves to {real}"
    return None


def split_from_name(path: str | Path) -> str:
    name = Path(path).name.lower()
    for split in ("train", "val", "test"):
        if split in name:
            return split
    return "train"
