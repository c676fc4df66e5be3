"""The one definition of the model's tasks: every list of tasks elsewhere is derived from `TASKS`.

A task has two names: the one the shards, training, `lumen predict` and `lumen ask` use ("detection")
and the one the evaluation and its metric keys use ("bbox", pycocotools' iouType). `task_named`
takes either. Adding a task means one `Task` here plus its decoder (`lumen_model/decoders`, named in
`lumen_model.decoders.DECODERS`), its loss and its metric (`pipelines.evaluation.METRICS`);
tests/test_task_registry.py checks that every front agrees with this table.

Plain data, no torch: `pipelines` must not import the model.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.errors import InputError

# What an instruction names, which decides how predict makes its jobs and how ask words a request.
CATEGORY, EXPRESSION, QUESTION = "category", "expression", "question"


@dataclass(frozen=True)
class Task:
    name: str  # shards, training, `lumen predict --task`, `lumen ask --task`
    eval_name: str  # `lumen evaluate --task`, the evaluation's config and its metric keys ("bbox/AP50")
    token: str | None  # the answer's task token (it routes to the decoder); None: answered in words, no heatmap
    templates: tuple[str, ...]  # instruction wordings, the first canonical (pipelines.instructions)
    names: str  # what the instruction names: CATEGORY (every object of a kind), EXPRESSION (one object), QUESTION
    decoder: str  # lumen_model.decoders.DECODERS key: what turns the model's output into the answer
    stages: tuple[int, ...]  # the training stages that train it by default
    flip_tta: bool  # predictions may fuse the mirror image's view (pose would need left and right swapped)
    metric: str  # pipelines.evaluation.METRICS key: the function that scores it
    eval_source: str  # the source partition whose val split is its ground truth (pipelines.layout)
    category: str | None = None  # the one category it asks about (pose: person); None: any
    ask_label: str = ""  # the App's Ask Lumen menu: what a labeler gets by picking it
    counted_as: str = ""  # what the App's answer line counts ("3 boxes for 'every square'"); "" for answers in words
    # its boxes move toward the mask head's tight box of each (LumenConfig.mask_box_weight): a mask task's own masks,
    # or masks made only for that and not answered (detection: val box AP 0.672 -> 0.705; docs/model.md)
    mask_tightens_boxes: bool = False


# The order is part of the checkpoint format: the task tokens are added to the tokenizer in this order.
TASKS: tuple[Task, ...] = (
    Task("detection", "bbox", "[DET]", (
        "Please find the location of all {category} in the image. Respond with boxes.",
        "Where are all the {category} in this image? Respond with boxes.",
        "Locate every {category} in the picture. Respond with boxes.",
    ), CATEGORY, "boxes", (1,), True, "coco_metrics", "coco",
        ask_label="Every object of a kind (boxes)", counted_as="boxes", mask_tightens_boxes=True),
    Task("instance_segmentation", "segm", "[SEG]", (
        "Please find the location of all {category} in the image. Respond with masks.",
        "Segment every {category} in this image. Respond with masks.",
    ), CATEGORY, "masks", (1, 2), True, "coco_metrics", "coco",
        ask_label="Every object of a kind (masks)", counted_as="masks", mask_tightens_boxes=True),
    Task("pose", "keypoints", "[POSE]", (
        "Please find the location of all person in the image. Respond with keypoints.",
        "Where are the people in this image? Respond with keypoints.",
    ), CATEGORY, "pose", (1, 2), False, "coco_metrics", "coco-keypoints", category="person",
        ask_label="People's keypoints", counted_as="people"),
    Task("grounding", "grounding", "[GRD]", (
        "Please find the location of {expression}. Respond with a box.",
        "Where is {expression} in the image? Respond with a box.",
    ), EXPRESSION, "boxes", (1,), False, "grounding_accuracy", "refcoco",
        ask_label="One object (a box)", counted_as="box", mask_tightens_boxes=True),
    Task("referring_segmentation", "refseg", "[RSEG]", (
        "Please find the location of {expression}. Respond with a mask.",
        "Segment {expression} in the image. Respond with a mask.",
    ), EXPRESSION, "masks", (1, 2), False, "refseg_iou", "refcoco",
        ask_label="One object (a mask)", counted_as="mask", mask_tightens_boxes=True),
    # stage 2: the VQA readout (lumen_model/vqa_readout.py) is the tiny preset's answer decoder; without one
    # training drops the questions
    Task("vqa", "vqa", None, (), QUESTION, "text", (1, 2), False, "vqa_accuracy", "vqav2",
         ask_label="An answer to a question"),
)

_BY_NAME = {t.name: t for t in TASKS} | {t.eval_name: t for t in TASKS}


class UnknownTask(InputError, ValueError):
    """A task name in neither vocabulary (one line naming the known ones)."""


def task_named(name: str) -> Task:
    """The task called `name` in either vocabulary ("detection" or "bbox")."""
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        known = ", ".join(t.name if t.name == t.eval_name else f"{t.name} ({t.eval_name})" for t in TASKS)
        raise UnknownTask(f"unknown task {name!r}; expected one of {known}") from None


def task_names(**where) -> tuple[str, ...]:
    """The names of the tasks whose fields equal `where`, in registry order: task_names(decoder="masks")."""
    return tuple(t.name for t in TASKS if all(getattr(t, k) == v for k, v in where.items()))


def stage_tasks(stage: int) -> tuple[str, ...]:
    """The tasks a training stage trains by default."""
    return tuple(t.name for t in TASKS if stage in t.stages)


NAMES = task_names()  # ("detection", ..., "vqa")
EVAL_NAMES = tuple(t.eval_name for t in TASKS)  # ("bbox", "segm", "keypoints", "grounding", "refseg", "vqa")
STAGES = tuple(sorted({s for t in TASKS for s in t.stages}))
