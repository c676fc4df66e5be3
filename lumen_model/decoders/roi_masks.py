"""Box-aligned mask head (adopted for the tiny preset; `mask_decoder: roi` in the config).

Per box: the aligner's instruction-aware stride-4 features and its heatmap, cropped to the box
(bilinear, like RoIAlign), plus the box's raw pixels at twice that resolution, go through a few
convolutions to a mask inside the box. A from-scratch SAM decoder needs far more steps than a CPU
demo has (segm AP 0.025 after 500 stage-2 steps); a head that only has to separate the object from
its background inside a known box learns in a few hundred.

Boxes are enlarged by `context` around their centre, so a predicted box a little too small still
gets the whole object, and training jitters the ground-truth boxes like a detector's would be.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from lumen_model.decoders.pose import crop_features, roi_grids
from lumen_model.losses import mask_loss_sum


def _block(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.GroupNorm(8, cout), nn.GELU())


def enlarge(boxes: torch.Tensor, factor: float) -> torch.Tensor:
    """xyxy boxes scaled by `factor` about their centres."""
    c = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1.0) * factor / 2
    return torch.cat([c - half, c + half], 1)


def jitter(boxes: torch.Tensor, amount: float) -> torch.Tensor:
    """Each edge moved by up to `amount` of the box's width/height (training only; torch's RNG, so resume is exact)."""
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1.0).repeat(1, 2)
    return boxes + (torch.rand(boxes.shape, device=boxes.device) * 2 - 1) * amount * wh


class RoiMaskHead(nn.Module):
    def __init__(self, feat_dim: int, input_size: int, crop: int = 14, dim: int = 64, context: float = 1.25,
                 box_jitter: float = 0.1):
        super().__init__()
        self.input_size, self.crop, self.context, self.box_jitter = input_size, crop, context, box_jitter
        self.feat_in = nn.Sequential(nn.Conv2d(feat_dim + 1, dim, 1), nn.GELU(), _block(dim, dim))
        self.pix_in = nn.Sequential(_block(3, 32), _block(32, 32))
        self.body = nn.Sequential(_block(dim + 32, dim), _block(dim, dim), nn.Conv2d(dim, 1, 1))

    @property
    def out_size(self) -> int:
        return 2 * self.crop

    def box_logits(self, dense, heat_logits, pixels, rois: list[torch.Tensor]) -> torch.Tensor:
        """Mask logits (n, 2c, 2c) inside each roi (xyxy input pixels): dense (b, C, M, M), heat_logits
        (b, M, M), pixels (b, 3, S, S) normalized; rois per sample."""
        feats = torch.cat([dense, torch.sigmoid(heat_logits).unsqueeze(1)], 1)
        f = self.feat_in(crop_features(feats, rois, self.input_size, self.crop))
        p = self.pix_in(crop_features(pixels, rois, self.input_size, self.out_size))
        f = F.interpolate(f, size=p.shape[-2:], mode="bilinear", align_corners=False)
        return self.body(torch.cat([f, p], 1))[:, 0]

    def loss_sum(self, dense, heat_logits, pixels, boxes: list[torch.Tensor],
                 masks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """BCE + dice between the head's masks and the true masks (n_i, S, S) cropped to the same rois, as (sum
        over the masks, number of masks): the mean is taken over every DDP rank's masks (`mean_over_ranks`)."""
        rois = [enlarge(jitter(b, self.box_jitter) if self.training else b, self.context) for b in boxes]
        logits = self.box_logits(dense, heat_logits, pixels, rois)
        # each true mask cropped to its own roi, all in one grid_sample
        every = torch.cat([ms.reshape(-1, *ms.shape[-2:]) for ms in masks]).float()[:, None].to(logits.device)
        target = F.grid_sample(every, roi_grids(torch.cat(rois).to(every), self.input_size, self.out_size),
                               align_corners=False)
        return mask_loss_sum(logits, target[:, 0])

    def roi_logits(self, dense, heat_logits, pixels, boxes: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask logits (n, 2c, 2c), the enlarged xyxy input-pixel rois (n, 4) they cover) for every sample's boxes:
        what a caller pastes at any resolution (`paste`; the predictor pastes at the original image's pixels)."""
        rois = [enlarge(b, self.context) for b in boxes]
        logits = self.box_logits(dense, heat_logits, pixels, rois)
        return logits, torch.cat(rois) if len(logits) else logits.new_zeros((0, 4))

    def forward(self, dense, heat_logits, pixels, boxes: list[torch.Tensor]) -> list[torch.Tensor]:
        """Mask logits on the input canvas (n_i, S, S) per sample; far below 0 outside the enlarged box."""
        logits, rois = self.roi_logits(dense, heat_logits, pixels, boxes)
        return list(paste(logits, rois, self.input_size).split([len(b) for b in boxes]))


def paste(logits: torch.Tensor, rois: torch.Tensor, height: int, width: int | None = None,
          outside: float = -20.0) -> torch.Tensor:
    """(n, h, w) logits inside xyxy rois -> (n, height, width) (square when `width` is None), bilinear at each
    pixel's centre. The rois are in that canvas's pixels: pasting at the original image's pixels rather than on the
    S x S input and resizing that keeps the masks where the image is (see `Predictor._mask_logits`)."""
    width = height if width is None else width
    if not len(logits):
        return logits.new_zeros((0, height, width))
    cx = torch.arange(width, dtype=logits.dtype, device=logits.device) + 0.5
    cy = torch.arange(height, dtype=logits.dtype, device=logits.device) + 0.5
    x0, y0, x1, y1 = (rois[:, k, None] for k in range(4))
    gx = ((cx[None] - x0) / (x1 - x0).clamp(min=1e-3)) * 2 - 1  # (n, width): -1..1 inside the roi
    gy = ((cy[None] - y0) / (y1 - y0).clamp(min=1e-3)) * 2 - 1
    n = len(logits)
    grid = torch.stack([gx[:, None, :].expand(n, height, width), gy[:, :, None].expand(n, height, width)], -1)
    out = F.grid_sample(logits[:, None], grid, align_corners=False, padding_mode="border")[:, 0]
    inside = (gx.abs() <= 1)[:, None, :] & (gy.abs() <= 1)[:, :, None]
    return torch.where(inside, out, torch.full_like(out, outside))
