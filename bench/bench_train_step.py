"""Training speed of the tiny preset: wall and CPU seconds per step of stage 1 and stage 2.

    .venv/bin/python bench/bench_train_step.py [--images 100] [--steps 10 40] [--procs 1] [--batch-size 16]

Each stage trains twice on the demo data, for the two step counts; the differences divided by the extra
steps are the per-step costs, without the start-up (tokenizer, shards, DataLoader workers, checkpoint).
CPU seconds count every process (DDP ranks and DataLoader workers); on a shared machine they say more
than the wall time. Set OMP_NUM_THREADS for the threads of one process; --procs N trains in N DDP
processes of 1 thread each (`lumen_model.train.train_processes`, what bench_quality.py uses).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--steps", type=int, nargs=2, default=(10, 40), metavar=("FEW", "MORE"))
    ap.add_argument("--procs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    few, more = args.steps
    if not 0 < few < more:
        ap.error("--steps FEW MORE with 0 < FEW < MORE")

    from lumen_model.train import TrainConfig, loader_workers, train_processes
    from pipelines.layout import SOURCES, convert_partition
    from pipelines.sample_data import write_sample_data

    root = Path(tempfile.mkdtemp(prefix="lumen-step-"))
    write_sample_data(root / "sources", n_images=args.images)
    for s in SOURCES:
        convert_partition(s, root / "sources", root / "shards", input_size=128)
    shards = sorted(str(p.parent) for p in (root / "shards").glob("*/*/manifest.json"))
    workers = loader_workers(args.procs)

    def run(stage: int, steps: int) -> tuple[float, float]:
        init = str(root / f"s1_{more}") if stage == 2 else None
        cfg = TrainConfig(stage=stage, preset="tiny", shards=shards, out=str(root / f"s{stage}_{steps}"), init=init,
                          max_steps=steps, batch_size=args.batch_size, progress=False, num_workers=workers)
        cpu, t = _cpu_seconds(), time.perf_counter()
        train_processes(cfg, args.procs)
        return time.perf_counter() - t, _cpu_seconds() - cpu

    print(f"{args.procs} process(es), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"batch {args.batch_size}, steps {few} and {more}")
    for stage in (1, 2):
        (w1, c1), (w2, c2) = run(stage, few), run(stage, more)
        n = more - few
        print(f"stage {stage}: {(w2 - w1) / n:.3f} s wall, {(c2 - c1) / n:.3f} CPU s per step "
              f"({args.batch_size * n / (w2 - w1):.1f} samples/s); load average {os.getloadavg()[0]:.2f}")
    print(f"data and checkpoints in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
