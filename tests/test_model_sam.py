"""lumen-7b's mask path, SAM as the paper runs it, proved with a tiny random SamModel saved in the
Hugging Face layout: loaded from a local folder into the model, the original image through SAM's own
encoder, boxes in original pixels in, masks of the image's size out, equal to calling SamModel directly."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from transformers import SamConfig, SamMaskDecoderConfig, SamModel, SamProcessor, SamPromptEncoderConfig, SamVisionConfig

from lumen_model.checkpoint import load_pretrained_parts
from lumen_model.config import get_preset
from lumen_model.decoders.masks import sam_image_processor
from lumen_model.model import LumenModel

SAM_SIDE = 64
# num_pos_feats must be half the prompt encoder's hidden size (see ../shared/OFFLINE_SETUP.md)
SAM_VISION = dict(hidden_size=32, output_channels=32, num_hidden_layers=1, num_attention_heads=2, image_size=SAM_SIDE,
                  patch_size=8, num_pos_feats=16, mlp_dim=64, global_attn_indexes=[0])
SAM_PROMPT = dict(hidden_size=32, image_size=SAM_SIDE, patch_size=8, image_embedding_size=SAM_SIDE // 8)
SAM_DECODER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_dim=64, iou_head_hidden_dim=32)


def _saved_sam(folder) -> SamModel:
    torch.manual_seed(7)
    sam = SamModel(SamConfig(vision_config=SamVisionConfig(**SAM_VISION).to_dict(),
                             prompt_encoder_config=SamPromptEncoderConfig(**SAM_PROMPT).to_dict(),
                             mask_decoder_config=SamMaskDecoderConfig(**SAM_DECODER).to_dict())).eval()
    sam.save_pretrained(folder / "sam")
    return sam


def test_sam_path_matches_calling_sam_model_directly(tmp_path):
    reference = _saved_sam(tmp_path)
    cfg = dataclasses.replace(get_preset("tiny"), mask_decoder="sam", sam_vision=SAM_VISION, sam_prompt=SAM_PROMPT,
                              sam_mask_decoder=SAM_DECODER)
    model = LumenModel(cfg, vocab_size=64, image_token_id=3, pad_token_id=0).eval()
    assert load_pretrained_parts(model, tmp_path) == {"sam": len(reference.state_dict())}
    model.set_stage(2)
    assert not any(p.requires_grad for p in model.masks.parameters())  # frozen, as the paper uses it

    rng = np.random.default_rng(0)
    image = (rng.random((90, 150, 3)) * 255).astype(np.uint8)  # not square, not SAM's size
    boxes = np.array([[10.0, 12.0, 70.0, 80.0], [60.0, 5.0, 148.0, 50.0]])  # xyxy, original pixels
    masks = model.masks.predict(image, boxes)
    assert masks.shape == (2, 90, 150)

    processor = SamProcessor(image_processor=sam_image_processor(reference))
    inputs = processor(images=image, input_boxes=[boxes.tolist()], return_tensors="pt")
    assert inputs["pixel_values"].shape[-2:] == (SAM_SIDE, SAM_SIDE)  # the image ran at SAM's own input size
    with torch.no_grad():
        out = reference(**{k: v for k, v in inputs.items() if k in ("pixel_values", "input_boxes")}, multimask_output=False)
    direct = processor.image_processor.post_process_masks(out.pred_masks, inputs["original_sizes"],
                                                          inputs["reshaped_input_sizes"], binarize=False)[0][:, 0]
    torch.testing.assert_close(masks, direct)
    assert not torch.equal(masks[0], masks[1])  # each box prompted its own mask
    assert model.masks.predict(image, np.zeros((0, 4))).shape == (0, 90, 150)
