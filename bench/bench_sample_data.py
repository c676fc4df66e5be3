"""Demo-source generation speed: `lumen sample-data` should write 400 images in a few seconds.

    .venv/bin/python bench/bench_sample_data.py [--images 400] [--repeats 3]

Prints wall time, images/s, bytes written, and whether repeated runs were byte-identical.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.sample_data import write_sample_data  # noqa: E402


def _digest(root: Path) -> tuple[str, int]:
    h, total = hashlib.sha256(), 0
    for p in sorted(root.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            h.update(p.relative_to(root).as_posix().encode() + b"\0" + data)
            total += len(data)
    return h.hexdigest(), total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    times, digests = [], set()
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            out = Path(tmp) / f"run{r}"
            t0 = time.perf_counter()
            counts = write_sample_data(out, n_images=args.images, seed=0)
            times.append(time.perf_counter() - t0)
            digest, total = _digest(out)
            digests.add(digest)
    best = min(times)
    print(f"images: {args.images}  wall best/median: {best:.2f}s / {sorted(times)[len(times) // 2]:.2f}s  "
          f"images/s: {args.images / best:.0f}  bytes: {total / 1e6:.1f} MB")
    print(f"annotations: {counts['annotations_train'] + counts['annotations_val']}  refs: {counts['refs']}  "
          f"questions: {counts['questions_train'] + counts['questions_val']}  byte-identical runs: {len(digests) == 1}")


if __name__ == "__main__":
    main()
