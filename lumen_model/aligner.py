"""The V-L dense aligner: [LOC] + learned queries [M] [H] [W] <-> image features.

Two-way attention (queries attend to the image, the image attends back to the queries) makes the
dense features instruction-aware; the heatmap and the H/W maps are dot products of the [M], [H],
[W] queries with every pixel of the upsampled features (a stride-4 map covering the padded square).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def sine_positions(h: int, w: int, dim: int, device) -> torch.Tensor:
    """2D sine position embedding, (h*w, dim)."""
    y, x = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                          torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    quarter = dim // 4
    freq = torch.exp(torch.arange(quarter, device=device, dtype=torch.float32) * (-math.log(10000.0) / quarter))
    parts = [torch.sin(x.reshape(-1, 1) * freq), torch.cos(x.reshape(-1, 1) * freq),
             torch.sin(y.reshape(-1, 1) * freq), torch.cos(y.reshape(-1, 1) * freq)]
    return torch.cat(parts, 1)


class TwoWayLayer(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.q2i = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.i2q = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(4))

    def forward(self, q, img, pos):
        q = self.norms[0](q + self.self_attn(q, q, q, need_weights=False)[0])
        q = self.norms[1](q + self.q2i(q, img + pos, img, need_weights=False)[0])
        q = self.norms[2](q + self.mlp(q))
        img = self.norms[3](img + self.i2q(img + pos, q, q, need_weights=False)[0])
        return q, img


class DenseAligner(nn.Module):
    """(image tokens, [LOC] state, pixels) -> heatmap logits, size maps, offsets, dense features."""

    def __init__(self, image_dim: int, text_dim: int, dim: int, layers: int, heads: int, heatmap_size: int):
        super().__init__()
        self.dim, self.heatmap_size = dim, heatmap_size
        self.img_proj = nn.Linear(image_dim, dim)
        self.loc_proj = nn.Linear(text_dim, dim)
        self.queries = nn.Parameter(torch.randn(3, dim) * 0.02)  # [M], [H], [W]
        self.layers = nn.ModuleList(TwoWayLayer(dim, heads) for _ in range(layers))
        # a light stride-4 stem on the raw pixels keeps detail the stride-8 ViT tokens lose
        # (kept narrow, and the fuse is 1x1 + depthwise 3x3: full 3x3 convs here cost more than the LLM on a CPU)
        stem_dim = dim // 2
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.GELU(), nn.Conv2d(16, stem_dim, 3, 2, 1), nn.GELU())
        self.fuse = nn.Sequential(nn.Conv2d(dim + stem_dim, dim, 1), nn.GELU(),
                                  nn.Conv2d(dim, dim, 3, 1, 1, groups=dim), nn.GELU(), nn.Conv2d(dim, dim, 1))
        self.offset_head = nn.Conv2d(dim, 2, 1)  # sub-pixel center offset (adopted; see config)
        self.heat_bias = nn.Parameter(torch.tensor(-4.0))  # start near 'no object' so focal loss is stable

    def forward(self, image_tokens, loc_state, pixel_values):
        b, n, _ = image_tokens.shape
        g = int(math.isqrt(n))
        img = self.img_proj(image_tokens)
        pos = sine_positions(g, g, self.dim, img.device).unsqueeze(0)
        q = torch.cat([self.loc_proj(loc_state).unsqueeze(1), self.queries.unsqueeze(0).expand(b, -1, -1)], 1)
        for layer in self.layers:
            q, img = layer(q, img, pos)
        grid = img.transpose(1, 2).reshape(b, self.dim, g, g)
        m = self.heatmap_size
        up = F.interpolate(grid, size=(m, m), mode="bilinear", align_corners=False)
        stem = F.interpolate(self.stem(pixel_values), size=(m, m), mode="bilinear", align_corners=False)
        dense = self.fuse(torch.cat([up, stem], 1)) + up  # (b, dim, m, m)
        scale = 1.0 / math.sqrt(self.dim)
        heat = torch.einsum("bc,bchw->bhw", q[:, 1], dense) * scale + self.heat_bias
        sizes = torch.sigmoid(torch.einsum("bkc,bchw->bkhw", q[:, 2:4], dense) * scale)  # (b, 2, m, m): w/S, h/S
        offsets = torch.sigmoid(self.offset_head(dense))  # (b, 2, m, m) in [0, 1) of a heatmap pixel
        return {"heatmap_logits": heat, "sizes": sizes, "offsets": offsets, "dense": dense, "grid": grid}
