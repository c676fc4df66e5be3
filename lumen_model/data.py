"""Shard items -> model batches: the chat-formatted token sequence, labels and [LOC] position."""

from __future__ import annotations

import re

import torch

from pipelines.dataset import collate_samples
from pipelines.instructions import LOC_TOKEN, TEMPLATES


# LLaVA-1.5's prompt for VQAv2-style short answers. The chats (LLaVA source) ask the same questions about
# the same kind of images and answer in sentences ("There is one triangle."); without it the LLM cannot
# tell which form is wanted and VQA answers come out as sentences, which VQAv2 scoring counts as wrong.
SHORT_ANSWER = "Answer the question using a single word or phrase."
SHORT_ANSWER_SOURCES = frozenset({"vqav2"})


def prompt_text(instruction: str) -> str:
    return f"user : {instruction} assistant :"


def short_answer_question(question: str) -> str:
    return f"{question} {SHORT_ANSWER}"


def model_instruction(item: dict) -> str:
    """The instruction as the model reads it: VQAv2 questions ask for a short answer."""
    if item["task"] == "vqa" and item.get("source") in SHORT_ANSWER_SOURCES:
        return short_answer_question(item["instruction"])
    return item["instruction"]


class Collator:
    """Tokenizes `<s> <image>*N user: ... assistant: {answer} </s>`; only answer tokens carry labels."""

    def __init__(self, tokenizer, num_image_tokens: int, max_text_tokens: int = 48, heatmap_size: int = 32,
                 input_size: int = 128):
        self.tok = tokenizer
        self.n_img = num_image_tokens
        self.max_text = max_text_tokens
        self.image_id = tokenizer.convert_tokens_to_ids("<image>")
        self.loc_id = tokenizer.convert_tokens_to_ids(LOC_TOKEN)
        self.stride = input_size / heatmap_size
        # the instruction's own words (category, expression) are what [LOC] must carry; the templates'
        # words are the same in every instruction and say nothing about where to look
        template_text = " ".join(t.format(category="", expression="") for ts in TEMPLATES.values() for t in ts)
        self.template_ids = set(tokenizer(prompt_text(template_text), add_special_tokens=False)["input_ids"])

    def concept_ids(self, instruction: str) -> list[int]:
        ids = self.tok(instruction, add_special_tokens=False)["input_ids"]
        return sorted(set(ids) - self.template_ids - {self.tok.unk_token_id})

    def encode(self, instruction: str, answer: str | None):
        prompt = self.tok(prompt_text(instruction), add_special_tokens=False)["input_ids"][: self.max_text]
        ids = [self.tok.bos_token_id] + [self.image_id] * self.n_img + prompt
        labels = [-100] * len(ids)
        if answer is not None:
            ans = self.tok(answer, add_special_tokens=False)["input_ids"][: self.max_text] + [self.tok.eos_token_id]
            ids += ans
            labels += ans
        return ids, labels

    def __call__(self, items: list[dict]) -> dict:
        batch = collate_samples(items)
        seqs = [self.encode(model_instruction(it), it["answer"]) for it in items]
        length = max(len(s[0]) for s in seqs)
        input_ids = torch.full((len(items), length), self.tok.pad_token_id, dtype=torch.long)
        labels = torch.full((len(items), length), -100, dtype=torch.long)
        attn = torch.zeros((len(items), length), dtype=torch.long)
        loc = torch.full((len(items),), -1, dtype=torch.long)
        for i, (ids, lab) in enumerate(seqs):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, : len(lab)] = torch.tensor(lab)
            attn[i, : len(ids)] = 1
            where = (input_ids[i, : len(ids)] == self.loc_id).nonzero()
            if len(where):
                loc[i] = where[0, 0]
        batch.update(input_ids=input_ids, labels=labels, attention_mask=attn, loc_index=loc)
        # VQA: the position whose next token is the answer's first, and the question's own words ("square",
        # "blue"), which that state is asked to name (`vqa_concept_weight`): see LumenModel.concept_loss
        is_vqa = [it["task"] == "vqa" and it["answer"] is not None for it in items]
        first_answer = (labels[:, 1:] != -100).float().argmax(1)  # hidden[:, j] predicts token j + 1
        batch["answer_index"] = torch.where(torch.tensor(is_vqa, dtype=torch.bool), first_answer, -1)
        batch["question_ids"] = [torch.tensor(self.concept_ids(it["instruction"]) if v else [], dtype=torch.long)
                                 for it, v in zip(items, is_vqa)]
        # the word naming the row's objects ("circle"): what the VQA glimpse learns to say of each box (stage 2)
        batch["category_word_ids"] = [torch.tensor(self.tok(it["category"], add_special_tokens=False)["input_ids"]
                                                   if it.get("category") else [], dtype=torch.long) for it in items]
        # each distinct image once: the vision encoders run on `images`, rows gather by `image_index`
        keys = [it.get("image_path") or f"#{i}" for i, it in enumerate(items)]
        first = {}
        batch["image_index"] = torch.tensor([first.setdefault(k, len(first)) for k in keys], dtype=torch.long)
        batch["images"] = batch["pixel_values"][[keys.index(k) for k in first]]
        batch["concept_ids"] = [torch.tensor(self.concept_ids(it["instruction"]) if loc[i] >= 0 else [], dtype=torch.long)
                                for i, it in enumerate(items)]
        # sub-pixel offset targets: continuous box center in heatmap pixels minus its floor
        batch["offsets"] = []
        for it in items:
            b = it["boxes_input"]
            if len(b) and it["has_heatmap"]:
                c = (b[:, :2] + b[:, 2:]) / 2 / self.stride
                batch["offsets"].append((c - torch.floor(c)).clamp(0, 0.999))
            else:
                batch["offsets"].append(torch.zeros((0, 2)))
        # Negatives ("Sure, there is none.") have no [LOC]: the LLM's words teach 'none'; the heatmap
        # is supervised only where [LOC] is said, which is also how inference reads it.
        batch["has_heatmap"] = batch["has_heatmap"] & (batch["loc_index"] >= 0)
        return batch


# COCO keypoint order: a mirrored person's left eye is its right eye
KEYPOINT_FLIP = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]
_SIDE_WORDS = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def _swap_sides(text: str | None) -> str | None:
    if text is None:
        return None
    return _SIDE_WORDS.sub(lambda m: {"left": "right", "right": "left"}[m.group(1).lower()], text)


def hflip(item: dict) -> dict:
    """A training item mirrored left-right: pixels, heatmap, centers, boxes, masks, keypoints, and the
    words "left"/"right" in the instruction and answer ("the circle on the left" names the other circle).

    The padded square is centered, so mirroring it mirrors the image; a heatmap center pixel x goes to
    M - 1 - x, which is the floor of the mirrored continuous center.
    """
    out = dict(item)
    s = item["pixel_values"].shape[-1]
    m = item["heatmap"].shape[-1]
    out["pixel_values"] = item["pixel_values"].flip(-1)
    out["heatmap"] = item["heatmap"].flip(-1)
    centers = item["centers"].clone()
    if len(centers):
        centers[:, 0] = m - 1 - centers[:, 0]
    out["centers"] = centers
    boxes = item["boxes_input"].clone()
    if len(boxes):
        boxes[:, 0], boxes[:, 2] = s - item["boxes_input"][:, 2], s - item["boxes_input"][:, 0]
    out["boxes_input"] = boxes
    out["masks_input"] = item["masks_input"].flip(-1)
    kps = item["keypoints_input"].clone()
    if len(kps):
        kps = kps[:, KEYPOINT_FLIP]
        kps[..., 0] = torch.where(kps[..., 2] > 0, s - kps[..., 0], kps[..., 0])
    out["keypoints_input"] = kps
    out["instruction"], out["answer"] = _swap_sides(item["instruction"]), _swap_sides(item["answer"])
    out["image_path"] = f"{item.get('image_path')}#mirrored"  # a different picture for the shared vision pass
    return out
