"""One big array of a JSON object file, parsed a chunk of elements at a time.

A COCO train2017 instances file is ~440 MB of json; parsed whole it becomes ~4 GB of Python objects,
most of them the annotations' polygons. `stream_object_array` finds where the elements of one
top-level array (`annotations`) begin and end with a vectorized scan of the raw bytes (quotes,
escapes, brackets; never more than one block of the file in memory), parses the rest of the
document whole and that array's elements in chunks of a few MB, so a reader can turn each chunk
into compact arrays before the next is parsed.

The result equals `load_json`'s: each chunk goes through the same parsers (orjson, then the
standard one) and must parse as a complete sequence of values, so the cuts can only fall between
elements (invalid json inside the array: one error line naming the file). A file the scan cannot
frame this way (not an object, the array missing or twice, a byte-order mark, invalid json outside
the array) is read by `load_json` whole, which also gives the usual one-line error.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from pipelines.errors import InputError
from pipelines.sources.common import TOO_DEEP, load_json, orjson

log = logging.getLogger(__name__)

SCAN_BLOCK = 32 << 20  # bytes scanned at once
CHUNK_BYTES = 8 << 20  # json text per parsed chunk of elements
_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_KEY_BEFORE = re.compile(rb'"((?:[^"\\]|\\.)*)"\s*:\s*$', re.S)


class _NotFramed(Exception):
    """The scan cannot frame the file: read it whole instead."""


@dataclass
class _Scan:
    in_string: bool = False
    depth: int = 0
    backslashes: int = 0  # length of the backslash run that ended the previous block (inside a string)
    arrays: list = field(default_factory=list)  # [key, start of '[', end of ']'] of every top-level array
    closes: list = field(default_factory=list)  # positions where an element of a top-level container ends


def stream_object_array(path: str | Path, key: str, what: str) -> tuple[dict, Iterator[list]]:
    """(the top-level object with `key` holding [], chunks of `key`'s elements in order). `key` must
    hold an array; the object is validated like `load_json(path, dict, what)`."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what}: file not found: {p}")
    try:
        with open(p, "rb", buffering=0) as f:
            (start, end), cuts = _frame(f, key)
            size = os.fstat(f.fileno()).st_size
            root = _parse(_read(f, 0, start + 1) + _read(f, end, size - end))
        if not isinstance(root, dict) or root.get(key) != []:  # `key` again after the array: the last one counts
            raise _NotFramed
    except _NotFramed:
        log.info("%s: %s read whole (its %r array could not be framed for chunked parsing)", what, p, key)
        data = load_json(p, dict, what)
        items = data.get(key)
        if not isinstance(items, list):
            return data, iter(())
        data[key] = []
        return data, _slices(items)
    return root, Chunks(p, [start] + cuts + [end], what)


def _slices(items: list) -> Iterator[list]:
    """Chunks of an already parsed list, each released from it once handed out."""
    step = 20_000
    for lo in range(0, len(items), step):
        chunk = items[lo:lo + step]
        items[lo:lo + step] = [None] * len(chunk)
        yield chunk


class Chunks:
    """The chunks of a framed array: iterate them in order, or `parse(k)` one (in any process: a
    chunk is a byte range of the file, read and parsed where it is asked for)."""

    def __init__(self, path: Path, bounds: list[int], what: str):
        self.path, self.bounds, self.what = path, bounds, what

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def __iter__(self) -> Iterator[list]:
        return (self.parse(k) for k in range(len(self)))

    def parse(self, k: int) -> list:
        """Chunk k: the text between delimiters k and k+1 ('[', commas between elements, ']').
        It parses as a complete sequence of values from the state right after a delimiter, so the
        comma after it separates elements of the array: the chunks are exactly its elements."""
        lo, hi = self.bounds[k], self.bounds[k + 1]
        with open(self.path, "rb", buffering=0) as f:
            text = _read(f, lo + 1, hi - lo - 1)
        if len(self.bounds) > 2 and not text.strip():  # "[1,,2]" or "[1,]" would otherwise pass
            raise InputError(f"{self.what}: {self.path} is not valid JSON (an empty element at byte {lo + 1})")
        try:
            return _parse(b"[" + text + b"]")
        except _NotFramed as exc:
            if str(exc) == TOO_DEEP:
                raise InputError(f"{self.what}: {self.path} {TOO_DEEP}") from None
            raise InputError(f"{self.what}: {self.path} is not valid JSON ({exc})") from None


def _parse(raw: bytes):
    if orjson is not None:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _NotFramed(f"{exc.__class__.__name__}: {exc}") from None
    except RecursionError:  # read whole, the file gets load_json's one line; a chunk names it in Chunks.parse
        raise _NotFramed(TOO_DEEP) from None


def _read(f, offset: int, n: int) -> bytes:
    """n bytes at offset, without moving the file's position (the scan reads on from it)."""
    return os.pread(f.fileno(), n, offset)


def _frame(f, key: str) -> tuple[tuple[int, int], list[int]]:
    """Scan the file: the span ('[' position, ']' position) of top-level array `key` and commas
    between its elements about every CHUNK_BYTES."""
    st = _Scan()
    offset = 0
    buf = bytearray(SCAN_BLOCK)
    while True:
        n = f.readinto(buf)
        if not n:
            break
        # bytearray.translate reads the buffer in place (a full block needs no copy first)
        _scan_block((buf if n == len(buf) else buf[:n]).translate(_CLASSES), offset, st, f)
        offset += n
    if st.in_string or st.depth != 0:
        raise _NotFramed
    spans = [(s, e) for k, s, e in st.arrays if k == key]
    if len(spans) != 1 or spans[0][1] is None:
        raise _NotFramed
    start, end = spans[0]
    closes = np.concatenate(st.closes) if st.closes else np.zeros(0, np.int64)
    closes = closes[(closes > start) & (closes < end)]  # ends of the array's (container) elements
    picks = np.unique(np.searchsorted(closes, np.arange(start, end, CHUNK_BYTES)[1:]))
    cuts = []
    for c in closes[picks[picks < len(closes)]]:
        after = _read(f, int(c) + 1, 64).lstrip()
        if after[:1] != b",":
            if after[:1] == b"]" and int(c) + 1 + _read(f, int(c) + 1, 64).index(b"]") == end:
                break  # the last element
            raise _NotFramed  # no comma after an element: invalid json, read whole for the error
        cuts.append(int(c) + 1 + _read(f, int(c) + 1, 64).index(b","))
    return (start, end), cuts


# byte classes the scan looks at (every other byte -> 0): { [ } ] " backslash
_CLASSES = bytes(1 if b == ord("{") else 2 if b == ord("[") else 3 if b == ord("}") else 4 if b == ord("]")
                 else 5 if b == _QUOTE else 6 if b == _BACKSLASH else 0 for b in range(256))


def _scan_block(t: bytes, offset: int, st: _Scan, f) -> None:
    """One block of the file, its bytes mapped to `_CLASSES`."""
    a = np.frombuffer(t, np.uint8)
    where = np.flatnonzero(a)
    cls = a[where]
    quotes, backslashes = where[cls == 5], where[cls == 6]
    if len(quotes) and (len(backslashes) or st.backslashes):
        quotes = quotes[~_escaped(quotes, backslashes, st.backslashes)]
    # the backslash run this block ends with escapes the next block's first character
    if len(backslashes) and backslashes[-1] == len(a) - 1:
        run = _run_length_ending_at(backslashes, len(backslashes) - 1)
        st.backslashes = run + (st.backslashes if run == len(a) else 0)
    else:
        st.backslashes = 0
    brackets = where[cls <= 4]
    # outside strings: an even number of (unescaped) quotes before it, counted from the block's state
    outside = (np.searchsorted(quotes, brackets) % 2 == 1) == st.in_string
    brackets = brackets[outside]
    if len(quotes) % 2:
        st.in_string = not st.in_string
    chars = a[brackets]
    delta = np.where(chars <= 2, 1, -1)
    depth = st.depth + np.cumsum(delta)  # depth after each bracket
    if len(depth) and (depth.min() < 0):
        raise _NotFramed
    top_opens = np.flatnonzero((delta == 1) & (depth == 2) & (chars == 2))
    top_closes = np.flatnonzero((delta == -1) & (depth == 1))
    events = sorted([(int(i), "open") for i in top_opens] + [(int(i), "close") for i in top_closes])
    for i, kind in events:
        pos = offset + int(brackets[i])
        if kind == "open":
            st.arrays.append([_key_before(f, pos), pos, None])
        elif st.arrays and st.arrays[-1][2] is None and chars[i] == 4:
            st.arrays[-1][2] = pos
    closes = brackets[(delta == -1) & (depth == 2)]
    if len(closes):
        st.closes.append(closes.astype(np.int64) + offset)
    if len(depth):
        st.depth = int(depth[-1])


def _escaped(quotes: np.ndarray, backslashes: np.ndarray, carry: int) -> np.ndarray:
    """Which quotes follow an odd run of backslashes (`carry`: the run the previous block ended with)."""
    out = np.zeros(len(quotes), bool)
    if len(backslashes):
        j = np.searchsorted(backslashes, quotes - 1)
        j_ok = j < len(backslashes)
        hit = np.zeros(len(quotes), bool)
        hit[j_ok] = backslashes[j[j_ok]] == quotes[j_ok] - 1
        for q in np.flatnonzero(hit):  # rare outside free text: a short loop
            run = _run_length_ending_at(backslashes, int(j[q]))
            if backslashes[j[q]] - run + 1 == 0:  # the run reaches back into the previous block
                run += carry
            out[q] = run % 2 == 1
    if carry and len(quotes) and quotes[0] == 0:
        out[0] = carry % 2 == 1
    return out


def _run_length_ending_at(backslashes: np.ndarray, j: int) -> int:
    """Length of the run of consecutive backslash positions that ends at index j."""
    k = j
    while k > 0 and backslashes[k - 1] == backslashes[k] - 1:
        k -= 1
    return j - k + 1


def _key_before(f, pos: int) -> str | None:
    """The object key in front of the '[' at `pos` (the text before it is `"key" :`)."""
    start = max(0, pos - 512)
    m = _KEY_BEFORE.search(_read(f, start, pos - start))
    if not m:
        return None
    try:
        return json.loads(b'"' + m.group(1) + b'"')
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
