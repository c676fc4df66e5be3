"""Rendering one demo scene: coloured shapes, stick-figure people, now and then a crowd of dots.

Every object knows the attributes the texts talk about (category, colour, size class, box), and
its outline as polygons that match the drawn pixels, so annotations and pixels agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

COLORS = {  # name -> RGB; far apart so a tiny model (and a test) can tell them from the pixels
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (150, 60, 190),
}
SHAPES = ("circle", "square", "triangle", "star")
CATEGORIES = [{"id": 1, "name": "person", "supercategory": "person"}] + [
    {"id": i + 2, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)
]
CAT_ID = {c["name"]: c["id"] for c in CATEGORIES}
KEYPOINT_NAMES = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
]
SKELETON = [  # COCO's, 1-based
    [16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9],
    [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7],
]

# COCO calls an object small below 32^2 px and large from 96^2 px, on ~640 px images. Ours are
# 128-192 px (about a quarter of the side); scaling by 1/4 would make "small" ~8 px wide, too few
# pixels for a tiny model at 128 px input, so the thresholds are scaled by 3/8: 12^2 and 36^2.
AREA_THRESHOLDS = (12 ** 2, 36 ** 2)
# Areas drawn per size class, kept clear of the thresholds so the class is never a coin toss.
AREA_RANGES = {"small": (60.0, 125.0), "medium": (220.0, 1100.0), "large": (1500.0, 2600.0)}
SIZE_PROBS = {"small": 0.3, "medium": 0.4, "large": 0.3}
PERSON_GRAY = (60, 60, 60)
MAX_OBJECTS = 6


def size_label(area: float) -> str:
    """COCO-style size class of an annotation area (scaled thresholds, see AREA_THRESHOLDS)."""
    return "small" if area < AREA_THRESHOLDS[0] else "medium" if area < AREA_THRESHOLDS[1] else "large"


def polygon_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


@dataclass
class Obj:
    category: str
    color: str | None  # None for people
    polygons: list[np.ndarray]  # (K, 2) float arrays, original pixels
    bbox: list[float]  # COCO xywh
    keypoints: list[float] | None = None  # 51 numbers for people

    @property
    def area(self) -> float:
        return sum(polygon_area(p) for p in self.polygons)

    @property
    def size(self) -> str:
        return size_label(self.area)

    @property
    def center_x(self) -> float:
        return self.bbox[0] + self.bbox[2] / 2


@dataclass
class Scene:
    image: np.ndarray  # H x W x 3 RGB uint8
    objects: list[Obj] = field(default_factory=list)
    crowd: np.ndarray | None = None  # H x W {0,1} mask of the dot cluster
    crowd_color: str | None = None

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])


def shape_polygon(shape: str, cx: float, cy: float, r: float, rot: float = 0.0) -> np.ndarray:
    """The exact outline that is filled: circle (32-gon), axis-aligned square, triangle, 5-point star."""
    if shape == "circle":
        t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)
    if shape == "square":
        return np.array([[cx - r, cy - r], [cx + r, cy - r], [cx + r, cy + r], [cx - r, cy + r]], float)
    if shape == "triangle":
        t = rot + np.array([-np.pi / 2, np.pi / 6, 5 * np.pi / 6])
        return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)
    if shape == "star":
        t = rot - np.pi / 2 + np.arange(10) * np.pi / 5
        rr = np.where(np.arange(10) % 2 == 0, r, r * 0.5)
        return np.stack([cx + rr * np.cos(t), cy + rr * np.sin(t)], 1)
    raise ValueError(f"unknown shape {shape!r}")


# polygon area at r = 1, to turn a wanted area into a radius
_UNIT_AREA = {s: polygon_area(shape_polygon(s, 0.0, 0.0, 1.0)) for s in SHAPES}


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Light gray with a gentle gradient, a blotchy low-frequency texture and pixel noise."""
    base = float(rng.uniform(195, 238))
    gx, gy = rng.uniform(-10, 10, 2)
    ramp = gx * np.linspace(-1, 1, w)[None, :] + gy * np.linspace(-1, 1, h)[:, None]
    blotch = cv2.resize(rng.normal(0, 5, (5, 5)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    img = base + ramp[..., None] + blotch[..., None] + rng.normal(0, 3.5, (h, w, 3))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _boxes_overlap(a: list[float], b: list[float], margin: float = 3) -> bool:
    return not (a[0] + a[2] + margin <= b[0] or b[0] + b[2] + margin <= a[0]
                or a[1] + a[3] + margin <= b[1] or b[1] + b[3] + margin <= a[1])


def _free(box: list[float], objs: list[Obj]) -> bool:
    return all(not _boxes_overlap(box, o.bbox) for o in objs)


def _mask_bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


# Stick-figure joint positions in units of height/8, x to the image's right. COCO's "left" is the
# person's left, which is on the image's right for a person facing the camera.
_BODY = np.array([
    (0, 0.6), (0.25, 0.4), (-0.25, 0.4), (0.5, 0.55), (-0.5, 0.55),  # nose, eyes, ears
    (1.0, 1.7), (-1.0, 1.7), (1.5, 2.9), (-1.5, 2.9), (1.8, 4.0), (-1.8, 4.0),  # arms
    (0.6, 4.3), (-0.6, 4.3), (0.8, 6.0), (-0.8, 6.0), (0.9, 7.7), (-0.9, 7.7),  # legs
])
_HIDEABLE = (9, 10, 15, 16)  # wrists and ankles


def _person(rng: np.random.Generator, cx: float, top: float, height: float, w: int, h: int):
    """Keypoints (51 numbers), the covered pixels, and the eye dots to draw lighter."""
    u = height / 8.0
    # less jitter on the face so eyes and ears stay on the head disk
    xy = _BODY + rng.normal(0, 1, size=(17, 2)) * np.where(np.arange(17) < 5, 0.05, 0.12)[:, None]
    xy = np.stack([cx + xy[:, 0] * u, top + xy[:, 1] * u], 1)
    # A wrist or ankle now and then is hidden: labelled (v=1) but its segment is not drawn.
    hidden = {k for k in _HIDEABLE if rng.random() < 0.1}
    canvas = np.zeros((h, w), np.uint8)
    thick = max(2, int(round(u * 0.45)))
    head = (cx, top + 0.5 * u)
    neck, pelvis = (xy[5] + xy[6]) / 2, (xy[11] + xy[12]) / 2
    limbs = [(5, 7), (7, 9), (6, 8), (8, 10), (11, 13), (13, 15), (12, 14), (14, 16)]  # arms, legs
    # one spine instead of the skeleton's shoulder-hip sides: no closed loop, so the outline has no holes
    segments = [(head, neck), (neck, pelvis), (xy[5], xy[6]), (xy[11], xy[12])] + [
        (xy[a], xy[b]) for a, b in limbs if b not in hidden
    ]
    for p, q in segments:
        cv2.line(canvas, _pt(p), _pt(q), 255, thick, cv2.LINE_8)
    cv2.circle(canvas, _pt(head), max(3, int(round(u * 0.75))), 255, -1, cv2.LINE_8)
    kps = []
    for k, (x, y) in enumerate(xy):
        if not (0 <= x < w and 0 <= y < h):
            kps += [0, 0, 0]  # outside the image: not labelled, as COCO does
        else:
            kps += [round(float(x), 2), round(float(y), 2), 1 if k in hidden else 2]
    return kps, canvas > 0, [xy[1], xy[2]]


def _pt(p) -> tuple[int, int]:
    return int(round(float(p[0]))), int(round(float(p[1])))


def _mask_polygons(mask: np.ndarray) -> list[np.ndarray]:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = [c.reshape(-1, 2).astype(np.float64) for c in contours if len(c) >= 3]
    return sorted((p for p in polys if polygon_area(p) > 0), key=lambda p: (-polygon_area(p), p[0, 0], p[0, 1]))


def _add_people(rng: np.random.Generator, img: np.ndarray, objs: list[Obj]) -> None:
    h, w = img.shape[:2]
    for _ in range(1 + int(rng.random() < 0.3)):
        height = float(rng.uniform(0.5, 0.85) * h)
        cut = rng.random() < 0.15  # feet below the image edge: those keypoints get v=0
        for _try in range(20):
            cx = float(rng.uniform(0.15 * w, 0.85 * w))
            top = float(h - height * rng.uniform(0.75, 0.9)) if cut else float(rng.uniform(2, max(3, h - height - 2)))
            kps, pix, eyes = _person(rng, cx, top, height, w, h)
            polys = _mask_polygons(pix)
            if not polys:
                continue
            bbox = _mask_bbox(pix)
            if _free(bbox, objs):
                img[pix] = PERSON_GRAY
                for e in eyes:
                    cv2.circle(img, _pt(e), max(1, int(round(height / 80))), (235, 235, 235), -1, cv2.LINE_AA)
                objs.append(Obj("person", None, polys, bbox, keypoints=kps))
                break


def _add_shape(rng: np.random.Generator, img: np.ndarray, objs: list[Obj]) -> None:
    h, w = img.shape[:2]
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    color = list(COLORS)[int(rng.integers(len(COLORS)))]
    size = str(rng.choice(list(SIZE_PROBS), p=list(SIZE_PROBS.values())))
    order = ("large", "medium", "small")
    for size in order[order.index(size):]:  # no room at this size: try the next smaller one
        lo, hi = AREA_RANGES[size]
        for _try in range(25):
            r = float(np.sqrt(rng.uniform(lo, hi) / _UNIT_AREA[shape]))
            cx, cy = float(rng.uniform(r + 1, w - r - 1)), float(rng.uniform(r + 1, h - r - 1))
            poly = shape_polygon(shape, cx, cy, r, float(rng.uniform(-0.3, 0.3)))
            poly = np.round(poly, 2)  # what the json says is exactly what is drawn
            (x0, y0), (x1, y1) = poly.min(0), poly.max(0)
            bbox = [round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2), round(float(y1 - y0), 2)]
            if x0 >= 0 and y0 >= 0 and x1 < w and y1 < h and _free(bbox, objs):
                cv2.fillPoly(img, [np.round(poly * 16).astype(np.int32)], COLORS[color], cv2.LINE_AA, shift=4)
                objs.append(Obj(shape, color, [poly], bbox))
                return


def _add_crowd(rng: np.random.Generator, scene: Scene) -> None:
    """A cluster of tiny circle dots: one iscrowd=1 region (RLE), not instances."""
    h, w = scene.image.shape[:2]
    cw, ch = int(rng.integers(18, 30)), int(rng.integers(14, 24))
    color = list(COLORS)[int(rng.integers(len(COLORS)))]
    for _try in range(20):
        x0, y0 = int(rng.integers(0, w - cw)), int(rng.integers(0, h - ch))
        if _free([float(x0), float(y0), float(cw), float(ch)], scene.objects):
            crowd = np.zeros((h, w), np.uint8)
            for _dot in range(int(rng.integers(6, 12))):
                p = (x0 + int(rng.integers(2, cw - 2)), y0 + int(rng.integers(2, ch - 2)))
                cv2.circle(scene.image, p, 2, COLORS[color], -1)
                cv2.circle(crowd, p, 2, 1, -1)
            scene.crowd, scene.crowd_color = crowd, color
            return


def make_scene(rng: np.random.Generator, w: int, h: int) -> Scene:
    """1 to MAX_OBJECTS objects without overlapping boxes; people first so they find room."""
    scene = Scene(_background(rng, w, h))
    if rng.random() < 0.45:
        _add_people(rng, scene.image, scene.objects)
    n_shapes = int(rng.integers(1, MAX_OBJECTS - len(scene.objects) + 1))
    for _ in range(n_shapes):
        _add_shape(rng, scene.image, scene.objects)
    while not scene.objects:  # always at least one object (a small shape always fits)
        _add_shape(rng, scene.image, scene.objects)
    if rng.random() < 0.15:
        _add_crowd(rng, scene)
    return scene
