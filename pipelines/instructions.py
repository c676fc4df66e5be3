"""Instruction and answer wording per task (LUMEN_SPEC.md, 'Instructions and answers').

One instruction = one concept = one heatmap. The first template of each task is the canonical
wording; `paraphrase=True` draws from the others with a seeded RNG so the same input always gives
the same text.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

TASK_TOKENS = {
    "detection": "[DET]",
    "instance_segmentation": "[SEG]",
    "pose": "[POSE]",
    "grounding": "[GRD]",
    "referring_segmentation": "[RSEG]",
}
LOC_TOKEN = "[LOC]"
SPECIAL_TOKENS = (LOC_TOKEN, *TASK_TOKENS.values())

TEMPLATES = {
    "detection": (
        "Please find the location of all {category} in the image. Respond with boxes.",
        "Where are all the {category} in this image? Respond with boxes.",
        "Locate every {category} in the picture. Respond with boxes.",
    ),
    "instance_segmentation": (
        "Please find the location of all {category} in the image. Respond with masks.",
        "Segment every {category} in this image. Respond with masks.",
    ),
    "pose": (
        "Please find the location of all person in the image. Respond with keypoints.",
        "Where are the people in this image? Respond with keypoints.",
    ),
    "grounding": (
        "Please find the location of {expression}. Respond with a box.",
        "Where is {expression} in the image? Respond with a box.",
    ),
    "referring_segmentation": (
        "Please find the location of {expression}. Respond with a mask.",
        "Segment {expression} in the image. Respond with a mask.",
    ),
}


def instruction_for(task: str, *, category: str | None = None, expression: str | None = None,
                    paraphrase: bool = False, key: str = "", seed: int = 0) -> str:
    idx = 0
    if paraphrase and len(TEMPLATES[task]) > 1:
        digest = hashlib.blake2b(f"{seed}|{key}".encode(), digest_size=4).digest()
        idx = int.from_bytes(digest, "little") % len(TEMPLATES[task])
    if expression is not None:  # referring expressions rarely repeat: nothing to cache
        return TEMPLATES[task][idx].format(category=category, expression=expression)
    return _category_text(task, idx, category)


@lru_cache(maxsize=4096)  # conversion asks for the same few hundred category texts millions of times
def _category_text(task: str, idx: int, category: str | None) -> str:
    return TEMPLATES[task][idx].format(category=category, expression=None)


@lru_cache(maxsize=64)
def answer_for(task: str, found: bool = True) -> str:
    token = TASK_TOKENS[task]
    return f"Sure, the location is {LOC_TOKEN}. {token}" if found else f"Sure, there is none. {token}"
