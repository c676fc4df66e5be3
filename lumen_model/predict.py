"""Inference: images + instructions -> COCO results json + one heatmap PNG per instruction.

Heatmap tasks read the [LOC] hidden state of the answer "Sure, the location is [LOC]"; the LLM's
own choice between "the location" and "there is none" weights every detection (p_none), so an
absent category yields low scores rather than boxes. The task token routes to the decoder.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from pycocotools import mask as mask_utils

from lumen_model.checkpoint import check_finite, load_model
from lumen_model.data import Collator, short_answer_question
from lumen_model.answers import FLIP_TTA_TASKS, SINGLE_OBJECT_TASKS, Answer, located_answers, text_answers
from lumen_model.decoders.boxes import unflip_boxes
from lumen_model.decoders.pose import decode_keypoints
from lumen_model.decoders.roi_masks import paste
from lumen_model.streaming import ImageInstructionJobs, JsonArrayWriter
from pipelines.errors import InputError
from pipelines.sources.common import load_json
from pipelines.geometry import SquarePad, pad_image
from pipelines.images import check_pixels
from pipelines.heatmaps import encode_png
from pipelines.instructions import TASK_TOKENS, instruction_for
from pipelines.tasks import CATEGORY, EXPRESSION, NAMES, task_named
from pipelines.progress import progress as progress_bar

log = logging.getLogger(__name__)
TASK_TOKENS_ORDER = list(TASK_TOKENS.values())
TASKS = NAMES  # the task registry's (pipelines/tasks.py)
LOC_PREFIX = "Sure, the location is [LOC]."  # forced answer; the next token is the generated task token


def _read_json(path):
    return load_json(path, object, "predict")  # one clear line for a missing or broken file


def _image_id(name: str, fallback: int) -> int:
    digits = re.findall(r"\d+", Path(name).stem)
    return int(digits[-1]) if digits else fallback


def list_images(images_dir, annotations=None) -> list[dict]:
    images_dir = Path(images_dir)
    if annotations:
        data = _read_json(annotations)
        return [{"id": im["id"], "path": str(images_dir / im["file_name"]), "file_name": im["file_name"]}
                for im in data["images"]]
    if not images_dir.is_dir():
        raise InputError(f"predict: image folder not found: {images_dir}")
    files = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise InputError(f"predict: no images in {images_dir}")
    return [{"id": _image_id(p.name, i + 1), "path": str(p), "file_name": p.name} for i, p in enumerate(files)]


def checkpoint_categories(checkpoint) -> list[dict]:
    """The detection categories a checkpoint was trained on (recorded in its config.json by training)."""
    config = Path(checkpoint) / "config.json"
    cats = _read_json(config).get("categories") if config.is_file() else None
    if not cats:
        raise InputError(f"predict: checkpoint {checkpoint} names no categories; give --annotations (a COCO "
                         "instances or image_info json with categories) or --categories NAME ...")
    return cats


class Predictor:
    def __init__(self, checkpoint, device: str | None = None, batch_size: int = 16, score_threshold: float | None = None):
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.tok = load_model(checkpoint, self.device)
        check_finite(self.model, checkpoint)
        cfg = self.model.cfg
        self.cfg, self.batch_size = cfg, batch_size
        self.threshold = cfg.score_threshold if score_threshold is None else score_threshold
        self.collate = Collator(self.tok, cfg.num_image_tokens, cfg.max_text_tokens, cfg.heatmap_size, cfg.input_size)
        self.the_id = self.tok.convert_tokens_to_ids("the")
        self.there_id = self.tok.convert_tokens_to_ids("there")
        self.task_token_ids = [self.tok.convert_tokens_to_ids(t) for t in TASK_TOKENS_ORDER]
        self._images: dict[str, np.ndarray] = {}

    def _image(self, path: str) -> np.ndarray:
        if path not in self._images:
            check_pixels(path)  # from the header: a 30000x30000 PNG is one line, not 5.8 GB decoded
            img = cv2.imread(path, cv2.IMREAD_COLOR)
            if img is None:
                raise InputError(f"predict: image not readable: {path}")
            self._images = {path: cv2.cvtColor(img, cv2.COLOR_BGR2RGB)} if len(self._images) > 256 else self._images
            self._images[path] = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        return self._images[path]

    def _view(self, path: str, flip: bool) -> np.ndarray:
        """The image, or its mirror image (left and right swapped) for test-time augmentation."""
        image = self._image(path)
        return np.ascontiguousarray(image[:, ::-1]) if flip else image

    def _batch(self, paths: list[str], instructions: list[str], answer_prefix: str | None, flip: bool = False):
        s = self.cfg.input_size
        unique = list(dict.fromkeys(paths))  # one encoder pass per image, however many instructions it has
        images = torch.stack([torch.from_numpy(pad_image(self._view(p, flip), s)).permute(2, 0, 1).float() / 255
                              for p in unique])
        image_index = torch.tensor([unique.index(p) for p in paths], dtype=torch.long)
        seqs = []
        for ins in instructions:
            ids, _ = self.collate.encode(ins, None)
            if answer_prefix:
                ids += self.tok(answer_prefix, add_special_tokens=False)["input_ids"]
            seqs.append(ids)
        length = max(len(x) for x in seqs)
        input_ids = torch.full((len(seqs), length), self.tok.pad_token_id, dtype=torch.long)
        attn = torch.zeros_like(input_ids)
        last = torch.zeros(len(seqs), dtype=torch.long)
        for i, ids in enumerate(seqs):
            input_ids[i, :len(ids)] = torch.tensor(ids)
            attn[i, :len(ids)] = 1
            last[i] = len(ids) - 1 - (1 if answer_prefix else 0)  # [LOC] sits before the final "."
        return {"images": images.to(self.device), "image_index": image_index.to(self.device),
                "input_ids": input_ids.to(self.device),
                "attention_mask": attn.to(self.device), "loc_index": last.to(self.device)}

    @torch.no_grad()
    def locate(self, paths: list[str], instructions: list[str], flip: bool = False) -> dict:
        """Stage-1 outputs for (image, instruction) pairs, read at the [LOC] of the forced answer (of the mirrored
        images when `flip`: their maps are in the mirror image's pixels)."""
        batch = self._batch(paths, instructions, LOC_PREFIX, flip)
        out = self.model.stage1(batch)
        # p_none: at "Sure ," the LLM chooses between "the (location ...)" and "there (is none)"
        rows = torch.arange(len(paths))
        comma = batch["loc_index"] - 4  # ... sure , the location is [LOC]
        logits = self.model.lm_logits(out["hidden"][rows, comma])
        pair = torch.softmax(logits[:, [self.the_id, self.there_id]], -1)
        out["p_none"] = pair[:, 1]
        # the task token the model generates after "[LOC] ." (logged per instruction for review)
        task_ids = torch.tensor(self.task_token_ids, device=logits.device)
        after = self.model.lm_logits(out["hidden"][rows, batch["loc_index"] + 1])[:, task_ids]
        out["task_token"] = [TASK_TOKENS_ORDER[j] for j in after.argmax(-1).tolist()]
        out["heat"] = torch.sigmoid(out["heatmap_logits"])
        return out

    @torch.no_grad()
    def answer(self, paths: list[str], questions: list[str], max_new_tokens: int = 12) -> list[str]:
        """Greedy generation of the LLM's answer (VQA)."""
        batch = self._batch(paths, questions, None)
        image_feats, pixel_feats = self.model.vision(batch)
        llm_feats = self.model.llm_image_tokens(image_feats, pixel_feats[1])
        ids, attn = batch["input_ids"], batch["attention_mask"]
        lengths = attn.sum(1)
        rows = torch.arange(len(paths))
        done = torch.zeros(len(paths), dtype=torch.bool, device=ids.device)
        outs = [[] for _ in paths]
        readout = first_word = 0
        for step in range(max_new_tokens):
            hidden = self.model.language(ids, attn, llm_feats)
            state = hidden[rows, lengths - 1]
            if step == 0 and self.model.vqa_readout is not None:  # what the question points at (see training)
                heads = self.model.aligner(image_feats, state, pixel_feats, dense=False)
                words = [torch.tensor(self.collate.concept_ids(q), dtype=torch.long) for q in questions]
                every, first_word = self.model.answer_glimpse(batch, heads, state, words)
                readout = self.model.answer_readout(batch, heads["heatmap_logits"], pixel_feats) + every
            nxt = self.model.lm_logits(state + readout + (first_word if step == 0 else 0)).argmax(-1)
            ids = torch.cat([ids, torch.full_like(nxt[:, None], self.tok.pad_token_id)], 1)
            attn = torch.cat([attn, torch.zeros_like(attn[:, :1])], 1)
            for i in range(len(paths)):
                if not done[i]:
                    if nxt[i].item() == self.tok.eos_token_id:
                        done[i] = True
                    else:
                        outs[i].append(nxt[i].item())
                ids[i, lengths[i]] = nxt[i]
                attn[i, lengths[i]] = 1
            lengths = lengths + 1
            if done.all():
                break
        return [self.tok.decode(o, skip_special_tokens=True).strip() for o in outs]

    @property
    def grounds(self) -> bool:
        """Whether grounding picks among the heatmap's peaks by what the glimpse sees there (`glimpse_grounds`)."""
        return self.model.glimpse is not None and self.cfg.glimpse_grounds

    @torch.no_grad()
    def pick_named(self, out: dict, row: int, boxes_xywh: np.ndarray, scores: np.ndarray, geo: SquarePad,
                   expression: str) -> int:
        """Of a referring expression's candidate boxes (the heatmap's highest peaks), the index of the one whose
        logit + `ground_scale` x (how much the glimpse's name and description say the expression's words) is
        highest."""
        g = self.model.glimpse
        b = np.asarray(boxes_xywh, dtype=np.float64)
        centres = torch.tensor(geo.to_input(b[:, :2] + b[:, 2:] / 2), dtype=out["pixels"].dtype,
                               device=out["pixels"].device).unsqueeze(0)
        words = [torch.tensor(self.collate.concept_ids(expression), dtype=torch.long)]
        mass = g.candidate_word_mass(out["pixels"][row:row + 1], centres, words, self.model.lm_logits)[0]
        p = torch.as_tensor(np.clip(scores, 1e-6, 1 - 1e-6), dtype=mass.dtype, device=mass.device)
        return int((torch.log(p / (1 - p)) + g.ground_scale * mass).argmax())

    @torch.no_grad()
    def named_as(self, out: dict, row: int, boxes_xywh: np.ndarray, geo: SquarePad, category: str | None) -> np.ndarray:
        """Per box, the probability that the glimpse names its object `category` (`glimpse_checks_boxes`; 1.0
        without a glimpse or a known category word): the second look that detection's scores are multiplied by."""
        ids = [t for t in self.tok(category or "", add_special_tokens=False)["input_ids"] if t != self.tok.unk_token_id]
        if self.model.glimpse is None or not self.cfg.glimpse_checks_boxes or not ids or not len(boxes_xywh):
            return np.ones(len(boxes_xywh))  # (a word the model never learned cannot be checked)
        words = torch.tensor(ids, dtype=torch.long)
        b = np.asarray(boxes_xywh, dtype=np.float64)
        xyxy = torch.tensor(np.concatenate([geo.to_input(b[:, :2]), geo.to_input(b[:, :2] + b[:, 2:])], 1),
                            dtype=out["pixels"].dtype, device=out["pixels"].device)
        pixels = out["pixels"][row:row + 1].expand(len(b), -1, -1, -1)
        return self.model.glimpse.names_at(pixels, xyxy, words, self.model.lm_logits).cpu().numpy()

    def geometry(self, path: str) -> SquarePad:
        h, w = self._image(path).shape[:2]
        return SquarePad(w, h, self.cfg.input_size, self.cfg.heatmap_size)

    @torch.no_grad()
    def masks_for(self, out: dict, row: int, boxes_xywh: np.ndarray, geo: SquarePad, path: str,
                  flipped: dict | None = None) -> list[dict]:
        """RLE masks in original pixels for one row's boxes: SAM on the original image, or the roi head. With
        `flipped` (the same row's `locate` outputs on the mirror image), each mask is where the mean of the two
        views' mask probabilities is over one half."""
        rles = []
        # the roi head: full-size maps of 16 boxes at a time (bounded memory); SAM encodes the image once per call
        step = max(len(boxes_xywh), 1) if self.cfg.mask_decoder == "sam" else 16
        for start in range(0, len(boxes_xywh), step):
            boxes = np.asarray(boxes_xywh[start:start + step], dtype=np.float64)
            logits = self._mask_logits(out, row, boxes, geo, path, flip=False)
            if flipped is None:
                full_masks = logits > 0
            else:
                mirror = self._mask_logits(flipped, row, unflip_boxes(boxes, geo.width), geo, path, flip=True)
                full_masks = (_sigmoid(logits) + _sigmoid(mirror[:, :, ::-1])) > 1.0
            for full in full_masks:
                rle = mask_utils.encode(np.asfortranarray(full.astype(np.uint8)))
                rles.append({"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")})
        return rles

    def _mask_logits(self, out: dict, row: int, boxes_xywh: np.ndarray, geo: SquarePad, path: str,
                     flip: bool) -> np.ndarray:
        """(n, H, W) mask logits in the view's own pixels (the mirror image's when `flip`)."""
        if not len(boxes_xywh):
            return np.zeros((0, geo.height, geo.width), dtype=np.float32)
        if self.cfg.mask_decoder == "sam":
            xyxy = np.concatenate([boxes_xywh[:, :2], boxes_xywh[:, :2] + boxes_xywh[:, 2:]], 1)
            return self.model.masks.predict(self._view(path, flip), xyxy).numpy().astype(np.float32)
        xy0 = geo.to_input(boxes_xywh[:, :2])
        xy1 = geo.to_input(boxes_xywh[:, :2] + boxes_xywh[:, 2:])
        bx = torch.tensor(np.concatenate([xy0, xy1], 1), dtype=torch.float32, device=out["dense"].device)
        r = slice(row, row + 1)
        logits, rois = self.model.masks.roi_logits(out["dense"][r], out["heatmap_logits"][r], out["pixels"][r], [bx])
        # pasted straight at the image's own pixels, from where pad_image put them on the input: pasting on the
        # S x S input and resizing that (nearest neighbour) moved every mask about a pixel right and down
        rois = rois.cpu().numpy().astype(np.float64)
        in_pixels = np.concatenate([geo.content_to_image(rois[:, :2]), geo.content_to_image(rois[:, 2:])], 1)
        return paste(logits.detach().float().cpu(), torch.tensor(in_pixels, dtype=torch.float32), geo.height,
                     geo.width).numpy()

    @torch.no_grad()
    def keypoints_for(self, dense: torch.Tensor, boxes_xywh: np.ndarray, geo: SquarePad) -> list[tuple]:
        if not len(boxes_xywh):
            return []
        xy0 = geo.to_input(boxes_xywh[:, :2])
        xy1 = geo.to_input(boxes_xywh[:, :2] + boxes_xywh[:, 2:])
        bx = np.concatenate([xy0, xy1], 1)
        maps = self.model.pose(dense[None], [torch.tensor(bx, dtype=torch.float32, device=dense.device)]).cpu().numpy()
        out = []
        for m, b in zip(maps, bx):
            kps, score = decode_keypoints(m, b)
            kps[:, :2] = geo.from_input(kps[:, :2])
            out.append((kps, score))
        return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


def _write_heatmap(folder: Path, name: str, heat: np.ndarray) -> str:
    (folder / name).write_bytes(encode_png(heat))
    return name


def predict(checkpoint, task: str, images_dir, out_file, *, annotations=None, categories=None, expressions=None,
            questions=None, batch_size: int = 16, score_threshold: float | None = None, progress: bool = True,
            max_images: int | None = None, device: str | None = None, flip_tta: bool = False) -> dict:
    """Run one task over images; writes COCO results json (or answers) and the heatmaps folder.

    `device`: "cpu", "cuda", "cuda:1" ...; None picks the GPU when there is one.
    `flip_tta` (detection, instance segmentation): also look at each image's mirror image and fuse the two views'
    boxes and masks (`fuse_views`): tighter boxes and fewer false positives, for twice the model passes. Pseudo-labels
    use it: labelers accept boxes as they are."""
    if task not in TASKS:
        raise InputError(f"predict: unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if flip_tta and task not in FLIP_TTA_TASKS:
        raise InputError(f"predict: flip TTA is for {' and '.join(FLIP_TTA_TASKS)}, not {task}")
    jobs = plan_jobs(checkpoint, task, images_dir, annotations=annotations, categories=categories,
                     expressions=expressions, questions=questions, max_images=max_images)
    # inputs are checked above before the (slow) model load
    p = Predictor(checkpoint, device=device, batch_size=batch_size, score_threshold=score_threshold)
    files = open_prediction_files(Path(out_file))
    bar = progress_bar(total=len(jobs), desc=f"predict {task}", unit="instr", enabled=progress)
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        if task_named(task).decoder == "text":
            write_answers(p, chunk, files)
        else:
            write_located(p, task, chunk, files, flip_tta=flip_tta)
        bar.update(len(chunk))
    bar.close()
    return close_prediction_files(files, task)


def plan_jobs(checkpoint, task: str, images_dir, *, annotations=None, categories=None, expressions=None,
              questions=None, max_images: int | None = None):
    """The task's (image, instruction, meta) jobs, its input files checked before the slow model load."""
    names = task_named(task).names
    if names == CATEGORY:
        images = list_images(images_dir, annotations)[:max_images]
        cats = _task_categories(checkpoint, task, annotations, categories)
        return ImageInstructionJobs(images, [(instruction_for(task, category=c["name"]),
                                              {"category_id": c["id"], "category": c["name"]}) for c in cats])
    if names == EXPRESSION:
        return _expression_jobs(task, images_dir, expressions)
    return _question_jobs(images_dir, questions)


def _task_categories(checkpoint, task: str, annotations, categories) -> list[dict]:
    """The categories to ask for: the task's own (pose's person), else the annotations', the given names', or the
    checkpoint's."""
    only = task_named(task).category
    if only:
        cats = [{"id": 1, "name": only}]
        if annotations:
            cats = [c for c in _read_json(annotations).get("categories", []) if c["name"] == only] or cats
        return cats
    if annotations and _read_json(annotations).get("categories"):
        return _read_json(annotations)["categories"]  # instances or image_info json (images without labels)
    if categories:
        return [{"id": i + 1, "name": n} for i, n in enumerate(categories)]
    return checkpoint_categories(checkpoint)


def _expression_jobs(task: str, images_dir, expressions) -> list[tuple]:
    """Grounding / referring segmentation: one job per referring expression."""
    if not expressions:
        raise InputError("predict: --expressions FILE is required for grounding / referring segmentation")
    jobs = []
    for e in _read_json(expressions):
        im = {"id": e["image_id"], "path": str(Path(images_dir) / e["file_name"])}
        jobs.append((im, instruction_for(task, expression=e["expression"]),
                     {"sent_id": e["sent_id"], "ref_id": e.get("ref_id"), "expression": e["expression"]}))
    return jobs


def _question_jobs(images_dir, questions) -> list[tuple]:
    """VQA: one job per question of a VQAv2 questions json (or a plain list of questions)."""
    if not questions:
        raise InputError("predict: --questions FILE (VQAv2 questions json) is required for vqa")
    data = _read_json(questions)
    jobs = []
    for q in data["questions"] if isinstance(data, dict) else data:
        path = Path(images_dir) / f"{q['image_id']:012d}.jpg"
        jobs.append(({"id": q["image_id"], "path": str(path)}, short_answer_question(q["question"]),
                     {"question_id": q["question_id"]}))
    return jobs


@dataclass
class PredictionFiles:
    """The results json and the heatmaps' index, written as results come: a large pool never sits in memory."""

    out_file: Path
    heat_dir: Path
    results: JsonArrayWriter
    index: JsonArrayWriter


def open_prediction_files(out_file: Path) -> PredictionFiles:
    """Create the output folders and open both JSON arrays (each appears whole, on close)."""
    out_file.parent.mkdir(parents=True, exist_ok=True)
    heat_dir = out_file.with_name(out_file.stem + "_heatmaps")
    heat_dir.mkdir(exist_ok=True)
    results = JsonArrayWriter(out_file)
    index = JsonArrayWriter(heat_dir / "index.json", count_if=lambda e: e["task_token"] == e["expected_task_token"])
    return PredictionFiles(out_file, heat_dir, results, index)


def close_prediction_files(files: PredictionFiles, task: str) -> dict:
    """Publish both files and return the run's summary (what `lumen predict` prints)."""
    files.results.close()
    files.index.close()
    log.info("%s: %d results -> %s (heatmaps: %s)", task, len(files.results), files.out_file, files.heat_dir)
    summary = {"task": task, "results": len(files.results), "out_file": str(files.out_file),
               "heatmaps_dir": str(files.heat_dir)}
    if files.index:  # how often the generated task token names the requested task (the decoder used is the requested one)
        summary["task_token_agreement"] = round(files.index.matched / len(files.index), 4)
    return summary


def write_answers(p: Predictor, chunk: list[tuple], files: PredictionFiles) -> None:
    """VQA: answer a batch of questions and write one answer per question."""
    for (im, _, meta), a in zip(chunk, text_answers(p, chunk)):
        files.results.append({"question_id": meta["question_id"], "image_id": im["id"], "answer": a.text})


def write_located(p: Predictor, task: str, chunk: list[tuple], files: PredictionFiles, flip_tta: bool = False) -> None:
    """Heatmap tasks: locate a batch (`located_answers`, the decoding `lumen ask` shares), then write each
    instruction's heatmap, index entry and results."""
    for (im, _, meta), a in zip(chunk, located_answers(p, task, chunk, flip_tta=flip_tta)):
        name = f"{im['id']}_{meta.get('category_id', meta.get('sent_id'))}.png"
        files.index.append({"image_id": im["id"], "task": task, "category_id": meta.get("category_id"),
                            "expression": meta.get("expression"), "sent_id": meta.get("sent_id"),
                            "file": _write_heatmap(files.heat_dir, name, a.grid), "input_size": a.input_size,
                            "heatmap_size": a.heatmap_size, "p_none": round(a.p_none, 4),
                            "task_token": a.task_token, "expected_task_token": TASK_TOKENS[task]})
        for r in result_rows(a, im["id"]):
            files.results.append(r)


def result_rows(a: Answer, image_id) -> list[dict]:
    """One answer's COCO result rows: its boxes, with masks or keypoints where the task has them."""
    rows = []
    for j, (b, s) in enumerate(zip(a.boxes, a.scores)):
        r = {"image_id": image_id, "bbox": [round(float(v), 2) for v in b], "score": round(float(s), 5)}
        if a.task in SINGLE_OBJECT_TASKS:
            r.update(sent_id=a.meta["sent_id"], ref_id=a.meta.get("ref_id"), category_id=1)
        else:
            r["category_id"] = a.meta["category_id"]
        if a.masks is not None:
            r["segmentation"] = a.masks[j]
        if a.keypoints is not None:
            r["keypoints"] = [round(float(v), 2) for v in a.keypoints[j].reshape(-1)]
        rows.append(r)
    return rows
