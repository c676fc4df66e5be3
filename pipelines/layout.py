"""Where each source partition's files live in a sources folder, and how each is converted.

The bundled demo (`lumen sample-data`) and a real download share this layout, so the same
partition names work for both:

    coco            coco/annotations/instances_{train,val}.json
    coco-keypoints  coco/annotations/person_keypoints_{train,val}.json
    refcoco         refcoco/refs(unc).p + refcoco/instances.json (split chosen per ref)
    vqav2           vqa/v2_OpenEnded_mscoco_{split}_questions.json + v2_mscoco_{split}_annotations.json
    llava           llava/llava_instruct.json (one split: all)

The unlabeled pool (`POOL_FILE`, COCO's image_info layout: images + categories, no annotations) is
not a source partition: nothing trains on it; it is what the model pseudo-labels for review.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipelines.tasks import EVAL_NAMES, task_named

SOURCES = ("coco", "coco-keypoints", "refcoco", "vqav2", "llava")
SPLITS = ("train", "val")
POOL_FILE = "coco/annotations/image_info_unlabeled.json"  # relative to a sources folder
IMAGES_DIR = "coco/images"


def pool_file(root) -> Path:
    """The unlabeled pool's image_info json: the default input of pseudo-labelling (never a val split)."""
    return Path(root) / POOL_FILE


@dataclass(frozen=True)
class ConvertSpec:
    source: str
    split: str
    fmt: str
    input_path: Path
    options: dict = field(default_factory=dict)

    def shard_dir(self, shards_root) -> Path:
        return Path(shards_root) / self.source / self.split

    def files(self) -> list[Path]:
        """The files this conversion reads (what the watched-folder sensor looks at)."""
        found = ([self.input_path / f"refs({self.options.get('split_by', 'unc')}).p", self.input_path / "instances.json"]
                 if self.fmt == "refcoco" else [self.input_path])
        if "annotations" in self.options:
            found.append(Path(self.options["annotations"]))
        return found


def source_specs(source: str, root) -> list[ConvertSpec]:
    """The conversions of one source partition (one per split)."""
    root = Path(root)
    ann, vqa = root / "coco" / "annotations", root / "vqa"
    if source == "coco":
        return [ConvertSpec(source, s, "coco", ann / f"instances_{s}.json", {"split": s}) for s in SPLITS]
    if source == "coco-keypoints":
        return [ConvertSpec(source, s, "coco-keypoints", ann / f"person_keypoints_{s}.json", {"split": s}) for s in SPLITS]
    if source == "refcoco":
        return [ConvertSpec(source, s, "refcoco", root / "refcoco", {"split": s, "split_by": "unc"}) for s in SPLITS]
    if source == "vqav2":
        return [ConvertSpec(source, s, "vqav2", vqa / f"v2_OpenEnded_mscoco_{s}_questions.json",
                            {"split": s, "annotations": vqa / f"v2_mscoco_{s}_annotations.json"}) for s in SPLITS]
    if source == "llava":
        return [ConvertSpec(source, "all", "llava", root / "llava" / "llava_instruct.json", {"split": "all"})]
    raise ValueError(f"unknown source partition {source!r}; expected one of {', '.join(SOURCES)}")


def eval_ground_truth(task: str, root, work_dir) -> tuple[str, dict, Path]:
    """(predict task, predict's keyword arguments, ground-truth file) of one evaluation task on the val split
    of its source partition (the task registry's `eval_source`).

    RefCOCO's expressions are written once into `work_dir` (the evaluation's own folder)."""
    if task not in EVAL_TASKS:
        from pipelines.errors import InputError

        raise InputError(f"unknown evaluation task {task!r}; expected one of {', '.join(EVAL_TASKS)}")
    t = task_named(task)
    root, work_dir = Path(root), Path(work_dir)
    ann, vqa = root / "coco" / "annotations", root / "vqa"
    if t.eval_source == "refcoco":
        from pipelines.evaluation import refcoco_expressions

        gt = work_dir / "refcoco_val_expressions.json"
        if not gt.exists():
            import json

            gt.write_text(json.dumps(refcoco_expressions(root / "refcoco", "val")))
        return t.name, {"expressions": str(gt)}, gt
    if t.eval_source == "vqav2":
        return t.name, {"questions": str(vqa / "v2_OpenEnded_mscoco_val_questions.json")}, vqa / "v2_mscoco_val_annotations.json"
    gt = {"coco": ann / "instances_val.json", "coco-keypoints": ann / "person_keypoints_val.json"}[t.eval_source]
    return t.name, {"annotations": str(gt)}, gt


EVAL_TASKS = EVAL_NAMES  # the task registry's evaluation names (pipelines/tasks.py)


def convert_partition(source: str, sources_root, shards_root, *, input_size: int, progress: bool = False) -> list[dict]:
    """Convert every split of one source partition; returns their manifests."""
    from pipelines.convert import convert_source

    manifests = []
    for spec in source_specs(source, sources_root):
        manifests.append(convert_source(spec.fmt, spec.input_path, spec.shard_dir(shards_root), source_name=source,
                                        input_size=input_size, progress=progress, **spec.options))
    return manifests
