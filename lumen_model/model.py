"""LumenModel: LLaVA (CLIP + LLaMA) + the V-L dense aligner + task decoders.

Stage 1 (task-agnostic): the LLM reads the image and the instruction and answers with a sentence
holding [LOC] and a task token; the [LOC] hidden state drives the aligner's heatmap.
Stage 2 (task-specific): boxes from peaks + sizes, masks from SAM prompted with boxes (or the
tiny preset's box-aligned mask head), keypoints from a top-down head. VQA answers come from the LLM's generation
(with `vqa_readout`, what the question's heatmap points at is added to it; stage 2 trains that readout again, on
the frozen stage-1 features it reads). With `glimpse`, stage 2 also trains a second look at the object at a point
(lumen_model/glimpse.py): it checks detection's boxes, picks grounding's peak and, with the readout, adds what the
question's peak holds to the answer.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from lumen_model.aligner import DenseAligner
from lumen_model.config import LumenConfig
from lumen_model.decoders import MASK_TASKS, POSE_TASKS
from lumen_model.decoders.masks import SamBoxPrompts
from lumen_model.decoders.pose import PoseHead, keypoint_loss_sum, keypoint_targets
from lumen_model.decoders.roi_masks import RoiMaskHead
from lumen_model.losses import gather_at, gaussian_focal_loss, mean_over_ranks, per_sample_l1
from lumen_model.glimpse import ObjectGlimpse, peak_candidates
from lumen_model.vqa_readout import VqaReadout, answer_positions

STAGE1_PARTS = ("llava", "aligner", "concept_head", "llm_pixels", "llm_image_norm", "vqa_readout")
STAGE2_PARTS = ("masks", "pose", "vqa_readout", "glimpse")  # readout + glimpse: the tiny preset's answer decoder


def build_llava(cfg: LumenConfig, vocab_size: int, image_token_id: int, pad_token_id: int) -> LlavaForConditionalGeneration:
    text = dict(cfg.text.kwargs(), vocab_size=vocab_size, pad_token_id=pad_token_id)
    return LlavaForConditionalGeneration(LlavaConfig(
        vision_config=CLIPVisionConfig(**cfg.vision.kwargs()).to_dict(), text_config=LlamaConfig(**text).to_dict(),
        image_token_id=image_token_id, vision_feature_layer=-2 if cfg.preset != "tiny" else -1,
        vision_feature_select_strategy="default", image_seq_length=cfg.num_image_tokens,
        projector_hidden_act="gelu"))


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[index] as a one-hot matmul: the same values, but a backward pass that sums in a fixed order
    (indexing's backward accumulates in parallel on a CPU, which breaks bit-exact resume)."""
    onehot = F.one_hot(index, x.shape[0]).to(x.dtype)
    return (onehot @ x.reshape(x.shape[0], -1)).reshape(len(index), *x.shape[1:])


def image_token_norm(dim: int, text_scale: float) -> nn.LayerNorm:
    """LayerNorm whose gain starts at the text embeddings' per-dimension scale (their init std)."""
    norm = nn.LayerNorm(dim)
    nn.init.constant_(norm.weight, text_scale)
    return norm


class LumenModel(nn.Module):
    def __init__(self, cfg: LumenConfig, vocab_size: int, image_token_id: int, pad_token_id: int):
        super().__init__()
        self.cfg = cfg
        self.vocab_size, self.image_token_id, self.pad_token_id = vocab_size, image_token_id, pad_token_id
        self.llava = build_llava(cfg, vocab_size, image_token_id, pad_token_id)
        text_dim = cfg.text.hidden_size
        self.aligner = DenseAligner(text_dim, text_dim, cfg.aligner_dim, cfg.aligner_layers, cfg.aligner_heads,
                                    cfg.heatmap_size, cfg.pixel_encoder,
                                    cfg.aligner_image_self_attn, cfg.patch_grid, cfg.aligner_colour_match)
        self.masks = RoiMaskHead(cfg.aligner_dim, cfg.input_size) if cfg.mask_decoder == "roi" else SamBoxPrompts(cfg)
        # vocabulary-sized: only built where used (tiny), never for the 7B's 32k x 4096
        self.concept_head = nn.Linear(text_dim, vocab_size) if cfg.concept_weight > 0 or cfg.vqa_concept_weight > 0 else None
        # (LumenConfig refuses llm_pixel_tokens without the cnn pixel encoder)
        self.llm_pixels = nn.Linear(cfg.aligner_dim, text_dim) if cfg.llm_pixel_tokens else None
        init_std = cfg.text.initializer_range if cfg.text.initializer_range is not None else 0.02  # LlamaConfig's
        self.llm_image_norm = image_token_norm(text_dim, init_std) if cfg.llm_image_norm else None
        self.vqa_readout = VqaReadout(cfg.aligner_dim, text_dim) if cfg.vqa_readout else None
        self.pose = PoseHead(cfg.aligner_dim, cfg.pose_dim, cfg.num_keypoints, cfg.pose_crop, cfg.input_size)
        self.register_buffer("pixel_mean", torch.tensor(cfg.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.image_std).view(1, 3, 1, 1), persistent=False)
        # built last and on a forked RNG: every other part's weights, and the random draws of training after
        # this, stay what they were without it (a stage 1 is the same with and without a glimpse)
        self.glimpse = None
        if cfg.glimpse:
            with torch.random.fork_rng(devices=[]):
                self.glimpse = ObjectGlimpse(cfg.input_size, text_dim, candidates=cfg.glimpse_candidates)

    # ---- stage 1 -------------------------------------------------------------------------------
    def normalize(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1] -> the encoders' input (CLIP's mean and std)."""
        return (pixel_values - self.pixel_mean) / self.pixel_std

    def image_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """CLIP patch features (CLS dropped) through LLaVA's projector: (b, N, text_dim), the full grid."""
        m = self.llava.model
        x = self.normalize(pixel_values)
        hidden = m.vision_tower(x, output_hidden_states=True).hidden_states[self.llava.config.vision_feature_layer]
        return m.multi_modal_projector(hidden[:, 1:])

    def llm_image_tokens(self, image_feats: torch.Tensor, pixel_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """What fills the <image> slots: the ViT grid (+ the CNN's tokens with `llm_pixel_tokens`), average-pooled
        by `llm_image_pool` (identity at 1)."""
        if self.llm_pixels is not None and pixel_tokens is not None:
            image_feats = image_feats + self.llm_pixels(pixel_tokens)
        pool = self.cfg.llm_image_pool
        if pool != 1:
            b, n, d = image_feats.shape
            g = self.cfg.patch_grid
            grid = image_feats.transpose(1, 2).reshape(b, d, g, g)
            image_feats = F.avg_pool2d(grid, pool).flatten(2).transpose(1, 2)
        if self.llm_image_norm is None:
            return image_feats
        # the CNN's tokens are one large vector shared by every token of every image (norm 19-27) plus a smaller
        # part that depends on the pixels: centre each channel over the image's tokens, then bring each token
        # to the text embeddings' scale
        return self.llm_image_norm(image_feats - image_feats.mean(1, keepdim=True))

    def vision(self, batch: dict) -> tuple[torch.Tensor, tuple]:
        """Per row: the ViT tokens through the projector, and the aligner's pixel features (each image encoded once)."""
        return self.per_image(batch, self.image_tokens), self.per_image(batch, self.aligner.encode_pixels)

    def language(self, input_ids, attention_mask, llm_image_feats) -> torch.Tensor:
        """LLaMA over the sequence with image features in the <image> slots -> last hidden states."""
        embeds = self.llava.get_input_embeddings()(input_ids)
        mask = input_ids == self.image_token_id
        embeds = embeds.masked_scatter(mask.unsqueeze(-1),
                                       llm_image_feats.to(embeds.dtype).reshape(-1, embeds.shape[-1]))
        return self.llava.model.language_model(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits, computed only where asked (the full sequence x vocab is the CPU's biggest matmul)."""
        return self.llava.lm_head(hidden)

    def per_image(self, batch: dict, encode) -> object:
        """`encode` (a tensor or a tuple of tensors/None per image) run on each distinct image of the
        batch once, then gathered to the batch's rows: a batch holds several instructions per image."""
        images, index = batch.get("images"), batch.get("image_index")
        if images is None:
            return encode(batch["pixel_values"])
        out = encode(images)
        if isinstance(out, tuple):
            return tuple(None if f is None else gather_rows(f, index) for f in out)
        return gather_rows(out, index)

    def stage1(self, batch: dict, dense: bool = True) -> dict:
        """dense=False: the heads only, no dense map and no pixels (all that stage-1 training reads)."""
        image_feats, pixel_feats = self.vision(batch)
        llm_feats = self.llm_image_tokens(image_feats, pixel_feats[1])
        hidden = self.language(batch["input_ids"], batch["attention_mask"], llm_feats)
        loc = batch["loc_index"]
        answers = self.vqa_readout is not None and "answer_index" in batch  # (inference answers in Predictor.answer)
        if answers:
            loc = torch.where(loc >= 0, loc, batch["answer_index"])  # a question drives the aligner as [LOC] does
        loc_state = hidden[torch.arange(hidden.shape[0]), loc.clamp(min=0)]
        dense = self.aligner(image_feats, loc_state, pixel_feats, dense=dense)
        if answers:
            dense["vqa_readout"] = self.answer_readout(batch, dense["heatmap_logits"], pixel_feats)
            dense["answer_features"] = pixel_feats[0]  # what stage 2 reads the readout from again
        if "dense" not in dense:
            return {"hidden": hidden, "loc_state": loc_state, **dense}
        # normalized pixels per row, for the box-aligned mask head (a cheap gather; no gradient needed)
        pixels = self.per_image(batch, self.normalize).detach()
        return {"hidden": hidden, "loc_state": loc_state, "pixels": pixels, **dense}

    def answer_readout(self, batch: dict, heat_logits: torch.Tensor, pixel_feats: tuple) -> torch.Tensor:
        """`vqa_readout`: what each row's heatmap points at, as a vector for its answer positions."""
        m = self.cfg.heatmap_size
        pixels = self.per_image(batch, lambda x: F.adaptive_avg_pool2d(self.normalize(x), (m, m)))
        return self.vqa_readout(heat_logits, pixel_feats[0], pixels)

    def answer_glimpse(self, batch: dict, heads: dict, question: torch.Tensor, question_words: list) -> tuple:
        """The glimpse (trained in stage 2) at the object under the question heatmap's peak that the question names
        -> (for every answer position, for the first one only); (0, 0) without one. heads: the aligner's heatmap
        and offset maps of the question rows; question: their states before the answer's first word;
        question_words: their questions' own word ids (`Collator.concept_ids`)."""
        if self.glimpse is None:
            return 0.0, 0.0
        pixels = self.per_image(batch, self.normalize)
        return self.glimpse(heads["heatmap_logits"], heads["offsets"], pixels, question, question_words,
                                self.lm_logits)

    def answer_hidden(self, out: dict, batch: dict) -> torch.Tensor:
        """The LLM's last hidden states as the vocabulary head reads them: with `vqa_readout`, plus the
        readout at the positions that predict a VQA answer's tokens."""
        hidden = out["hidden"]
        if "vqa_readout" not in out or "answer_index" not in batch:
            return hidden
        where = answer_positions(batch["answer_index"], hidden.shape[1]).unsqueeze(-1)
        return hidden + where.to(hidden.dtype) * out["vqa_readout"].unsqueeze(1)

    def stage1_losses(self, out: dict, batch: dict) -> dict:
        """Every term is a per-sample value summed and divided by the batch size (DDP-consistent)."""
        cfg = self.cfg
        b = batch["labels"].shape[0]
        per_sample = self.answer_token_loss(self.answer_hidden(out, batch), batch["labels"])
        if cfg.vqa_text_weight != 1.0:
            per_sample = per_sample * torch.tensor([cfg.vqa_text_weight if t == "vqa" else 1.0 for t in batch["task"]],
                                                   device=per_sample.device)
        text = per_sample.sum() / b
        has = batch["has_heatmap"].float()
        heat_ps = gaussian_focal_loss(out["heatmap_logits"], batch["heatmap"], cfg.focal_alpha, cfg.focal_beta)
        heat = (heat_ps * has).sum() / b
        centers = [c if h else c[:0] for c, h in zip(batch["centers"], batch["has_heatmap"].tolist())]
        size = offset = heat * 0
        if sum(len(c) for c in centers):
            pred, idx = gather_at(out["sizes"], centers)
            size = per_sample_l1(pred, torch.cat([s[:len(c)] for s, c in zip(batch["sizes"], centers)]), idx, b).sum() / b
            pred_o, idx = gather_at(out["offsets"], centers)
            offs = torch.cat([o[:len(c)] for o, c in zip(batch["offsets"], centers)])
            offset = per_sample_l1(pred_o, offs, idx, b).sum() / b
        total = cfg.text_weight * text + heat + cfg.size_weight * size + cfg.offset_weight * offset
        losses = {"text": text.detach(), "heatmap": heat.detach(), "size": size.detach(), "offset": offset.detach()}
        if cfg.concept_weight > 0:
            concept = self.concept_loss(out["loc_state"], batch["concept_ids"])
            total = total + cfg.concept_weight * concept
            losses["concept"] = concept.detach()
        if cfg.vqa_concept_weight > 0:
            answer_state = out["hidden"][torch.arange(b), batch["answer_index"].clamp(min=0)]
            vqa_concept = self.concept_loss(answer_state, batch["question_ids"])
            total = total + cfg.vqa_concept_weight * vqa_concept
            losses["vqa_concept"] = vqa_concept.detach()
        return {"loss": total, **losses}

    def answer_token_loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(b,) mean next-token cross-entropy of each row's answer tokens (labels -100 elsewhere)."""
        labels = labels[:, 1:]
        sel = labels != -100  # next-token logits only at answer positions
        tok = F.cross_entropy(self.lm_logits(hidden[:, :-1][sel]), labels[sel], reduction="none")
        return tok.new_zeros(labels.shape[0]).index_add(0, sel.nonzero()[:, 0], tok) / sel.sum(1).clamp(min=1)

    def concept_loss(self, loc_state: torch.Tensor, concept_ids: list[torch.Tensor]) -> torch.Tensor:
        """Cross-entropy of the [LOC] state against the instruction's own words (e.g. "red", "circle").

        Without it a from-scratch LLM's [LOC] state ignores the one or two words that matter among
        ~90 tokens: the heatmap loss alone can only teach that once the image features already
        tell a circle from a square, and they only learn that once [LOC] tells them apart.
        """
        b = loc_state.shape[0]
        logp = F.log_softmax(self.concept_head(loc_state), -1)
        per_sample = [-logp[i, ids.to(logp.device)].mean() for i, ids in enumerate(concept_ids) if len(ids)]
        return torch.stack(per_sample).sum() / b if per_sample else logp.sum() * 0

    # ---- stage 2 -------------------------------------------------------------------------------
    def stage2_losses(self, out: dict, batch: dict) -> dict:
        dense = out["dense"].detach()  # stage-1 features are frozen in stage 2
        tasks = batch["task"]
        zero = dense.sum() * 0
        seg_idx = [i for i, t in enumerate(tasks) if t in MASK_TASKS and len(batch["masks_input"][i])]
        # each loss is a sum and a count, averaged over every DDP rank's masks / keypoints (mean_over_ranks)
        mask_l = mask_n = zero
        if seg_idx and self.cfg.mask_decoder == "roi":  # a pretrained SAM stays frozen: nothing to learn
            mask_l, mask_n = self.masks.loss_sum(dense[seg_idx], out["heatmap_logits"].detach()[seg_idx],
                                                 out["pixels"][seg_idx], [batch["boxes_input"][i] for i in seg_idx],
                                                 [batch["masks_input"][i] for i in seg_idx])
        mask_l = mean_over_ranks(mask_l, mask_n)
        pose_idx = [i for i, t in enumerate(tasks) if t in POSE_TASKS and len(batch["keypoints_input"][i])]
        pose_l = pose_n = zero
        if pose_idx:
            boxes = [batch["boxes_input"][i] for i in pose_idx]
            maps = self.pose(dense[pose_idx], boxes)
            targets, weights = [], []
            for i in pose_idx:
                for kp, bx in zip(batch["keypoints_input"][i], batch["boxes_input"][i]):
                    t, w = keypoint_targets(kp, bx, self.pose.out_size, self.cfg.pose_sigma)
                    targets.append(t)
                    weights.append(w)
            pose_l, pose_n = keypoint_loss_sum(maps, torch.stack(targets).to(maps.device),
                                               torch.stack(weights).to(maps.device))
        pose_l = mean_over_ranks(pose_l, pose_n)
        losses = {"loss": mask_l + pose_l, "mask": mask_l.detach(), "pose": pose_l.detach()}
        if self.vqa_readout is not None and "answer_index" in batch:
            vqa_l = mean_over_ranks(*self.readout_loss_sum(out, batch))
            losses.update(loss=losses["loss"] + vqa_l, vqa=vqa_l.detach())
        if self.glimpse is not None and "category_word_ids" in batch:
            # each averaged over its own boxes: the few referring boxes' descriptions, summed in with every box's
            # name, had a tenth of the names' weight (and colour answers swung by 0.3 between two seeds)
            named, described = self.glimpse_loss_sums(out, batch)
            name_l, describe_l = mean_over_ranks(*named), mean_over_ranks(*described)
            losses.update(loss=losses["loss"] + name_l + describe_l, glimpse_name=name_l.detach(),
                          glimpse_describe=describe_l.detach())
            if self.cfg.glimpse_grounds:
                ground_l = mean_over_ranks(*self.grounding_pick_loss_sum(out, batch))
                losses.update(loss=losses["loss"] + ground_l, glimpse_ground=ground_l.detach())
        return losses

    def grounding_pick_loss_sum(self, out: dict, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 2: fit `ground_scale` on the referring rows. Each row's candidates are its (frozen) heatmap's
        highest peaks; the target is the best-ranked one inside the referred box, where some other is not ->
        (sum of the cross-entropies of heat logit + ground_scale x word mass, their count). The names and
        descriptions are not trained by it (a distractor of the same category must still be named so)."""
        g = self.glimpse
        rows = [i for i, t in enumerate(batch["task"]) if t == "referring_segmentation"
                and len(batch["boxes_input"][i]) and len(batch["concept_ids"][i])]
        zero = out["hidden"].sum() * 0 + g.ground_scale * 0
        if not rows:
            return zero, zero.detach()
        centres, heat = peak_candidates(out["heatmap_logits"][rows], out["offsets"][rows], self.cfg.input_size,
                                        g.candidates)
        with torch.no_grad():
            mass = g.candidate_word_mass(out["pixels"][rows], centres, [batch["concept_ids"][i] for i in rows],
                                         self.lm_logits)
        box = torch.stack([batch["boxes_input"][i][0] for i in rows]).to(centres.device).unsqueeze(1)
        inside = ((centres >= box[..., :2]) & (centres <= box[..., 2:])).all(-1)
        useful = inside.any(1) & ~inside.all(1)
        if not useful.any():
            return zero, zero.detach()
        picks = heat[useful] + g.ground_scale * mass[useful]
        loss = F.cross_entropy(picks, inside[useful].float().argmax(1), reduction="sum")
        return loss, loss.new_tensor(float(useful.sum()))

    def glimpse_loss_sums(self, out: dict, batch: dict, max_boxes: int = 64) -> tuple[tuple, tuple]:
        """Stage 2: the glimpse names the object in each ground-truth box of the segmentation and pose rows (the
        category's words, through the frozen vocabulary head), and describes a referring row's box in its
        expression's other words (the colour words are there) -> ((sum of the naming cross-entropies, their
        count), (the same of the descriptions)). At most `max_boxes` per batch (the first ones), to bound the
        step's cost."""
        rows = [i for i, t in enumerate(batch["task"]) if t in MASK_TASKS + POSE_TASKS
                and len(batch["boxes_input"][i]) and len(batch["category_word_ids"][i])]
        zero = out["hidden"].sum() * 0
        if not rows:
            return (zero, zero), (zero, zero)
        owner = torch.cat([torch.full((len(batch["boxes_input"][i]),), i, dtype=torch.long) for i in rows])[:max_boxes]
        boxes = torch.cat([batch["boxes_input"][i] for i in rows])[:max_boxes].to(out["pixels"].device)
        names, descriptions = self.glimpse.name_states(out["pixels"][owner.to(out["pixels"].device)], boxes)
        named = self._words_loss(names, [batch["category_word_ids"][i] for i in owner.tolist()])
        described = [(k, words) for k, i in enumerate(owner.tolist()) if batch["task"][i] == "referring_segmentation"
                     and len(words := self._description_words(batch, i))]
        if not described:
            return (named.sum(), named.new_tensor(float(len(named)))), (zero, zero)
        per_box = self._words_loss(descriptions[[k for k, _ in described]], [w for _, w in described])
        return ((named.sum(), named.new_tensor(float(len(named)))),
                (per_box.sum(), per_box.new_tensor(float(len(per_box)))))

    @staticmethod
    def _description_words(batch: dict, i: int) -> torch.Tensor:
        """A referring expression's words but its category's ("red", "big", "left" of "the big red square on the
        left"): the category's word is in every expression, and as a target it drowned the colour."""
        words, category = batch["concept_ids"][i], batch["category_word_ids"][i]
        return words[~torch.isin(words, category)]

    def _words_loss(self, states: torch.Tensor, words: list[torch.Tensor]) -> torch.Tensor:
        """(n,) mean cross-entropy of each state's vocabulary logits against its words."""
        logp = F.log_softmax(self.lm_logits(states), -1)
        ids = nn.utils.rnn.pad_sequence(words, batch_first=True, padding_value=-1).to(logp.device)  # (n, most words)
        known = (ids >= 0).to(logp.dtype)
        return -(logp.gather(1, ids.clamp(min=0)) * known).sum(1) / known.sum(1)

    def readout_loss_sum(self, out: dict, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 2's VQA loss: the answers' cross-entropy through a readout recomputed with gradients on the
        frozen stage-1 outputs -> (sum over the batch's questions, their count)."""
        rows = (batch["answer_index"] >= 0).nonzero()[:, 0]
        if not len(rows):  # DDP runs with find_unused_parameters: a rank without questions adds nothing
            zero = out["hidden"].sum() * 0
            return zero, zero
        readout = self.vqa_readout(out["heatmap_logits"][rows], out["answer_features"][rows], out["pixels"][rows])
        hidden = out["hidden"][rows]
        if self.glimpse is not None:
            question = hidden[torch.arange(len(rows)), batch["answer_index"][rows]]
            every, first_word = self.glimpse(out["heatmap_logits"][rows], out["offsets"][rows], out["pixels"][rows],
                                                 question, [batch["question_ids"][i] for i in rows.tolist()],
                                                 self.lm_logits)
            readout = readout + every
            at_first = F.one_hot(batch["answer_index"][rows], hidden.shape[1]).unsqueeze(-1).to(hidden.dtype)
            hidden = hidden + at_first * first_word.unsqueeze(1)
        where = answer_positions(batch["answer_index"][rows], hidden.shape[1]).unsqueeze(-1)
        hidden = hidden + where.to(readout.dtype) * readout.unsqueeze(1)
        per_sample = self.answer_token_loss(hidden, batch["labels"][rows])
        return per_sample.sum(), per_sample.new_tensor(float(len(rows)))

    def forward(self, batch: dict, stage: int = 1) -> dict:
        """Training losses of one stage (DistributedDataParallel wraps this call)."""
        if stage == 1:
            return self.stage1_losses(self.stage1(batch, dense=False), batch)
        with torch.no_grad():
            out = self.stage1(batch)
        return self.stage2_losses(out, batch)

    def trainable_parts(self, stage: int) -> tuple[str, ...]:
        return STAGE1_PARTS if stage == 1 else STAGE2_PARTS

    def set_stage(self, stage: int) -> None:
        """Stage 1 trains the LMM and aligner; stage 2 freezes them and trains the task decoders."""
        for name, module in self.named_children():
            module.requires_grad_(name in self.trainable_parts(stage))
        if self.cfg.mask_decoder == "sam":
            self.masks.requires_grad_(False)  # SAM as the paper uses it: pretrained and frozen
