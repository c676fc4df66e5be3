"""The task decoders, by the name the task registry (pipelines/tasks.py, `Task.decoder`) gives them.

`DECODERS` says where each lives ("module:attribute"), resolved only when asked (`resolve_decoder`), so
that importing one decoder does not load the others; tests/test_task_registry.py checks that it names
exactly the registry's decoders.
"""

from __future__ import annotations

from importlib import import_module

from pipelines.tasks import task_names

DECODERS = {
    "boxes": ("lumen_model.decoders.boxes:decode_boxes",),  # heatmap peaks + sizes -> boxes
    # box-prompted masks: the tiny preset's RoI head or SAM (LumenConfig.mask_decoder)
    "masks": ("lumen_model.decoders.roi_masks:RoiMaskHead", "lumen_model.decoders.masks:SamBoxPrompts"),
    "pose": ("lumen_model.decoders.pose:PoseHead",),  # top-down keypoints in each box
    "text": ("lumen_model.answers:text_answers",),  # the LLM's generated answer (+ the VQA readout where built)
}

MASK_TASKS = task_names(decoder="masks")  # ("instance_segmentation", "referring_segmentation")
POSE_TASKS = task_names(decoder="pose")  # ("pose",)


def resolve_decoder(name: str) -> tuple:
    """The objects (classes or functions) behind a registry decoder name."""
    out = []
    for ref in DECODERS[name]:
        module, attr = ref.split(":")
        out.append(getattr(import_module(module), attr))
    return tuple(out)
