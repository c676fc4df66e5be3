"""Ask the model about one image: one typed instruction in, one typed `Answer` out.

    asker = load_asker("var/models/stage2/v0003")          # loaded once per process (cached)
    a = asker.ask("img.jpg", "the star left of the person")  # task "auto": one object -> grounding
    a.boxes, a.scores, a.heatmap(), a.peaks(), a.to_json()

The labeler types what they want, not the model's wording: a category ("square", "every square") for
every object of a kind, a referring expression ("the star left of the person") for one object, a
question ("what colour is the triangle?") for an answer. `ask` puts it into the task's canonical
instruction (`pipelines.instructions`), exactly as `lumen predict` words its jobs, and decodes with
the same `located_answers` / `text_answers`: the same instruction about the same image gives the
same boxes and scores whichever way it is asked. The FiftyOne App's "Ask Lumen" operator and
`lumen ask` both call this module.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from pathlib import Path

from lumen_model.answers import FLIP_TTA_TASKS, Answer, located_answers, text_answers
from lumen_model.data import short_answer_question
from lumen_model.predict import TASKS, Predictor, checkpoint_categories
from pipelines.errors import InputError
from pipelines.instructions import instruction_for
from pipelines.tasks import CATEGORY, EXPRESSION, task_named

ASK_TASKS = ("auto", *TASKS)
MAX_INSTRUCTION_CHARS = 300  # a sentence, not a document: the model reads a few dozen tokens
_QUANTIFIERS = re.compile(r"^(?:find |locate |show |show me |mark )?(?:every |all(?: of)?(?: the)? |each |any |the )",
                          re.IGNORECASE)
_WORD = re.compile(r"[a-z]+")
_PLURALS = {"person": ("people", "persons"), "man": ("men",), "woman": ("women",), "child": ("children",)}


def resolve_task(text: str, task: str = "auto") -> str:
    """`auto`: a question (but "where is ...?") is answered; "every X" / "all X" / a bare category name
    asks for every object of a kind; anything else names one object (grounding)."""
    if task != "auto":
        if task not in TASKS:
            raise InputError(f"ask: unknown task {task!r}; expected one of {', '.join(ASK_TASKS)}")
        return task
    t = text.strip().lower()
    if t.endswith("?") and not t.startswith("where"):
        return "vqa"
    if re.match(r"^(?:every|all|each)\b", t):
        return "detection"
    return "grounding"


def _forms(name: str) -> set[str]:
    """A category name and its plural forms ("square", "squares"; "person", "people")."""
    n = name.lower()
    return {n, n + "s", n + "es", *_PLURALS.get(n, ())}


def category_named(text: str, categories: list[dict]) -> dict | None:
    """The category the whole text names ("every square", "squares", "all the people"), if any."""
    t = _QUANTIFIERS.sub("", text.strip().lower().rstrip(".!?")).strip()
    for c in categories:
        if t in _forms(c["name"]):
            return c
    return None


def category_mentioned(text: str, categories: list[dict]) -> dict | None:
    """The category whose name comes first in a referring expression ("the star left of the person": star),
    the head noun in most English expressions; None when it names no known category."""
    words = _WORD.findall(text.lower())
    for w in words:
        for c in categories:
            if w in _forms(c["name"]):
                return c
    return None


def clean_instruction(instruction) -> str:
    """One line of text, or one clear error."""
    text = " ".join(str(instruction or "").split())
    if not text:
        raise InputError("ask: the instruction is empty; type what to find or ask, e.g. 'every square', "
                         "'the star left of the person', 'what colour is the triangle?'")
    if len(text) > MAX_INSTRUCTION_CHARS:
        raise InputError(f"ask: the instruction is {len(text)} characters long; keep it under "
                         f"{MAX_INSTRUCTION_CHARS} (one sentence)")
    return text


class Asker:
    """A loaded checkpoint that answers one instruction about one image at a time (thread-safe: the App
    server runs operators in worker threads)."""

    def __init__(self, checkpoint, device: str | None = None, score_threshold: float | None = None):
        t = time.perf_counter()
        self.checkpoint = Path(checkpoint)
        self.predictor = Predictor(checkpoint, device=device, batch_size=1, score_threshold=score_threshold)
        try:
            self.categories = checkpoint_categories(checkpoint)
        except InputError:  # a checkpoint trained without categories: detection then names them as typed
            self.categories = []
        self.load_ms = round((time.perf_counter() - t) * 1000, 1)
        self._lock = threading.Lock()

    def job(self, image: str, text: str, task: str, categories: list[dict] | None = None) -> tuple:
        """The (image, model instruction, meta) job `lumen predict` would make for this request."""
        cats = categories if categories is not None else self.categories
        im = {"id": 0, "path": image}
        t = task_named(task)
        if t.names == CATEGORY and not t.category:  # every object of a kind: the kind the labeler typed
            c = category_named(text, cats)
            name = c["name"] if c else _QUANTIFIERS.sub("", text.lower().rstrip(".!?")).strip() or text
            return im, instruction_for(task, category=name), {"category": name, "category_id": c and c["id"]}
        if t.names == CATEGORY:  # the task's own category (pose: person)
            c = next((c for c in cats if c["name"] == t.category), None)
            return im, instruction_for(task), {"category": t.category, "category_id": c["id"] if c else 1}
        if t.names == EXPRESSION:
            expression = text.rstrip(".")
            c = category_mentioned(expression, cats)
            return im, instruction_for(task, expression=expression), {
                "expression": expression, "sent_id": None, "category": c and c["name"],
                "category_id": c and c["id"]}
        return im, short_answer_question(text), {"question": text}

    def ask(self, image, instruction, task: str = "auto", *, categories: list[dict] | None = None,
            flip_tta: bool = False, skip_boxes=None) -> Answer:
        """Answer `instruction` about `image` (a file). `categories` ([{id, name}]): the classes the answer's
        labels are named from (default: the checkpoint's). `skip_boxes` (pixel boxes [x, y, w, h]): objects
        already labeled on the image; asked for one object, the answer is the best candidate that is none of
        them (a labeler asks for what is missing, and the model's favourite is often an object already
        there). The other tasks ignore it."""
        text = clean_instruction(instruction)
        task = resolve_task(text, task)
        if flip_tta and task not in FLIP_TTA_TASKS:
            flip_tta = False  # only the flip-TTA tasks fuse views; elsewhere the second look would be wasted
        path = Path(image)
        if not path.is_file():
            raise InputError(f"ask: image not found: {path}")
        job = self.job(str(path), text, task, categories)
        t = time.perf_counter()
        with self._lock:
            try:
                if task_named(task).decoder == "text":
                    a = text_answers(self.predictor, [job])[0]
                else:
                    skip = [list(skip_boxes)] if skip_boxes is not None and len(skip_boxes) else None
                    a = located_answers(self.predictor, task, [job], flip_tta=flip_tta, skip=skip)[0]
                    a.heatmap()  # part of the answer the App shows: in the measured time
            except InputError as exc:
                raise _as_command(exc, "ask") from None
        a.meta["typed"] = text
        a.timings["total_ms"] = round((time.perf_counter() - t) * 1000, 2)
        return a

    def masks_in_boxes(self, image, boxes_xywh, category: str, *, flip_tta: bool = True) -> list[dict]:
        """The model's mask of the object inside each box a person drew (pixel [x, y, w, h]), as COCO RLEs in
        the image's pixels: the mask decoder prompted with the person's box instead of the model's own, after
        the model looked for every `category` on the image (the instance-segmentation instruction: the
        decoder reads that heatmap). `flip_tta`: the mean of the image's and its mirror image's masks, as the
        pool's pseudo-labels are made. Drawing a box takes seconds; drawing its mask, over a minute."""
        import numpy as np

        path = Path(image)
        if not path.is_file():
            raise InputError(f"mask boxes: image not found: {path}")
        boxes = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)
        if not len(boxes):
            return []
        if not (np.isfinite(boxes).all() and (boxes[:, 2:] > 0).all()):
            raise InputError(f"mask boxes: every box needs a finite position and a width and height > 0, got "
                             f"{boxes.tolist()[:3]}")
        name = (category or "").strip()
        if not name:
            raise InputError("mask boxes: each box needs its class (the model looks for that kind of object)")
        instruction = instruction_for("instance_segmentation", category=name)
        with self._lock:
            try:
                p = self.predictor
                geo = p.geometry(str(path))
                out = p.locate([str(path)], [instruction])
                mirror = p.locate([str(path)], [instruction], flip=True) if flip_tta else None
                return p.masks_for(out, 0, boxes, geo, str(path), flipped=mirror)
            except InputError as exc:
                raise _as_command(exc, "mask boxes") from None


def _as_command(exc: InputError, command: str) -> InputError:
    """The image checks are predict's: the same one line, naming the command the person ran."""
    return InputError(re.sub(r"^predict: ", f"{command}: ", str(exc)))


_CACHE: OrderedDict = OrderedDict()  # (folder, weights mtime, device, threshold) -> Asker
_CACHE_SIZE = 2  # the model in use and one the labeler compares it with
_CACHE_LOCK = threading.Lock()


def _weights_mtime(checkpoint: Path) -> float:
    weights = checkpoint / "model.safetensors"
    if not checkpoint.is_dir():
        raise InputError(f"ask: checkpoint folder not found: {checkpoint}")
    if not weights.is_file():
        raise InputError(f"ask: {checkpoint} is not a checkpoint (no model.safetensors in it)")
    return max(weights.stat().st_mtime, (checkpoint / "config.json").stat().st_mtime
               if (checkpoint / "config.json").exists() else 0.0)


def load_asker(checkpoint, device: str | None = None, score_threshold: float | None = None) -> Asker:
    """The checkpoint loaded once per process and reused; a checkpoint rewritten in place (new mtime) is
    loaded again. Keeps the last two loaded."""
    folder = Path(checkpoint).expanduser().resolve()
    key = (str(folder), _weights_mtime(folder), device, score_threshold)
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        asker = Asker(folder, device=device, score_threshold=score_threshold)
        _CACHE[key] = asker
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
        return asker


def ask(checkpoint, image, instruction, task: str = "auto", **kwargs) -> Answer:
    """One call: load (or reuse) the checkpoint and answer one instruction about one image."""
    return load_asker(checkpoint).ask(image, instruction, task, **kwargs)
