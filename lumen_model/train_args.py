"""`lumen train` arguments, importable without torch so `lumen --help` starts fast."""

from __future__ import annotations

import argparse

TRAIN_DOC = """Stage-wise Lumen training on shard folders (stage 1: heatmaps; stage 2: task decoders).

    torchrun --nproc_per_node 2 -m lumen_model.train ...   # DistributedDataParallel
"""


def build_arg_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="lumen train", description=TRAIN_DOC,
                                          formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", type=int, choices=(1, 2), required=True, help="1: heatmaps (LMM + aligner); 2: decoders")
    p.add_argument("--preset", default="tiny", help="model preset: tiny (CPU) or lumen-7b")
    p.add_argument("--shards", nargs="+", required=True, help="shard partition folders (train/all splits are used)")
    p.add_argument("--out", required=True, help="checkpoint folder")
    p.add_argument("--init", help="start from this checkpoint (stage 2: the stage-1 checkpoint)")
    p.add_argument("--weights", help="local folder with pretrained full-size parts (llava/, sam/)")
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=16, help="global batch size (split across processes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=0, help="also checkpoint every N steps")
    p.add_argument("--resume", action="store_true", help="continue exactly from the checkpoint in --out")
    p.add_argument("--warmup-steps", type=int, default=20, help="linear learning-rate warm-up, then cosine")
    p.add_argument("--group-size", type=int, default=4,
                   help="instructions of the same image side by side in a batch (their image is encoded once); 1: plain shuffle")
    p.add_argument("--hflip", type=float, default=0.5,
                   help="probability of mirroring an image (\"left\"/\"right\" swapped in its texts); 0: off")
    p.add_argument("--num-workers", type=int, default=2,
                   help="DataLoader processes loading batches ahead of the model (0: in the training process)")
    p.add_argument("--tasks", nargs="+", help="only these tasks (default: all tasks of the stage)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    return p
