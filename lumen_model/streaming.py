"""Prediction over large pools without holding them: lazy (image, instruction) jobs, and JSON
arrays written element by element as results come."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path


class ImageInstructionJobs(Sequence):
    """Every (image, instruction, meta) pair of images x instructions, image-major, made on access:
    100k images x 80 categories are 8M pairs that never exist at once."""

    def __init__(self, images: list[dict], instructions: list[tuple[str, dict]]):
        self.images, self.instructions = images, instructions

    def __len__(self) -> int:
        return len(self.images) * len(self.instructions)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        if k < 0:
            k += len(self)
        if not 0 <= k < len(self):
            raise IndexError(k)
        i, j = divmod(k, len(self.instructions))
        text, meta = self.instructions[j]
        return self.images[i], text, dict(meta)


class JsonArrayWriter:
    """A JSON array file written one element at a time; it appears under its name only on `close()`
    (until then it is a hidden temporary file beside it), so a reader never sees half a file."""

    def __init__(self, path: Path, count_if=None):
        self.path = Path(path)
        self._tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self._fh = open(self._tmp, "w")
        self._fh.write("[")
        self._n = 0
        self._count_if = count_if
        self.matched = 0  # elements for which count_if(element) was true

    def append(self, element) -> None:
        self._fh.write(("," if self._n else "") + json.dumps(element))
        self._n += 1
        if self._count_if is not None and self._count_if(element):
            self.matched += 1

    def __len__(self) -> int:
        return self._n

    def close(self) -> None:
        self._fh.write("]")
        self._fh.close()
        os.replace(self._tmp, self.path)
