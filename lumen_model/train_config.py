"""The one training configuration: every `lumen train` setting once, with its type, default, help
and allowed values. Importable without torch (`lumen --help` starts fast).

`TrainConfig` is what `lumen_model.train.train` takes; the `lumen train` flags (`build_arg_parser`),
the torchrun command line (`to_argv`) and the Dagster `RetrainConfig` fields
(`assets_defs/assets/training.py`) are all generated from its fields, so a knob is added, renamed
or re-defaulted here only. A bad value fails in one line (`InvalidTrainConfig`) when the config is
built, before any slow work.

Steps: stage 1 trains 1200 steps and stage 2 330 by default (`STAGE_STEPS`, the demo retrain's
numbers: what the tiny preset needs on the sample data); `--max-steps` / `stage1_steps` override.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from lumen_model.config import PRESETS
from pipelines.errors import InputError
from pipelines.tasks import STAGES, stage_tasks

STAGE_TASKS = {stage: stage_tasks(stage) for stage in STAGES}  # from the task registry (pipelines/tasks.py)
STAGE_STEPS = {1: 1200, 2: 330}  # default optimizer steps per stage (stage 2: +10% for the VQA readout's questions)
_DEVICE = re.compile(r"(auto|cpu|cuda|cuda:\d+)")

TRAIN_DOC = """Stage-wise Lumen training on shard folders (stage 1: heatmaps; stage 2: task decoders).

    torchrun --nproc_per_node 2 -m lumen_model.train ...   # DistributedDataParallel
"""


class InvalidTrainConfig(InputError, ValueError):
    """A training setting of the wrong type or outside its allowed values (one line, no traceback)."""


def _device(v: str | None) -> str | None:
    return None if v is None or _DEVICE.fullmatch(v) else "must be auto, cpu, cuda or cuda:N"


def knob(default=None, help: str = "", *, choices=None, ge=None, gt=None, le=None, check=None, required: bool = False,
         shared: bool = True, cli: bool = True, default_factory=None):
    """A TrainConfig field with what the CLI and Dagster need to show and check it.

    choices / ge / gt / le: the allowed values, declared (not as code) so that the Dagster retrain
    config turns them into the same pydantic constraints (`Literal[...]`, `Field(ge=...)`); check:
    a further test of a value (returns what is wrong, or None). shared: also a field of the Dagster
    retrain config (run-specific settings such as the shard folders or the stage are chosen by the
    asset); cli: also a `lumen train` flag."""
    meta = dict(help=help, choices=choices, ge=ge, gt=gt, le=le, check=check, required=required, shared=shared,
                cli=cli)
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    # what to train on and where: chosen per run (the Dagster asset picks them itself)
    stage: int = knob(None, "1: heatmaps (LMM + aligner); 2: decoders", choices=(1, 2), required=True, shared=False)
    shards: list[str] = knob(None, "shard partition folders (train/all splits are used)", required=True, shared=False)
    out: str = knob(None, "checkpoint folder", required=True, shared=False)
    init: str | None = knob(None, "start from this checkpoint (stage 2: the stage-1 checkpoint)", shared=False)
    resume: bool = knob(False, "continue exactly from the checkpoint in --out")
    tasks: list[str] | None = knob(None, "only these tasks (default: all tasks of the stage)", shared=False)
    weights: str | None = knob(None, "local folder with pretrained full-size parts (llava/, sam/)")
    device: str | None = knob(None, "auto, cpu, cuda or cuda:N (default: the GPU when there is one; DDP: one GPU "
                                    "per rank)", check=_device, shared=False)
    # the model and the optimisation
    preset: str = knob("tiny", "model preset: tiny (CPU) or lumen-7b", choices=tuple(PRESETS))
    max_steps: int | None = knob(None, "optimizer steps (default: stage 1 %d, stage 2 %d)" % (STAGE_STEPS[1], STAGE_STEPS[2]),
                                 ge=1, shared=False)
    lr: float = knob(1e-3, "peak learning rate", gt=0.0)
    lr_floor: float = knob(0.05, "the cosine schedule ends at this fraction of the peak learning rate", ge=0.0, le=1.0)
    warmup_steps: int = knob(20, "linear learning-rate warm-up, then cosine", ge=0)
    readout_lr_scale: float = knob(5.0, "stage 2: learning-rate multiplier of the VQA readout, which trains there "
                                        "alone on the frozen stage-1 features from the few questions of each batch "
                                        "(stage 1 trains it at the base rate: 5x there cost detection 0.04 AP)",
                                   ge=0.0)
    question_share: float = knob(0.1, "stage 2: the share of its rows that are short-answer questions (VQAv2), for "
                                      "the VQA readout; at most, taken evenly from them (all of them, 29 in 100 of "
                                      "the demo's rows, cost pose ~0.03 AP); 0: none", ge=0.0, le=0.9)
    weight_decay: float = knob(0.01, "AdamW weight decay", ge=0.0)
    grad_clip: float = knob(1.0, "clip the gradient norm to this", gt=0.0)
    batch_size: int = knob(16, "global batch size (split across processes)", ge=1)
    group_size: int = knob(4, "instructions of the same image side by side in a batch (their image is encoded "
                              "once); 1: plain shuffle", ge=1)
    hflip: float = knob(0.5, "probability of mirroring an image (\"left\"/\"right\" swapped in its texts); 0: off",
                        ge=0.0, le=1.0)
    balance_tasks: bool = knob(True, "repeat the rows of rare tasks in each epoch (on unless --no-balance-tasks): "
                                     "with T tasks, a task holding a share f < 1/T of the rows has each row "
                                     "round(sqrt(1/(T f))) times (pose: 1 to 3 in 100 of the demo's rows, x3)")
    seed: int = knob(0, "random seed (data order, initialisation)")
    num_workers: int = knob(2, "DataLoader processes loading batches ahead of the model (0: in the training "
                               "process); the batches do not depend on it", ge=0)
    # safety and bookkeeping
    save_every: int = knob(0, "also checkpoint every N steps (0: only at the end)", ge=0)
    max_bad_steps: int = knob(3, "stop after this many steps in a row with a non-finite loss or gradient",
                              ge=1)
    allow_eval_overlap: bool = knob(False, "train even when a training image has the content of a val/test image of "
                                           "the given shards (refused by default: such a model is scored on what it "
                                           "trained on)", shared=False)
    progress: bool = knob(True, "no progress bar (logs only)", shared=False)
    # tests and fault drills only: stop (and checkpoint) early, as an interrupted run would; resume later
    stop_at_step: int | None = knob(None, shared=False, cli=False)
    # filled by train(): the detection categories the model learns (kept in the checkpoint's config.json)
    categories: list[dict] = knob(shared=False, cli=False, default_factory=list)

    def __post_init__(self):
        if self.stage is None or self.shards is None or self.out is None:
            missing = [n for n in ("stage", "shards", "out") if getattr(self, n) is None]
            raise InvalidTrainConfig(f"training setting {', '.join(missing)} is required")
        for f in dataclasses.fields(self):
            _check(f, getattr(self, f.name))
        if self.tasks:
            unknown = sorted(set(self.tasks) - set(STAGE_TASKS[self.stage]))
            if unknown:
                raise InvalidTrainConfig(f"invalid training setting tasks: {', '.join(unknown)} not trained in stage "
                                         f"{self.stage} (of {', '.join(STAGE_TASKS[self.stage])})")
        if self.max_steps is None:
            self.max_steps = STAGE_STEPS[self.stage]

    def to_argv(self) -> list[str]:
        """The `python -m lumen_model.train` flags that rebuild this config (the torchrun path)."""
        argv = []
        for f in cli_fields():
            v = getattr(self, f.name)
            if f.default is True:  # on by default: only its --no-... flag exists
                argv += [] if v else [_flag(f)]
            elif isinstance(v, bool):
                argv += [_flag(f)] if v else []
            elif isinstance(v, list):
                argv += [_flag(f), *map(str, v)]
            elif v is not None:
                argv += [_flag(f), repr(v) if isinstance(v, float) else str(v)]
        return argv


def _check(f: dataclasses.Field, v) -> None:
    """Type, allowed values and range of one field; raises one line naming the setting."""
    want = knob_type(f)
    if v is None:
        if f.default is None:
            return
        raise InvalidTrainConfig(f"invalid training setting {f.name}=None: expected {want.__name__}")
    if want is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if want is list:
        ok = isinstance(v, list) and (not str(f.type).startswith("list[str]") or all(isinstance(x, str) for x in v))
    else:
        ok = isinstance(v, want) and not (want is not bool and isinstance(v, bool))
    if not ok:
        raise InvalidTrainConfig(f"invalid training setting {f.name}={v!r}: expected {_type_name(f)}")
    choices, check = f.metadata.get("choices"), f.metadata.get("check")
    if choices and v not in choices:
        raise InvalidTrainConfig(f"invalid training setting {f.name}={v!r}: expected one of "
                                 f"{', '.join(map(str, choices))}")
    problem = _out_of_bounds(f, v) or (check(v) if check else None)
    if problem:
        raise InvalidTrainConfig(f"invalid training setting {f.name}={v!r}: {problem}")


def knob_bounds(f: dataclasses.Field) -> dict:
    """The declared range of a field, as pydantic's `Field` takes it: {"ge": 0.0, "le": 1.0}, ..."""
    return {k: f.metadata[k] for k in ("ge", "gt", "le") if f.metadata.get(k) is not None}


def _out_of_bounds(f: dataclasses.Field, v) -> str | None:
    b = knob_bounds(f)
    if "ge" in b and "le" in b:
        return None if b["ge"] <= v <= b["le"] else f"must be within [{b['ge']}, {b['le']}]"
    if "ge" in b and v < b["ge"]:
        return f"must be >= {b['ge']}"
    if "gt" in b and v <= b["gt"]:
        return f"must be > {b['gt']}"
    if "le" in b and v > b["le"]:
        return f"must be <= {b['le']}"
    return None


def knob_type(f: dataclasses.Field) -> type:
    """int / float / str / bool / list from the annotation ('list[str] | None' -> list)."""
    name = str(f.type).split("|")[0].strip()
    return {"int": int, "float": float, "str": str, "bool": bool}.get(name, list)


def _type_name(f: dataclasses.Field) -> str:
    return {list: "a list of strings"}.get(knob_type(f), knob_type(f).__name__)


def _flag(f: dataclasses.Field) -> str:
    """--name, or --no-name for a setting that is on by default (the flag turns it off)."""
    name = f.name.replace("_", "-")
    return f"--no-{name}" if f.default is True else f"--{name}"


def cli_fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(TrainConfig) if f.metadata["cli"]]


def shared_fields() -> list[dataclasses.Field]:
    """The knobs the Dagster retrain config offers too (same names, defaults and help)."""
    return [f for f in dataclasses.fields(TrainConfig) if f.metadata["shared"]]


def build_arg_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """`lumen train` / `python -m lumen_model.train`: one flag per TrainConfig field."""
    p = parser or argparse.ArgumentParser(prog="lumen train", description=TRAIN_DOC,
                                          formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in cli_fields():
        m, want = f.metadata, knob_type(f)
        default = f.default if f.default is not dataclasses.MISSING else None
        helptext = m["help"] + (" (default: %(default)s)" if default is not None and want is not bool else "")
        if f.default is True:  # on by default: a --no-... flag turns it off
            p.add_argument(_flag(f), dest=f.name, action="store_false", help=m["help"])
        elif want is bool:
            p.add_argument(_flag(f), dest=f.name, action="store_true", help=m["help"])
        elif want is list:
            p.add_argument(_flag(f), dest=f.name, nargs="+", required=m["required"], help=helptext)
        else:
            p.add_argument(_flag(f), dest=f.name, type=want, default=default, choices=m["choices"],
                           required=m["required"], help=helptext)
    p.add_argument("--result-file", help="also write the result json here (rank 0), for callers such as torchrun's parent")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**{f.name: getattr(args, f.name) for f in cli_fields()})
