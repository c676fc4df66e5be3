"""Load RefCOCO `refs(*.p)` pickles without letting a crafted file run code.

Pickles can call any importable function while loading. The real refs files hold only lists,
dicts, strings and numbers, so the unpickler refuses every global lookup: a file that asks for
one (os.system, builtins.eval, ...) is rejected with the name it asked for.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

from pipelines.errors import InputError


class _PlainDataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D401 - pickle hook
        raise pickle.UnpicklingError(f"refused global {module}.{name}: only plain containers and scalars are allowed")


def load_plain_pickle(path: str | Path):
    p = Path(path)
    if not p.is_file():
        raise InputError(f"refcoco: file not found: {p}")
    try:
        return _PlainDataUnpickler(io.BytesIO(p.read_bytes()), encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        raise InputError(f"refcoco: refused {p.name}: {exc}") from None
    except Exception as exc:  # truncated or not a pickle at all
        raise InputError(f"refcoco: {p.name} is not a readable pickle ({exc.__class__.__name__}: {exc})") from None
