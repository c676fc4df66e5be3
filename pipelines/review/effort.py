"""A labeler's time: seconds per review action, and the expected seconds of reviewing an image.

The review loop is paid for in a person's time, not in boxes: accepting a shown label is a glance,
drawing a missed object's mask is over a minute. `ActionCosts` turns counts of actions (per kind,
`KINDS`) into seconds; the review queue's cost-aware order (`review_gain_per_s`, queue.py) and the
loop bench (bench/bench_loop.py) use the same numbers. The defaults come from published annotation
studies where one gives a number, and say so where none does (see `ActionCosts`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

from pipelines.errors import InputError

# accept: a shown label verified as right; reject: verified as wrong; draw_box: an object drawn as a
# box only; draw_mask: an object drawn as a mask (its box comes with it); image: an image opened and
# looked over; prompt: an instruction typed into the App's Ask Lumen and its answer checked against the
# object (accepting a right answer included; a wrong one is then drawn, a draw of its own)
KINDS = ("accept", "reject", "draw_box", "draw_mask", "image", "prompt")


@dataclass(frozen=True)
class ActionCosts:
    """Seconds of a person's time per action kind.

    accept_s, reject_s = 2.0: one yes/no verification of a shown box. Papadopoulos, Uijlings, Keller,
        Ferrari, "We don't need no bounding-boxes: Training object class detectors using only human
        verification", CVPR 2016 (arXiv 1602.08405), train detectors from verifications alone with
        6-9x less total annotation time than drawing at 42 s per box (ILSVRC, Su, Deng, Fei-Fei,
        AAAI HCOMP workshop 2012, as that paper's introduction quotes it): 4.7-7 s of verifying per
        box produced, over several verification rounds, so one verification takes less. The paper's
        own per-verification time was not found in the text available to us: 2 s is an assumption
        under that bound, not a measurement; 4.7 is the conservative end of the cited range.
    draw_box_s = 7.0: a box by extreme clicking (Papadopoulos, Uijlings, Keller, Ferrari, "Extreme
        clicking for efficient object annotation", ICCV 2017, arXiv 1708.02750: about 7 s per box,
        against about 35 s for the ILSVRC protocol of drawing and verifying boxes the usual way);
        35 is the usual-way end.
    draw_mask_s = 79.2: an instance mask drawn as a polygon (Lin et al., "Microsoft COCO: Common
        Objects in Context", ECCV 2014, arXiv 1405.0312: "over 22 worker hours per 1,000
        segmentations", 22 * 3600 / 1000 s). The box comes with the mask: an object drawn with a mask
        costs draw_mask_s only.
    image_s = 0.0: opening an image and looking it over for missed objects. No study we cite gives
        a number for this step on its own (the numbers above include looking at the object); 0 keeps
        the seconds to the cited per-action numbers.
    prompt_s = None: typing an instruction for one object into the App's Ask Lumen ("the red star
        on the left") and checking the model's answer against the object, accepting it when right. No
        published study we know gives a time for this step, and we have not measured people doing it:
        there is no default, and counting prompts without setting it is an error. The loop bench
        (`--ask-s`, `--ask-range`) shows its results over a range of this cost (3, 5, 10 s by default:
        typing a few words, about as long as one to a few verifications, well under a drawn mask).
    """

    accept_s: float = 2.0
    reject_s: float = 2.0
    draw_box_s: float = 7.0
    draw_mask_s: float = 79.2
    image_s: float = 0.0
    prompt_s: float | None = None

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None and f.name == "prompt_s":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or v == float("inf"):
                raise InputError(f"labeler cost {f.name} must be a number of seconds >= 0, got {v!r}")

    def per_kind(self) -> dict[str, float | None]:
        return {kind: getattr(self, f"{kind}_s") for kind in KINDS}

    def as_dict(self) -> dict:
        return asdict(self)

    def seconds(self, counts: Mapping[str, int]) -> dict[str, float]:
        """Counts of actions per kind -> seconds per kind and their `total`."""
        unknown = sorted(set(counts) - set(KINDS))
        if unknown:
            raise InputError(f"unknown labeler action kind(s) {', '.join(map(repr, unknown))}; "
                             f"expected {', '.join(KINDS)}")
        out = {}
        for kind, cost in self.per_kind().items():
            n = counts.get(kind, 0)
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise InputError(f"labeler action count {kind!r} must be a whole number >= 0, got {n!r}")
            if n and cost is None:
                raise InputError(f"{n} {kind!r} action(s) counted but no seconds per {kind!r} set "
                                 f"(ActionCosts.{kind}_s): no study gives a default")
            out[kind] = round(n * (cost or 0.0), 2)
        out["total"] = round(sum(out.values()), 2)
        return out

    def draw_s(self, masks: bool = True) -> float:
        """Seconds of drawing one missed object: its mask where the task has masks, else its box."""
        return self.draw_mask_s if masks else self.draw_box_s

    def expected_review_s(self, expected_right: float, expected_wrong: float, expected_missed: float, *,
                          masks: bool = True) -> float:
        """Expected seconds of reviewing one image: open it, verify each shown label (accepting the
        likely right ones, rejecting the likely wrong ones) and draw the likely missed objects."""
        return (self.image_s + self.accept_s * expected_right + self.reject_s * expected_wrong
                + self.draw_s(masks) * expected_missed)


def gain_per_second(expected_errors: float, expected_s: float) -> float:
    """Errors a labeler is expected to fix per second of review; 0 where nothing is expected."""
    return expected_errors / expected_s if expected_s > 0 and expected_errors > 0 else 0.0
