"""Instruction and answer wording per task (LUMEN_SPEC.md, 'Instructions and answers').

One instruction = one concept = one heatmap. The first template of each task is the canonical
wording; `paraphrase=True` draws from the others with a seeded RNG so the same input always gives
the same text.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

from pipelines.tasks import TASKS

# from the task registry (pipelines/tasks.py), in its order: the tokenizer's special tokens keep their ids
TASK_TOKENS = {t.name: t.token for t in TASKS if t.token is not None}
LOC_TOKEN = "[LOC]"
SPECIAL_TOKENS = (LOC_TOKEN, *TASK_TOKENS.values())

TEMPLATES = {t.name: t.templates for t in TASKS if t.templates}


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
