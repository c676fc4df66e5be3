"""Load RefCOCO `refs(*.p)` pickles without letting a crafted file run code.

Pickles can call any importable function while loading (`__reduce__` -> os.system ...). The real
refs files hold only dicts, lists, tuples, strings, numbers, booleans and None, so the unpickler
refuses every global lookup (which is how a pickle reaches a callable): a file that asks for one
is rejected with the name it asked for, before anything is called. The loaded value is then
checked to hold only those plain types, and to be a finite tree of bounded size: a pickle can make
a list that contains itself (a walk over it never ends) or share one list thousands of times at
every level (a few hundred bytes that expand to billions of values), so the check walks each
distinct container once, refuses cycles and deep nesting, and counts the values as if every shared
one were a copy (what a reader iterating the refs would visit).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

from pipelines.errors import InputError

PLAIN_TYPES = (dict, list, tuple, str, int, float, bool, type(None))
_CONTAINERS = (dict, list, tuple)
# the real refs files: 20-50 MB, nested 5 deep (refs > ref > sentences > sentence > tokens), a few
# million values; the limits leave room for far more, and refuse what only a crafted file holds
MAX_PICKLE_BYTES = 1 << 30
MAX_DEPTH = 32
MAX_VALUES = 200_000_000


class ForbiddenGlobal(pickle.UnpicklingError):
    pass


class _PlainDataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D401 - pickle hook
        raise ForbiddenGlobal(f"refused global {module}.{name}: only plain containers and scalars are allowed "
                              "(dict, list, tuple, str, int, float, bool, None)")


def _not_plain_data(value) -> str | None:
    """Why `value` is not a finite tree of plain values of bounded depth and size, or None.

    Iterative depth-first walk: a container on the current path met again is a cycle; a container
    finished before is not walked again (its expanded size is remembered), so the walk is linear
    in the distinct containers while `total` counts every value as a reader would meet it."""
    if not isinstance(value, PLAIN_TYPES):
        return f"it holds a {type(value).__name__}"
    if not isinstance(value, _CONTAINERS):
        return None
    done: dict[int, int] = {}  # id -> expanded size of a container walked to the end
    on_path = {id(value)}
    stack = [(value, _children(value), [1])]
    total = 1
    while stack:
        v, children, size = stack[-1]
        child = next(children, _END)
        if child is _END:
            stack.pop()
            on_path.discard(id(v))
            done[id(v)] = size[0]
            if stack:
                stack[-1][2][0] += size[0]
            continue
        if not isinstance(child, PLAIN_TYPES):
            return f"it holds a {type(child).__name__}"
        if not isinstance(child, _CONTAINERS):
            size[0] += 1
            total += 1
        elif id(child) in on_path:
            return f"a {type(child).__name__} in it contains itself (a cycle)"
        elif id(child) in done:
            size[0] += done[id(child)]
            total += done[id(child)]
        elif len(stack) >= MAX_DEPTH:
            return f"it nests containers more than {MAX_DEPTH} deep"
        else:
            on_path.add(id(child))
            stack.append((child, _children(child), [1]))
            total += 1
        if total > MAX_VALUES:
            return f"it expands to more than {MAX_VALUES:,} values (containers shared over and over)"
    return None


_END = object()


def _children(v):
    return iter(list(v.keys()) + list(v.values())) if isinstance(v, dict) else iter(v)


def load_plain_pickle(path: str | Path):
    p = Path(path)
    if not p.is_file():
        raise InputError(f"refcoco: file not found: {p}")
    if p.stat().st_size > MAX_PICKLE_BYTES:
        raise InputError(f"refcoco: refused {p.name}: {p.stat().st_size:,} bytes, over the limit of "
                         f"{MAX_PICKLE_BYTES:,} for a refs file")
    try:
        value = _PlainDataUnpickler(io.BytesIO(p.read_bytes()), encoding="latin1").load()
    except ForbiddenGlobal as exc:
        raise InputError(f"refcoco: refused {p.name}: {exc}") from None
    except Exception as exc:  # truncated, or not a pickle at all
        raise InputError(f"refcoco: {p.name} is not a readable pickle ({exc.__class__.__name__}: {exc})") from None
    bad = _not_plain_data(value)
    if bad is not None:
        raise InputError(f"refcoco: refused {p.name}: {bad}; only a tree of plain containers and scalars is allowed")
    return value
