"""A picture of one sample: the image, its heatmap over it, the instruction and the answer."""

from __future__ import annotations

import cv2
import numpy as np

from pipelines.geometry import SquarePad
from pipelines.heatmaps import decode_png


def render_preview(row: dict, width: int = 384) -> bytes:
    img = cv2.imread(row["image_path"], cv2.IMREAD_COLOR)
    if img is None:
        img = np.full((row["image_height"] or 128, row["image_width"] or 128, 3), 200, np.uint8)
    h, w = img.shape[:2]
    if row.get("heatmap"):
        geo = SquarePad(w, h, row["input_size"], row["heatmap_size"])
        heat = geo.heatmap_to_image(decode_png(row["heatmap"]))
        colored = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
        img = np.where(heat[..., None] > 0.05, (0.5 * img + 0.5 * colored).astype(np.uint8), img)
    for b in row.get("boxes") or []:
        x, y, bw, bh = (int(round(v)) for v in b)
        cv2.rectangle(img, (x, y), (x + bw, y + bh), (255, 255, 255), 1)
    scale = width / w
    img = cv2.resize(img, (width, int(round(h * scale))), interpolation=cv2.INTER_NEAREST)
    lines = _wrap(f"Q: {row['instruction']}", 52) + _wrap(f"A: {row['answer']}", 52)
    band = np.full((18 * len(lines) + 8, width, 3), 255, np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(band, line, (6, 18 * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (20, 20, 20), 1, cv2.LINE_AA)
    ok, buf = cv2.imencode(".png", np.vstack([img, band]))
    return buf.tobytes()


def _wrap(text: str, n: int) -> list[str]:
    words, lines, cur = text.split(), [], ""
    for word in words:
        if len(cur) + len(word) + 1 > n and cur:
            lines.append(cur)
            cur = word
        else:
            cur = f"{cur} {word}".strip()
    return lines + ([cur] if cur else [])
