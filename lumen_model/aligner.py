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


class Attention(nn.MultiheadAttention):
    """nn.MultiheadAttention (same parameters, initialisation and state-dict keys) for batch-first inputs
    without a mask, computed without the (L, b, E) transposes and copies of its general path: the
    aligner's image tokens (16 rows x 256 tokens) go through four of them per layer."""

    def forward(self, query, key, value, need_weights: bool = False):
        assert not need_weights, "the aligner never reads attention weights"
        e, h = self.embed_dim, self.num_heads
        w, b = self.in_proj_weight, self.in_proj_bias
        if key is query:  # q and k from one input: one matmul for both
            q, k = F.linear(query, w[:2 * e], b[:2 * e]).split(e, -1)
        else:
            q, k = F.linear(query, w[:e], b[:e]), F.linear(key, w[e:2 * e], b[e:2 * e])
        v = F.linear(value, w[2 * e:], b[2 * e:])
        heads = [t.unflatten(-1, (h, e // h)).transpose(1, 2) for t in (q, k, v)]  # (b, h, L, d)
        out = F.scaled_dot_product_attention(*heads, dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).flatten(2)), None


class TwoWayLayer(nn.Module):
    def __init__(self, dim: int, heads: int, image_self_attn: bool = False):
        super().__init__()
        self.self_attn = Attention(dim, heads, batch_first=True)
        # image tokens attend to each other after hearing the queries: "the circle on the left"
        # needs the circles compared, which no single token can do alone
        self.img_attn = Attention(dim, heads, batch_first=True) if image_self_attn else None
        self.img_norm = nn.LayerNorm(dim) if image_self_attn else None
        self.q2i = Attention(dim, heads, batch_first=True)
        self.i2q = Attention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(4))

    def forward(self, q, img, pos):
        q = self.norms[0](q + self.self_attn(q, q, q, need_weights=False)[0])
        q = self.norms[1](q + self.q2i(q, img + pos, img, need_weights=False)[0])
        q = self.norms[2](q + self.mlp(q))
        img = self.norms[3](img + self.i2q(img + pos, q, q, need_weights=False)[0])
        if self.img_attn is not None:
            x = img + pos
            img = self.img_norm(img + self.img_attn(x, x, img, need_weights=False)[0])
        return q, img


class ResBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, dim, 3, 1, 1, bias=False), nn.GroupNorm(8, dim), nn.GELU(),
                                  nn.Conv2d(dim, dim, 3, 1, 1, bias=False), nn.GroupNorm(8, dim))

    def forward(self, x):
        return F.gelu(x + self.body(x))


def _down(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.GroupNorm(8, cout), nn.GELU())


class PixelEncoder(nn.Module):
    """A small CNN on the raw pixels: stride-4 and stride-8 maps for the aligner.

    A ViT trained from scratch on a few hundred images learns colour long before shape; convolutions
    see an object's outline from the first steps. GroupNorm (not BatchNorm) keeps every sample's
    output independent of its batch, so DDP ranks compute what one process would.
    """

    def __init__(self, dim: int):
        super().__init__()
        c4, c8 = dim // 2, dim
        self.to4 = nn.Sequential(_down(3, c4 // 2), _down(c4 // 2, c4), ResBlock(c4))
        self.to8 = nn.Sequential(_down(c4, c8), ResBlock(c8), ResBlock(c8))

    def forward(self, pixels):
        f4 = self.to4(pixels)
        return f4, self.to8(f4)


class DenseAligner(nn.Module):
    """(image tokens, [LOC] state, pixels) -> heatmap logits, size maps, offsets, dense features."""

    def __init__(self, image_dim: int, text_dim: int, dim: int, layers: int, heads: int, heatmap_size: int,
                 pixel_encoder: str = "stem", image_self_attn: bool = False, token_grid: int = 16,
                 colour_match: int = 0):
        super().__init__()
        self.dim, self.heatmap_size = dim, heatmap_size
        self.img_proj = nn.Linear(image_dim, dim)
        self.loc_proj = nn.Linear(text_dim, dim)
        self.queries = nn.Parameter(torch.randn(3, dim) * 0.02)  # [M], [H], [W]
        self.layers = nn.ModuleList(TwoWayLayer(dim, heads, image_self_attn) for _ in range(layers))
        # a light stride-4 stem on the raw pixels keeps detail the stride-8 ViT tokens lose
        # (kept narrow, and the fuse is 1x1 + depthwise 3x3: full 3x3 convs here cost more than the LLM on a CPU)
        stem_dim = dim // 2
        self.pixel_encoder, self.token_grid = pixel_encoder, token_grid
        if pixel_encoder == "cnn":
            self.pixels = PixelEncoder(dim)
            self.pix_proj = nn.Linear(dim, dim)  # stride-8 CNN features added to the ViT tokens
        else:
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.GELU(), nn.Conv2d(16, stem_dim, 3, 2, 1), nn.GELU())
        # fuse = 1x1 over [upsampled tokens, stride-4 pixels], then depthwise 3x3 + 1x1. The 1x1 is split in
        # its two inputs: the pixel half is per image (shared by its instructions), the token half runs
        # on the coarse grid before upsampling (a 1x1 conv commutes with bilinear resizing): same maths, less work.
        self.fuse_grid = nn.Conv2d(dim, dim, 1)
        self.fuse_pix = nn.Conv2d(stem_dim, dim, 1, bias=False)
        self.fuse = nn.Sequential(nn.GELU(), nn.Conv2d(dim, dim, 3, 1, 1, groups=dim), nn.GELU(), nn.Conv2d(dim, dim, 1))
        self.offset_head = nn.Conv2d(dim, 2, 1)  # sub-pixel center offset (adopted; see config)
        self.heat_bias = nn.Parameter(torch.tensor(-4.0))  # start near 'no object' so focal loss is stable
        # colour_match > 0: a low-rank bilinear term between the [LOC] state and each heatmap pixel's own colour
        # (the image average-pooled to the heatmap grid). Trained from scratch, the heatmap above followed the
        # shape word and ignored the colour word, though [LOC] held both: "the yellow square" scored the purple
        # square as high as the yellow one. The loc side starts at zero, so the term starts as a no-op
        self.colour = None
        if colour_match:
            self.colour = nn.Sequential(nn.Conv2d(3, colour_match, 1), nn.GELU(), nn.Conv2d(colour_match, colour_match, 1))
            self.loc_colour = nn.Linear(dim, colour_match)
            nn.init.zeros_(self.loc_colour.weight)
            nn.init.zeros_(self.loc_colour.bias)

    def encode_pixels(self, pixel_values) -> tuple:
        """Instruction-independent pixel features, computed once per image and shared by its instructions:
        the stride-4 map as the fuse's pixel half (u, dim, M, M), the stride-8 CNN tokens that are
        added to the ViT's (u, g*g, dim), None without the CNN, and with `colour_match` each heatmap pixel's
        colour embedding (u, k, M, M)."""
        m = self.heatmap_size
        if self.pixel_encoder == "cnn":
            fine, coarse = self.pixels(pixel_values)
            g = self.token_grid
            coarse = F.adaptive_avg_pool2d(coarse, (g, g)) if coarse.shape[-1] != g else coarse
            tokens = self.pix_proj(coarse.flatten(2).transpose(1, 2))
        else:
            fine, tokens = self.stem(pixel_values), None
        if fine.shape[-1] != m:
            fine = F.interpolate(fine, size=(m, m), mode="bilinear", align_corners=False)
        if self.colour is None:
            return self.fuse_pix(fine), tokens
        rgb = F.adaptive_avg_pool2d(pixel_values, (m, m)) - 0.5
        return self.fuse_pix(fine), tokens, self.colour(rgb)

    def colour_logits(self, loc, pixel_feats) -> torch.Tensor | float:
        """`colour_match`: (b, M, M) agreement of each row's [LOC] with every heatmap pixel's colour (0 without)."""
        if self.colour is None:
            return 0.0
        return torch.einsum("bk,bkhw->bhw", self.loc_colour(loc), pixel_feats[2])

    def forward(self, image_tokens, loc_state, pixel_feats, dense: bool = True):
        """pixel_feats: `encode_pixels` of each sample's image (computed once per image by the caller).
        dense=False: the heads only, without the dense map (stage-1 training needs no more; see `_heads_only`)."""
        b, n, _ = image_tokens.shape
        g = int(math.isqrt(n))
        img = self.img_proj(image_tokens)
        fine, tokens = pixel_feats[:2]
        if tokens is not None:
            img = img + tokens
        pos = sine_positions(g, g, self.dim, img.device).unsqueeze(0)
        loc = self.loc_proj(loc_state)
        q = torch.cat([loc.unsqueeze(1), self.queries.unsqueeze(0).expand(b, -1, -1)], 1)
        for layer in self.layers:
            q, img = layer(q, img, pos)
        grid = img.transpose(1, 2).reshape(b, self.dim, g, g)
        m = self.heatmap_size
        colour = self.colour_logits(loc, pixel_feats)
        if not dense:
            out = self._heads_only(q, grid, fine)
            out["heatmap_logits"] = out["heatmap_logits"] + colour
            return out
        up, up_fuse = F.interpolate(torch.cat([grid, self.fuse_grid(grid)], 1), size=(m, m), mode="bilinear",
                                    align_corners=False).split(self.dim, 1)
        dense = self.fuse(up_fuse + fine) + up  # (b, dim, m, m)
        scale = 1.0 / math.sqrt(self.dim)
        heat = torch.einsum("bc,bchw->bhw", q[:, 1], dense) * scale + self.heat_bias + colour
        sizes = torch.sigmoid(torch.einsum("bkc,bchw->bkhw", q[:, 2:4], dense) * scale)  # (b, 2, m, m): w/S, h/S
        offsets = torch.sigmoid(self.offset_head(dense))  # (b, 2, m, m) in [0, 1) of a heatmap pixel
        return {"heatmap_logits": heat, "sizes": sizes, "offsets": offsets, "dense": dense, "grid": grid}

    def _heads_only(self, q, grid, fine) -> dict:
        """The heatmap, size and offset maps of `forward` without building the dense map.

        Every head is linear in dense = W h + b + up(grid), where h is the fuse up to its last 1x1 conv
        (W, b) and up() the bilinear upsampling; a head's vector v gives v.dense = (W^T v).h + v.b +
        up(v.grid). So the 5 head vectors are pushed through W and the upsampling instead of the
        (b, dim, M, M) map: the same values (up to float rounding) without the dim x dim conv over every
        pixel, the upsampled half of the grid and their gradients (on a CPU, a tenth of a stage-1 step).
        """
        b, m = q.shape[0], self.heatmap_size
        last = self.fuse[-1]
        h = self.fuse[:-1](F.interpolate(self.fuse_grid(grid), size=(m, m), mode="bilinear", align_corners=False) + fine)
        scale = 1.0 / math.sqrt(self.dim)
        off_w = self.offset_head.weight[:, :, 0, 0]  # (2, dim)
        v = torch.cat([q[:, 1:4] * scale, off_w.unsqueeze(0).expand(b, -1, -1)], 1)  # (b, 5, dim): heat, w, h, dx, dy
        maps = torch.einsum("bkc,bchw->bkhw", v @ last.weight[:, :, 0, 0], h)
        maps = maps + F.interpolate(torch.einsum("bkc,bchw->bkhw", v, grid), size=(m, m), mode="bilinear",
                                    align_corners=False)
        maps = maps + (v @ last.bias).unsqueeze(-1).unsqueeze(-1)
        heat = maps[:, 0] + self.heat_bias
        sizes = torch.sigmoid(maps[:, 1:3])
        offsets = torch.sigmoid(maps[:, 3:5] + self.offset_head.bias.view(1, 2, 1, 1))
        return {"heatmap_logits": heat, "sizes": sizes, "offsets": offsets, "grid": grid}
