"""Load RefCOCO `refs(*.p)` pickles without letting a crafted file run code.

Pickles can call any importable function while loading (`__reduce__` -> os.system ...). The real
refs files hold only dicts, lists, tuples, strings, numbers, booleans and None, so the unpickler
refuses every global lookup (which is how a pickle reaches a callable): a file that asks for one
is rejected with the name it asked for, before anything is called. The loaded value is then
checked to hold only those plain types.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

from pipelines.errors import InputError

PLAIN_TYPES = (dict, list, tuple, str, int, float, bool, type(None))


class ForbiddenGlobal(pickle.UnpicklingError):
    pass


class _PlainDataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D401 - pickle hook
        raise ForbiddenGlobal(f"refused global {module}.{name}: only plain containers and scalars are allowed "
                              "(dict, list, tuple, str, int, float, bool, None)")


def _first_non_plain(value) -> str | None:
    """The type name of the first value that is not plain data, or None (iterative: deep refs are fine)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if not isinstance(v, PLAIN_TYPES):
            return type(v).__name__
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
    return None


def load_plain_pickle(path: str | Path):
    p = Path(path)
    if not p.is_file():
        raise InputError(f"refcoco: file not found: {p}")
    try:
        value = _PlainDataUnpickler(io.BytesIO(p.read_bytes()), encoding="latin1").load()
    except ForbiddenGlobal as exc:
        raise InputError(f"refcoco: refused {p.name}: {exc}") from None
    except Exception as exc:  # truncated, or not a pickle at all
        raise InputError(f"refcoco: {p.name} is not a readable pickle ({exc.__class__.__name__}: {exc})") from None
    bad = _first_non_plain(value)
    if bad is not None:
        raise InputError(f"refcoco: refused {p.name}: it holds a {bad}; only plain containers and scalars are allowed")
    return value
