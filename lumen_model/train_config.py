"""The one training configuration: every `lumen train` setting once, with its type, default, help
and allowed values. Importable without torch (`lumen --help` starts fast).

`TrainConfig` is what `lumen_model.train.train` takes: a pydantic model (`pipelines/settings.py`).
The `lumen train` flags (`build_arg_parser`), the torchrun command line (`to_argv`) and the
Dagster `RetrainConfig` fields (`assets_defs/assets/training.py`) are all generated from its
fields, so a setting is added, renamed or re-defaulted here only. A bad value fails in one line
(`InvalidTrainConfig`) when the config is built, before any slow work.

Steps: stage 1 trains 1200 steps and stage 2 330 by default (`STAGE_STEPS`, the demo retrain's
numbers: what the tiny preset needs on the sample data); `--max-steps` / `stage1_steps` override.
"""

import argparse
import re
from typing import Literal

import pydantic
from pydantic import Field

from lumen_model.config import PRESETS
from pipelines.settings import InvalidSettings, Settings, add_arguments, to_argv, values_from_args
from pipelines.tasks import STAGES, stage_tasks

STAGE_TASKS = {stage: stage_tasks(stage) for stage in STAGES}  # from the task registry (pipelines/tasks.py)
STAGE_STEPS = {1: 1200, 2: 330}  # default optimizer steps per stage (stage 2: +10% for the VQA readout's questions)
_DEVICE = re.compile(r"(auto|cpu|cuda|cuda:\d+)")

TRAIN_DOC = """Stage-wise Lumen training on shard folders (stage 1: heatmaps; stage 2: task decoders).

    torchrun --nproc_per_node 2 -m lumen_model.train ...   # DistributedDataParallel
"""


class InvalidTrainConfig(InvalidSettings):
    """A training setting of the wrong type or outside its allowed values (one line, no traceback)."""


class TrainConfig(Settings):
    label = "training setting"
    error = InvalidTrainConfig

    # what to train on and where: chosen per run (the Dagster asset picks them itself)
    stage: Literal[tuple(STAGE_TASKS)] = Field(description="1: heatmaps (LMM + aligner); 2: decoders")
    shards: list[str] = Field(description="shard partition folders (train/all splits are used)")
    out: str = Field(description="checkpoint folder")
    init: str | None = Field(None, description="start from this checkpoint (stage 2: the stage-1 checkpoint)")
    resume: bool = Field(False, description="continue exactly from the checkpoint in --out")
    tasks: list[str] | None = Field(None, description="only these tasks (default: all tasks of the stage)")
    weights: str | None = Field(None, description="local folder with pretrained full-size parts (llava/, sam/)")
    device: str | None = Field(None, description="auto, cpu, cuda or cuda:N (default: the GPU when there is one; "
                                                 "DDP: one GPU per rank)")
    # the model and the optimisation
    preset: Literal[tuple(PRESETS)] = Field("tiny", description="model preset: tiny (CPU) or lumen-7b")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps (default: stage 1 %d, stage 2 %d)"
                                                          % (STAGE_STEPS[1], STAGE_STEPS[2]))
    lr: float = Field(1e-3, gt=0.0, description="peak learning rate")
    lr_floor: float = Field(0.05, ge=0.0, le=1.0,
                            description="the cosine schedule ends at this fraction of the peak learning rate")
    warmup_steps: int = Field(20, ge=0, description="linear learning-rate warm-up, then cosine")
    readout_lr_scale: float = Field(5.0, ge=0.0, description=(
        "stage 2: learning-rate multiplier of the VQA readout, which trains there alone on the frozen stage-1 "
        "features from the few questions of each batch (stage 1 trains it at the base rate: 5x there cost detection "
        "0.04 AP)"))
    question_share: float = Field(0.1, ge=0.0, le=0.9, description=(
        "stage 2: the share of its rows that are short-answer questions (VQAv2), for the VQA readout; at most, taken "
        "evenly from them (all of them, 29 in 100 of the demo's rows, cost pose ~0.03 AP); 0: none"))
    weight_decay: float = Field(0.01, ge=0.0, description="AdamW weight decay")
    grad_clip: float = Field(1.0, gt=0.0, description="clip the gradient norm to this")
    batch_size: int = Field(16, ge=1, description="global batch size (split across processes)")
    group_size: int = Field(4, ge=1, description="instructions of the same image side by side in a batch (their image "
                                                 "is encoded once); 1: plain shuffle")
    hflip: float = Field(0.5, ge=0.0, le=1.0, description="probability of mirroring an image (\"left\"/\"right\" "
                                                          "swapped in its texts); 0: off")
    balance_tasks: bool = Field(True, description=(
        "repeat the rows of rare tasks in each epoch (on unless --no-balance-tasks): with T tasks, a task holding a "
        "share f < 1/T of the rows has each row round(sqrt(1/(T f))) times (pose: 1 to 3 in 100 of the demo's rows, "
        "x3)"))
    seed: int = Field(0, description="random seed (data order, initialisation)")
    num_workers: int = Field(2, ge=0, description="DataLoader processes loading batches ahead of the model (0: in the "
                                                  "training process); the batches do not depend on it")
    # safety and bookkeeping
    save_every: int = Field(0, ge=0, description="also checkpoint every N steps (0: only at the end)")
    max_bad_steps: int = Field(3, ge=1, description="stop after this many steps in a row with a non-finite loss or "
                                                    "gradient")
    allow_eval_overlap: bool = Field(False, description=(
        "train even when a training image has the content of a val/test image of the given shards (refused by "
        "default: such a model is scored on what it trained on)"))
    progress: bool = Field(True, description="a progress bar (--no-progress: logs only)")
    # tests and fault drills only: stop (and checkpoint) early, as an interrupted run would; resume later
    stop_at_step: int | None = None
    # filled by train(): the detection categories the model learns (kept in the checkpoint's config.json)
    categories: list[dict] = Field(default_factory=list)

    @pydantic.field_validator("device")
    @classmethod
    def _device(cls, v: str | None) -> str | None:
        if v is not None and not _DEVICE.fullmatch(v):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return v

    @pydantic.model_validator(mode="after")
    def _stage_tasks_and_steps(self):
        if self.tasks:
            unknown = sorted(set(self.tasks) - set(STAGE_TASKS[self.stage]))
            if unknown:
                raise ValueError(f"tasks: {', '.join(unknown)} not trained in stage {self.stage} "
                                 f"(of {', '.join(STAGE_TASKS[self.stage])})")
        if self.max_steps is None:
            self.max_steps = STAGE_STEPS[self.stage]
        return self

    def to_argv(self) -> list[str]:
        """The `python -m lumen_model.train` flags that rebuild this config (the torchrun path)."""
        return to_argv(self, cli_fields())


# chosen per run, not offered by the Dagster retrain config (its asset picks them itself)
RUN_SPECIFIC = ("stage", "shards", "out", "init", "tasks", "device", "max_steps", "allow_eval_overlap", "progress")
NOT_FLAGS = ("stop_at_step", "categories")  # set by tests and by train() itself


def cli_fields() -> list[str]:
    return [n for n in TrainConfig.model_fields if n not in NOT_FLAGS]


def shared_fields() -> list[str]:
    """The settings the Dagster retrain config offers too (same names, defaults, help and ranges)."""
    return [n for n in TrainConfig.model_fields if n not in RUN_SPECIFIC + NOT_FLAGS]


def build_arg_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """`lumen train` / `python -m lumen_model.train`: one flag per TrainConfig field."""
    p = parser or argparse.ArgumentParser(prog="lumen train", description=TRAIN_DOC,
                                          formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p, TrainConfig, cli_fields())
    p.add_argument("--result-file", help="also write the result json here (rank 0), for callers such as torchrun's parent")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**values_from_args(args, TrainConfig, cli_fields()))
