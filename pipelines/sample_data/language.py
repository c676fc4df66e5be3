"""The texts about a scene: referring expressions, VQA questions with human-like answers, LLaVA chats.

Everything said is derived from the scene's objects, so it is checkable against the annotations
and pixels: an expression names exactly one object, an answer is the true count/colour/shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.sample_data.scene import COLORS, SHAPES, Obj, Scene

SIZE_WORDS = {"large": "big", "small": "small"}  # medium objects get no size word
POSITION_GAP = 10.0  # px between box centres before "on the left/right" is said
PLURALS = {"person": "people", "circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars"}
NUMBER_WORDS = ["no", "one", "two", "three", "four", "five", "six"]
MAX_SENTENCES = 3
NOISY_ANSWERS_MAX = 3  # of 10 human answers at most 3 disagree, so the majority is always the truth


def _matching(objs: list[Obj], category: str, color: str | None = None, size: str | None = None) -> list[Obj]:
    return [p for p in objs if p.category == category and (color is None or p.color == color)
            and (size is None or p.size == size)]


def _side(o: Obj, group: list[Obj]) -> str | None:
    """'left'/'right' when o is clearly the leftmost/rightmost of at least two objects."""
    if len(group) < 2:
        return None
    xs = sorted(group, key=lambda p: p.center_x)
    if o is xs[0] and xs[1].center_x - o.center_x >= POSITION_GAP:
        return "left"
    if o is xs[-1] and o.center_x - xs[-2].center_x >= POSITION_GAP:
        return "right"
    return None


def referring_expressions(scene: Scene, i: int, rng: np.random.Generator) -> list[str]:
    """Up to MAX_SENTENCES expressions that each single out scene.objects[i] ([] if none does).

    Grammar: "the [big|small] [colour] category [on the left|on the right]". Without a position the
    words must match this object only; with one, the object must be the clear extreme of the
    objects matching the other words.
    """
    objs, o = scene.objects, scene.objects[i]
    if scene.crowd is not None and o.category == "circle":
        return []  # the crowd's dots are circles too: "the circle" would not be clear to a person
    # size words for shapes only: a stick figure's area says little about how big it looks
    c, col = o.category, o.color
    size_word = SIZE_WORDS.get(o.size) if col else None
    options = []
    if len(_matching(objs, c)) == 1:
        options.append(f"the {c}")
    if col and len(_matching(objs, c, col)) == 1:
        options.append(f"the {col} {c}")
    if size_word and len(_matching(objs, c, size=o.size)) == 1:
        options.append(f"the {size_word} {c}")
    if size_word and col and len(_matching(objs, c, col, o.size)) == 1:
        options.append(f"the {size_word} {col} {c}")
    side = _side(o, _matching(objs, c))
    if side:
        options.append(f"the {c} on the {side}")
    side = _side(o, _matching(objs, c, col)) if col else None
    if side:
        options.append(f"the {col} {c} on the {side}")
    if not options:
        return []
    keep = sorted(rng.permutation(len(options))[:MAX_SENTENCES].tolist())
    return [options[k] for k in keep]


@dataclass
class Question:
    text: str
    answer: str
    question_type: str  # VQAv2's: the question's first words
    answer_type: str  # "number", "yes/no" or "other"
    alternatives: list[str]  # what a careless annotator might say instead
    sentence: str  # the same answer as a chat reply


def _count_sentence(n: int, category: str) -> str:
    noun = category if n == 1 else PLURALS[category]
    return f"There {'is' if n == 1 else 'are'} {NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else n} {noun}."


def questions(scene: Scene, rng: np.random.Generator) -> list[Question]:
    """A counting question, then up to two of: colour of a shape, shape of a colour, is-there."""
    objs = scene.objects
    # The crowd's dots are circles of one colour: leave circles (and that colour) out of questions.
    askable = [s for s in SHAPES if not (scene.crowd is not None and s == "circle")] + ["person"]
    shapes = [o for o in objs if o.category in SHAPES]
    out = []
    c = askable[int(rng.integers(len(askable)))]
    n = len(_matching(objs, c))
    out.append(Question(f"How many {PLURALS[c]} are there?", str(n), "how many", "number",
                        [str(max(0, n - 1)), str(n + 1)], _count_sentence(n, c)))
    extra = []
    singles = [o for o in shapes if o.category in askable and len(_matching(objs, o.category)) == 1]
    if singles:
        o = singles[int(rng.integers(len(singles)))]
        extra.append(Question(f"What color is the {o.category}?", o.color, "what color is the", "other",
                              [k for k in COLORS if k != o.color], f"The {o.category} is {o.color}."))
    lone_colors = [o for o in shapes if sum(p.color == o.color for p in shapes) == 1 and o.color != scene.crowd_color]
    if lone_colors:
        o = lone_colors[int(rng.integers(len(lone_colors)))]
        extra.append(Question(f"What shape is the {o.color} object?", o.category, "what shape is the", "other",
                              [s for s in SHAPES if s != o.category], f"The {o.color} object is a {o.category}."))
    probe = askable[int(rng.integers(len(askable)))]
    present = bool(_matching(objs, probe))
    article = "an" if probe[0] in "aeiou" else "a"
    extra.append(Question(f"Is there {article} {probe} in the image?", "yes" if present else "no", "is there a",
                          "yes/no", ["no" if present else "yes"],
                          f"Yes, there is {article} {probe}." if present else f"No, there is no {probe}."))
    keep = sorted(rng.permutation(len(extra))[:2].tolist())
    return out + [extra[k] for k in keep]


def human_answers(rng: np.random.Generator, q: Question) -> list[dict]:
    """VQAv2's 10 answers: mostly the truth, a few careless ones (never a majority)."""
    n_noisy = min(NOISY_ANSWERS_MAX, int(rng.binomial(10, 0.08)))
    noisy = set(rng.permutation(10)[:n_noisy].tolist())
    answers = []
    for k in range(10):
        a = q.alternatives[int(rng.integers(len(q.alternatives)))] if k in noisy else q.answer
        conf = "yes" if k not in noisy else ("maybe" if rng.random() < 0.5 else "no")
        answers.append({"answer": a, "answer_confidence": conf, "answer_id": k + 1})
    return answers


def describe(scene: Scene) -> str:
    """One sentence listing what is in the scene, grouped by size word, colour and category."""
    groups: dict[tuple, int] = {}
    for o in sorted(scene.objects, key=lambda p: (p.category != "person", p.center_x)):
        key = (SIZE_WORDS.get(o.size, "") if o.color else "", o.color or "", o.category)
        groups[key] = groups.get(key, 0) + 1
    parts = []
    for (size_word, color, category), n in groups.items():
        noun = category if n == 1 else PLURALS[category]
        count = ("an" if (size_word or color or category)[0] in "aeiou" else "a") if n == 1 else NUMBER_WORDS[n]
        parts.append(" ".join(w for w in (count, size_word, color, noun) if w))
    if scene.crowd is not None:
        parts.append(f"a cluster of tiny {scene.crowd_color} dots")
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"The image shows {listed} on a light gray background."


_OPENERS = ("Describe the image.", "What do you see in this picture?", "What objects are in this image?")


def conversation(scene: Scene, qs: list[Question], rng: np.random.Generator) -> list[dict]:
    """A LLaVA chat of 2-3 turns: a description, then the questions answered in sentences."""
    opener = _OPENERS[int(rng.integers(len(_OPENERS)))]
    turns = [(opener, describe(scene))] + [(q.text, q.sentence) for q in qs[: int(rng.integers(1, 3))]]
    conv = []
    for k, (ask, reply) in enumerate(turns):
        conv.append({"from": "human", "value": f"<image>\n{ask}" if k == 0 else ask})
        conv.append({"from": "gpt", "value": reply})
    return conv
