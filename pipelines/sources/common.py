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
        except RecursionError:
            raise InputError(f"{what}: {p} {TOO_DEEP}") from None
    if not isinstance(data, expect):
        raise InputError(f"{what}: {p} must hold a JSON {expect.__name__} at the top level, found {type(data).__name__}")
    return data


_NOT_PARSED = object()
# what the parsers refuse (orjson: 1024 levels; Python's json: its recursion limit, 1000 by default)
TOO_DEEP = "nests arrays/objects deeper than the JSON parsers allow (about 1000 levels)"


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


BOX_SLACK = 0.1  # how far (a fraction of the image's side, plus a pixel) a box may reach past the image


def box_image_problem(bbox, width: int, height: int) -> str | None:
    """Why a valid xywh box (`bad_box` passed) cannot belong to a width x height image: it lies
    outside, or reaches far past it (its heatmap Gaussian would be sized by pixels that are not
    there: a [0, 0, 1e6, 1e6] box asks for a 68 GiB kernel). Boxes that overhang by a little
    (rounding, objects cut by the border) are kept as they are, not clipped."""
    x, y, w, h = (float(v) for v in bbox)
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        return f"bbox {list(bbox)} lies outside the {width}x{height} image"
    sx, sy = BOX_SLACK * width + 1, BOX_SLACK * height + 1
    if x < -sx or y < -sy or x + w > width + sx or y + h > height + sy:
        return f"bbox {list(bbox)} reaches far past the {width}x{height} image (more than a tenth of its side)"
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
    """Why an RLE segmentation is unusable, or None: its size must be the image's, and its runs must
    decode and cover the height x width pixels exactly (pycocotools trusts them: a wrong total reads or
    writes past the mask when training decodes it)."""
    if "counts" not in seg or "size" not in seg:
        return "RLE segmentation without 'counts' and 'size'"
    size = seg["size"]
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) and v > 0 for v in size)):
        return "RLE 'size' is not [height, width]"
    if height is not None and list(size) != [height, width]:
        return f"RLE size {size} does not match the image ({height}x{width})"
    counts = seg["counts"]
    if isinstance(counts, str):
        runs = rle_string_runs(counts)
        if runs is None:
            return "RLE 'counts' string does not decode (a character outside '0'..'o', a cut-off or negative run)"
    elif isinstance(counts, list):
        if not all(_is_int(v) and 0 <= v < 2**32 for v in counts):
            return "RLE 'counts' list holds values that are not run lengths (integers >= 0)"
        runs = counts
    else:
        return "RLE 'counts' is neither a string nor a list"
    total = int(sum(runs))
    if total != size[0] * size[1]:
        return f"RLE runs do not add up to its size (they cover {total} pixels, {size[0]}x{size[1]} has {size[0] * size[1]})"
    return None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def rle_string_runs(s: str) -> np.ndarray | None:
    """The run lengths of a compressed COCO RLE string (pycocotools' `rleFrString`, vectorized), or
    None where that C code would read past the string, overflow or produce a negative run.

    Each value is 5-bit groups ('0' + bits, 0x20: more groups follow, 0x10 in the last: negative);
    from the fourth value on, a value is a difference to the value two places before it."""
    try:
        raw = np.frombuffer(s.encode("ascii"), np.uint8).astype(np.int64) - 48
    except UnicodeEncodeError:
        return None
    if not len(raw):
        return np.zeros(0, np.int64)
    if raw.min() < 0 or raw.max() > 63 or raw[-1] & 0x20:  # outside the alphabet, or cut off mid-value
        return None
    last = np.flatnonzero((raw & 0x20) == 0)  # the last group of each value
    starts = np.concatenate([[0], last[:-1] + 1])
    lengths = last - starts + 1
    if lengths.max() > 7:  # 35 bits: more than a run of a uint32 can hold
        return None
    k = np.arange(len(raw)) - np.repeat(starts, lengths)
    x = np.add.reduceat((raw & 0x1F) << (5 * k), starts)
    x = np.where(raw[last] & 0x10, x - (np.int64(1) << (5 * lengths)), x)  # sign-extended
    runs = x.copy()
    runs[3::2] = np.cumsum(x[1::2])[1:]  # odd positions from 3: x + the run two before
    runs[4::2] = np.cumsum(x[2::2])[1:]  # even positions from 4
    if len(runs) and (runs.min() < 0 or runs.max() >= 2**32):
        return None
    return runs


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
    if "\x00" in name:  # the OS cannot name such a file; os.stat raises ValueError on it
        return f"image file name holds a NUL byte: {name!r}"
    try:
        os.fsencode(name)
    except UnicodeEncodeError:  # a lone surrogate from a JSON escape: no file can have this name
        return f"image file name is not valid text: {name!r}"
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
