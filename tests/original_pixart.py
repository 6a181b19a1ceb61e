"""An independent torch re-statement of the original PixArtMS forward pass (module names of the original
``.pth`` files), written from the semantics of PixArt-sigma's ``diffusion/model/nets/PixArtMS.py``. Test-only: it checks our original-
layout key map and the KV-compression / qk-norm variants that diffusers cannot express."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def sincos_2d(dim, h, w, base_size, scale):
    def axis(pos):
        omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    gh = np.arange(h, dtype=np.float64) / (h / base_size) / scale
    gw = np.arange(w, dtype=np.float64) / (w / base_size) / scale
    ww, hh = np.meshgrid(gw, gh)
    return torch.from_numpy(np.concatenate([axis(ww), axis(hh)], axis=1)).float()


class Mlp(nn.Module):
    def __init__(self, i, h, o):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(i, h), nn.Linear(h, o)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SelfAttn(nn.Module):
    def __init__(self, dim, heads, sr, qk_norm):
        super().__init__()
        self.heads, self.sr_ratio, self.use_qk_norm = heads, sr, qk_norm
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        if sr > 1:
            self.sr = nn.Conv2d(dim, dim, sr, stride=sr, groups=dim)
            self.norm = nn.LayerNorm(dim)
        if qk_norm:
            self.q_norm, self.k_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def down(self, t, h, w):
        b, n, c = t.shape
        t = self.sr(t.reshape(b, h, w, c).permute(0, 3, 1, 2)).reshape(b, c, -1).permute(0, 2, 1)
        return self.norm(t)

    def forward(self, x, h, w):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, c).unbind(2)
        if self.use_qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.sr_ratio > 1:
            k, v = self.down(k, h, w), self.down(v, h, w)
        split = lambda t: t.reshape(b, -1, self.heads, c // self.heads).transpose(1, 2)
        out = F.scaled_dot_product_attention(split(q), split(k), split(v))
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class CrossAttn(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q_linear, self.kv_linear, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)

    def forward(self, x, y, mask):
        b, n, c = x.shape
        q = self.q_linear(x).reshape(b, n, self.heads, -1).transpose(1, 2)
        k, v = self.kv_linear(y).reshape(b, y.shape[1], 2, self.heads, -1).unbind(2)
        attn_mask = None if mask is None else (mask[:, None, None, :] > 0)
        out = F.scaled_dot_product_attention(q, k.transpose(1, 2), v.transpose(1, 2), attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, dim, heads, sr, qk_norm):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttn(dim, heads, sr, qk_norm)
        self.cross_attn = CrossAttn(dim, heads)
        self.mlp = Mlp(dim, 4 * dim, dim)
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim ** 0.5)

    def forward(self, x, y, t, mask, h, w):
        b = x.shape[0]
        sm, cm, gm, sp, cp, gp = (self.scale_shift_table[None] + t.reshape(b, 6, -1)).chunk(6, dim=1)
        x = x + gm * self.attn(self.norm1(x) * (1 + cm) + sm, h, w)
        x = x + self.cross_attn(x, y, mask)
        return x + gp * self.mlp(self.norm2(x) * (1 + cp) + sp)


# PixArt-Sigma XL/2 at 1024px, as the released .pth files are (435 parameters)
XL2 = dict(depth=28, hidden=1152, heads=16, caption_channels=4096, sample_size=128, pe_interpolation=2.0)


class OriginalPixArtMS(nn.Module):
    def __init__(self, depth=2, hidden=16, heads=2, patch=2, in_channels=4, caption_channels=24, sample_size=8,
                 pe_interpolation=1.0, kv_compress_layers=(), scale_factor=1, qk_norm=False):
        super().__init__()
        self.patch, self.hidden, self.out_channels = patch, hidden, 2 * in_channels
        self.base_size, self.pe_interpolation = sample_size // patch, pe_interpolation
        self.x_embedder = nn.Module()
        self.x_embedder.proj = nn.Conv2d(in_channels, hidden, patch, stride=patch)
        self.t_embedder = nn.Module()
        self.t_embedder.mlp = nn.Sequential(nn.Linear(256, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))
        self.y_embedder = nn.Module()
        self.y_embedder.y_proj = Mlp(caption_channels, hidden, hidden)
        self.y_embedder.register_buffer("y_embedding", torch.randn(300, caption_channels) / caption_channels ** 0.5)
        self.blocks = nn.ModuleList(
            Block(hidden, heads, scale_factor if i in kv_compress_layers else 1, qk_norm) for i in range(depth))
        self.final_layer = nn.Module()
        self.final_layer.norm_final = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.final_layer.linear = nn.Linear(hidden, patch * patch * self.out_channels)
        self.final_layer.scale_shift_table = nn.Parameter(torch.randn(2, hidden) / hidden ** 0.5)
        grid = sample_size // patch
        self.register_buffer("pos_embed", sincos_2d(hidden, grid, grid, self.base_size, pe_interpolation)[None])

    def forward(self, x, t, y, mask=None):
        b, _, hh, ww = x.shape
        h, w = hh // self.patch, ww // self.patch
        pos = sincos_2d(self.hidden, h, w, self.base_size, self.pe_interpolation)
        x = self.x_embedder.proj(x).flatten(2).transpose(1, 2) + pos
        freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float32) / 128)
        args = t[:, None].float() * freqs[None]
        temb = self.t_embedder.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))
        t6 = self.t_block(temb)
        y = self.y_embedder.y_proj(y)
        for block in self.blocks:
            x = block(x, y, t6, mask, h, w)
        shift, scale = (self.final_layer.scale_shift_table[None] + temb[:, None]).chunk(2, dim=1)
        x = self.final_layer.linear(self.final_layer.norm_final(x) * (1 + scale) + shift)
        p, c = self.patch, self.out_channels
        x = x.reshape(b, h, w, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, c, h * p, w * p)
