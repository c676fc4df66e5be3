"""Pose decoder (adopted): a small top-down keypoint head on the features inside each person box."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def roi_grids(rois: torch.Tensor, input_size: int, crop: int) -> torch.Tensor:
    """grid_sample grids (n, crop, crop, 2) of the crop x crop cell centres of each xyxy input-pixel roi."""
    lin = (torch.arange(crop, dtype=rois.dtype, device=rois.device) + 0.5) / crop
    x0, y0, x1, y1 = (rois[:, k, None] for k in range(4))
    xs = (x0 + (x1 - x0) * lin) / input_size * 2 - 1  # (n, crop)
    ys = (y0 + (y1 - y0) * lin) / input_size * 2 - 1
    n = len(rois)
    return torch.stack([xs[:, None, :].expand(n, crop, crop), ys[:, :, None].expand(n, crop, crop)], -1)


def crop_features(dense: torch.Tensor, boxes: list[torch.Tensor], input_size: int, crop: int) -> torch.Tensor:
    """Bilinear crops (n, C, crop, crop) of each xyxy input-pixel box from (b, C, M, M) maps (one
    grid_sample for all boxes: the per-box Python loop cost stage 2 more than the crops)."""
    counts = [len(bx) for bx in boxes]
    if not sum(counts):
        return dense.new_zeros((0, dense.shape[1], crop, crop))
    rois = torch.cat([bx.reshape(-1, 4) for bx in boxes]).to(device=dense.device, dtype=dense.dtype)
    batch = torch.repeat_interleave(torch.arange(len(boxes), device=dense.device),
                                    torch.tensor(counts, device=dense.device))
    return F.grid_sample(dense[batch], roi_grids(rois, input_size, crop), align_corners=False)


class PoseHead(nn.Module):
    def __init__(self, in_dim: int, dim: int, num_keypoints: int, crop: int, input_size: int):
        super().__init__()
        self.crop, self.input_size = crop, input_size
        self.net = nn.Sequential(nn.Conv2d(in_dim, dim, 3, 1, 1), nn.GELU(), nn.Conv2d(dim, dim, 3, 1, 1), nn.GELU(),
                                 nn.Upsample(scale_factor=2, mode="bilinear"), nn.Conv2d(dim, dim, 3, 1, 1), nn.GELU(),
                                 nn.Conv2d(dim, num_keypoints, 1))
        nn.init.constant_(self.net[-1].bias, -4.0)  # start at 'no keypoint here' so early BCE is small

    @property
    def out_size(self) -> int:
        return 2 * self.crop

    def forward(self, dense, boxes):
        return self.net(crop_features(dense, boxes, self.input_size, self.crop))  # (n, K, 2c, 2c)


def keypoint_targets(kps: torch.Tensor, box: torch.Tensor, size: int, sigma: float):
    """Gaussian targets (K, size, size) for one person's keypoints (K, 3) inside its xyxy box."""
    x0, y0, x1, y1 = box.tolist()
    u = (kps[:, 0] - x0) / max(x1 - x0, 1e-3) * size - 0.5
    v = (kps[:, 1] - y0) / max(y1 - y0, 1e-3) * size - 0.5
    grid = torch.arange(size, dtype=torch.float32, device=kps.device)
    g = torch.exp(-((grid[None, None, :] - u[:, None, None]) ** 2 + (grid[None, :, None] - v[:, None, None]) ** 2)
                  / (2 * sigma**2))
    weight = (kps[:, 2] > 0).float()
    return g, weight


def keypoint_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """BCE against the Gaussian maps, summed per map and normalized by its Gaussian mass, visible only."""
    total, count = keypoint_loss_sum(logits, target, weight)
    return total / count.clamp(min=1.0)


def keypoint_loss_sum(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`keypoint_loss` as (sum over the visible keypoints' maps, their number), for a mean over DDP ranks."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum((2, 3))
    per_map = bce / target.sum((2, 3)).clamp(min=1.0)
    return (per_map * weight).sum(), weight.sum()


def decode_keypoints(maps: np.ndarray, box_xyxy: np.ndarray) -> tuple[np.ndarray, float]:
    """Argmax per channel with a quarter-pixel step towards the higher neighbour -> (K, 3), score."""
    k, h, w = maps.shape
    out = np.zeros((k, 3))
    x0, y0, x1, y1 = box_xyxy
    for j in range(k):
        m = maps[j]
        y, x = np.unravel_index(np.argmax(m), m.shape)
        fx, fy = float(x), float(y)
        if 0 < x < w - 1:
            fx += 0.25 * np.sign(m[y, x + 1] - m[y, x - 1])
        if 0 < y < h - 1:
            fy += 0.25 * np.sign(m[y + 1, x] - m[y - 1, x])
        out[j] = [x0 + (fx + 0.5) / w * (x1 - x0), y0 + (fy + 0.5) / h * (y1 - y0), 2]
    score = float(1 / (1 + np.exp(-maps.reshape(k, -1).max(1))).mean())
    return out, score
