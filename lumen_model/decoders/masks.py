"""Mask decoder: SAM's prompt encoder + mask decoder (transformers' SamModel), prompted with boxes.

At full size the SAM ViT-H decoder is loaded frozen; at tiny size the same classes are trained on the
demo masks. SAM's own image encoder is not run: Lumen's instruction-aware features are projected
into SAM's image-embedding space.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import SamConfig, SamMaskDecoderConfig, SamModel, SamPromptEncoderConfig, SamVisionConfig


def build_sam(cfg) -> SamModel:
    return SamModel(SamConfig(vision_config=SamVisionConfig(**cfg.sam_vision).to_dict(),
                              prompt_encoder_config=SamPromptEncoderConfig(**cfg.sam_prompt).to_dict(),
                              mask_decoder_config=SamMaskDecoderConfig(**cfg.sam_mask_decoder).to_dict()))


class BoxPromptedMasks(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.sam = build_sam(cfg)
        self.sam.vision_encoder.requires_grad_(False)  # unused: features come from the aligner
        self.embed_size = cfg.sam_prompt["image_embedding_size"]
        self.prompt_size = cfg.sam_prompt["image_size"]
        self.input_size = cfg.input_size
        self.proj = nn.Conv2d(cfg.aligner_dim, cfg.sam_vision["output_channels"], 1)

    def forward(self, dense: torch.Tensor, boxes: list[torch.Tensor]) -> list[torch.Tensor]:
        """dense (b, C, M, M); boxes per sample (n_i, 4) xyxy input pixels -> mask logits (n_i, S, S)."""
        emb = self.proj(F.interpolate(dense, size=(self.embed_size, self.embed_size), mode="bilinear",
                                      align_corners=False))
        out = []
        for i, bx in enumerate(boxes):
            if not len(bx):
                out.append(dense.new_zeros((0, self.input_size, self.input_size)))
                continue
            scaled = bx * (self.prompt_size / self.input_size)
            res = self.sam(image_embeddings=emb[i:i + 1], input_boxes=scaled.unsqueeze(0), multimask_output=False)
            low = res.pred_masks[0, :, 0]  # (n, 4*E, 4*E)
            out.append(F.interpolate(low.unsqueeze(1), size=(self.input_size, self.input_size), mode="bilinear",
                                     align_corners=False)[:, 0])
        return out
