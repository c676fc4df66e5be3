"""SAM as the paper runs it (`mask_decoder: sam`, the lumen-7b preset): a frozen, pretrained SamModel
(image encoder + prompt encoder + mask decoder, transformers' classes) prompted with Lumen's boxes.

The original image goes through SAM's own preprocessing and image encoder at SAM's input size
(longest side resized to it, normalized, padded); the boxes, in original pixels, are mapped into
that frame; the low-resolution masks come back to the image's own size. Weights come from a local
folder (`load_pretrained_parts`, WEIGHTS_DIR/sam/), never from a hub.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from transformers import SamConfig, SamMaskDecoderConfig, SamModel, SamPromptEncoderConfig, SamVisionConfig


def build_sam(cfg) -> SamModel:
    return SamModel(SamConfig(vision_config=SamVisionConfig(**cfg.sam_vision.kwargs()).to_dict(),
                              prompt_encoder_config=SamPromptEncoderConfig(**cfg.sam_prompt.kwargs()).to_dict(),
                              mask_decoder_config=SamMaskDecoderConfig(**cfg.sam_mask_decoder.kwargs()).to_dict()))


def sam_image_processor(sam: SamModel):
    """SAM's own preprocessing at this SamModel's input size (resize the longest side, normalize, pad)."""
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil  # no torchvision needed

    side = sam.config.vision_config.image_size
    return SamImageProcessorPil(size={"longest_edge": side}, pad_size={"height": side, "width": side})


class SamBoxPrompts(nn.Module):
    """Frozen SAM: (original RGB image, xyxy boxes in its pixels) -> mask logits of the image's size."""

    def __init__(self, cfg=None, sam: SamModel | None = None):
        super().__init__()
        self.sam = sam if sam is not None else build_sam(cfg)
        self.sam.requires_grad_(False)
        self._processor = None

    @property
    def processor(self):
        if self._processor is None:
            self._processor = sam_image_processor(self.sam)
        return self._processor

    @torch.no_grad()
    def predict(self, image: np.ndarray, boxes_xyxy: np.ndarray) -> torch.Tensor:
        """image (H, W, 3) uint8 RGB; boxes (n, 4) xyxy original pixels -> logits (n, H, W)."""
        h, w = image.shape[:2]
        if not len(boxes_xyxy):
            return torch.zeros((0, h, w))
        inputs = self.processor(image, return_tensors="pt")
        rh, rw = (int(v) for v in inputs["reshaped_input_sizes"][0])
        scale = torch.tensor([rw / w, rh / h, rw / w, rh / h], dtype=torch.float32)
        device = next(self.sam.parameters()).device
        boxes = (torch.as_tensor(np.asarray(boxes_xyxy), dtype=torch.float32) * scale).to(device)
        out = self.sam(pixel_values=inputs["pixel_values"].to(device), input_boxes=boxes[None], multimask_output=False)
        masks = self.processor.post_process_masks(out.pred_masks.cpu(), inputs["original_sizes"],
                                                  inputs["reshaped_input_sizes"], binarize=False)
        return masks[0][:, 0]  # (n, H, W) logits
