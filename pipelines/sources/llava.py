"""LLaVA instruction json: conversations kept turn by turn.

Records are human->gpt turns (`llava:<id>/turn:<k>`; an entry without any turn is one record
`llava:<id>`; `<id>` is `#<position>` when the entry has no id). The `<image>` marker is stripped from the
instruction; the image itself is the sample's image.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from pipelines.images import ImageProblem, ImageTooLarge, image_size
from pipelines.sources.common import Draft, ReadResult, image_outside, load_json, unsafe_image_name


def _turns(conv) -> list[tuple[str | None, str | None]]:
    """Pair each human message with the gpt reply that follows it."""
    pairs = []
    msgs = conv if isinstance(conv, list) else []
    i = 0
    while i < len(msgs):
        m = msgs[i] if isinstance(msgs[i], dict) else {}
        if m.get("from") == "human":
            nxt = msgs[i + 1] if i + 1 < len(msgs) and isinstance(msgs[i + 1], dict) else {}
            reply = nxt.get("value") if nxt.get("from") == "gpt" else None
            pairs.append((m.get("value"), reply))
            i += 2 if reply is not None else 1
        else:
            pairs.append((None, m.get("value")))
            i += 1
    return pairs


def read_llava(path, *, images_dir=None) -> ReadResult:
    data = load_json(path, list, "llava")
    images_dir = Path(images_dir) if images_dir else None
    if images_dir is None and (Path(path).parent.parent / "coco" / "images").is_dir():
        images_dir = Path(path).parent.parent / "coco" / "images"
    src = str(path)
    drafts, quarantine, read, sizes = [], [], 0, {}
    id_counts = Counter(str(item["id"]) for item in data if isinstance(item, dict) and item.get("id") is not None)
    for pos, item in enumerate(data):
        cid = str(item["id"]) if isinstance(item, dict) and item.get("id") is not None else f"#{pos}"
        turns = _turns(item.get("conversations")) if isinstance(item, dict) else []
        if not turns:
            read += 1
            quarantine.append((src, f"llava:{cid}", "record has no conversation"))
            continue
        image = item.get("image") if isinstance(item, dict) else None
        size = None
        outside = None
        if isinstance(image, str) and image:
            outside = image_outside(images_dir, image) if images_dir is not None else unsafe_image_name(image)
        if isinstance(image, str) and image and images_dir is not None and not outside:
            if image not in sizes:
                f = images_dir / image
                sizes[image] = None
                if f.is_file():
                    try:  # the header only; too many pixels to decode is a reason of its own
                        sizes[image] = (str(f.resolve()), *image_size(f))
                    except ImageTooLarge as exc:
                        sizes[image] = str(exc)
                    except ImageProblem:  # not an image: quarantined below like a missing one
                        pass
            size = sizes[image]
        for k, (question, answer) in enumerate(turns):
            read += 1
            rid = f"llava:{cid}/turn:{k}"
            if id_counts.get(cid, 0) > 1:  # turn ids would collide: no copy is kept silently
                quarantine.append((src, rid, f"duplicate conversation id {cid} ({id_counts[cid]} copies)"))
            elif not isinstance(image, str) or not image:
                quarantine.append((src, rid, "conversation without an image"))
            elif outside:
                quarantine.append((src, rid, outside))
            elif isinstance(size, str):
                quarantine.append((src, rid, size))
            elif images_dir is not None and size is None:
                quarantine.append((src, rid, f"image file not found or unreadable: {image}"))
            elif not question or not str(question).replace("<image>", "").strip():
                quarantine.append((src, rid, "turn without a human question"))
            elif not answer or not str(answer).strip():
                quarantine.append((src, rid, "turn without a gpt answer"))
            else:
                p, w, h = size or (image, 0, 0)
                drafts.append(Draft(task="vqa", image_id=None, image_path=p, width=w, height=h,
                                    instruction=str(question).replace("<image>", "").strip(),
                                    answer=str(answer).strip(), source_ids=[rid]))
    return ReadResult(drafts, quarantine, read)
