"""PixArt-Sigma diffusion transformer in MindSpore.

The same function as the original ``PixArtMS`` and diffusers' ``PixArtTransformer2DModel`` (Sigma: adaLN-single,
no micro-conditions), with diffusers' parameter names. The original code's two optional self-attention variants,
KV-token compression (``sampling="conv"``) and ``qk_norm``, are built when the config asks for them.
"""
from __future__ import annotations

import math
from functools import lru_cache

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from .config import PixArtConfig
from .layers import (GELUTanh, Conv2d, LayerNorm, Linear, attention, key_mask_bias, to_ms_dtype,
                     zeros_param)
from .loading import PretrainedMixin

TIMESTEP_DIM = 256


def timestep_frequencies(dim: int = TIMESTEP_DIM) -> np.ndarray:
    """``exp(-ln(1e4) * i / half)`` in fp32, as both torch implementations compute it.

    The exponent is formed in fp32 like torch; exp is taken in float64 and rounded, which agrees with torch's
    fp32 exp on 126 of 128 entries (numpy's fp32 exp on 73): at t=999 an ulp here is 6e-5 in the argument.
    """
    half = dim // 2
    exponent = (-math.log(10000.0) * np.arange(half, dtype=np.float32)) / np.float32(half)
    return np.exp(exponent.astype(np.float64)).astype(np.float32)


@lru_cache(maxsize=64)
def sincos_pos_embed(dim: int, grid_h: int, grid_w: int, base_size: int, interpolation_scale: float) -> np.ndarray:
    """(grid_h*grid_w, dim) fp32 position embedding for a token grid, computed in float64.

    Each axis spans [0, base_size / interpolation_scale) whatever its length; the first half of the channels
    encodes the column (w) coordinate, the second half the row (h); each half is [sin, cos].
    """
    pos_h = np.arange(grid_h, dtype=np.float64) / (grid_h / base_size) / interpolation_scale
    pos_w = np.arange(grid_w, dtype=np.float64) / (grid_w / base_size) / interpolation_scale
    ww, hh = np.meshgrid(pos_w, pos_h)  # (grid_h, grid_w) each, row-major token order

    def axis_embed(pos):
        omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([axis_embed(ww), axis_embed(hh)], axis=1).astype(np.float32)


def split_heads(x, heads: int, head_dim: int):
    """(B, N, heads*head_dim) -> (B, heads, N, head_dim)."""
    b, n, _ = x.shape
    return x.reshape(b, n, heads, head_dim).swapaxes(1, 2)


class PatchEmbed(nn.Cell):
    """Conv patchify plus the sin-cos position embedding of the actual token grid (added in fp32)."""

    def __init__(self, cfg: PixArtConfig, dtype):
        super().__init__()
        self.proj = Conv2d(cfg.in_channels, cfg.hidden_size, cfg.patch_size, stride=cfg.patch_size, dtype=dtype)
        self.dim = cfg.hidden_size
        self.base_size = cfg.base_size
        self.interpolation_scale = cfg.pos_interpolation_scale

    def construct(self, x):
        x = self.proj(x)
        b, c, h, w = x.shape
        tokens = x.reshape(b, c, h * w).swapaxes(1, 2)
        pos = ms.Tensor(sincos_pos_embed(self.dim, h, w, self.base_size, self.interpolation_scale))
        return (tokens.astype(ms.float32) + pos).astype(x.dtype)


class TwoLayerMLP(nn.Cell):
    """``linear_1`` -> activation -> ``linear_2``: diffusers' timestep embedder and caption projection."""

    def __init__(self, in_dim: int, dim: int, act: nn.Cell, dtype):
        super().__init__()
        self.linear_1 = Linear(in_dim, dim, dtype=dtype)
        self.act = act
        self.linear_2 = Linear(dim, dim, dtype=dtype)

    def construct(self, x):
        return self.linear_2(self.act(self.linear_1(x)))


class TimestepEmbedding(TwoLayerMLP):
    def __init__(self, in_dim: int, dim: int, dtype):
        super().__init__(in_dim, dim, nn.SiLU(), dtype)


class CombinedTimestepEmbedding(nn.Cell):
    """Sinusoidal [cos, sin] projection of (possibly fractional) timesteps, computed in fp32, then an MLP."""

    def __init__(self, dim: int, dtype):
        super().__init__()
        self.timestep_embedder = TimestepEmbedding(TIMESTEP_DIM, dim, dtype)
        self.freqs = ms.Tensor(timestep_frequencies())
        self.compute_dtype = dtype

    def construct(self, timestep):
        args = timestep.astype(ms.float32).reshape(-1, 1) * self.freqs.reshape(1, -1)
        proj = ops.concat((ops.cos(args), ops.sin(args)), axis=-1)
        return self.timestep_embedder(proj.astype(self.compute_dtype))


class AdaLayerNormSingle(nn.Cell):
    """Returns (6*dim modulation for every block, the embedded timestep that modulates the final layer)."""

    def __init__(self, dim: int, dtype):
        super().__init__()
        self.emb = CombinedTimestepEmbedding(dim, dtype)
        self.linear = Linear(dim, 6 * dim, dtype=dtype)

    def construct(self, timestep):
        embedded = self.emb(timestep)
        return self.linear(ops.silu(embedded)), embedded


class CaptionProjection(TwoLayerMLP):
    def __init__(self, in_dim: int, dim: int, dtype):
        super().__init__(in_dim, dim, GELUTanh(), dtype)


class _Projections(nn.Cell):
    """The q/k/v/out projections and head split both PixArt attentions share (diffusers' names)."""

    def __init__(self, cfg: PixArtConfig, dtype):
        super().__init__()
        dim = cfg.hidden_size
        self.heads = cfg.num_attention_heads
        self.head_dim = cfg.attention_head_dim
        self.scale = self.head_dim ** -0.5
        self.to_q = Linear(dim, dim, dtype=dtype)
        self.to_k = Linear(dim, dim, dtype=dtype)
        self.to_v = Linear(dim, dim, dtype=dtype)
        self.to_out = nn.CellList([Linear(dim, dim, dtype=dtype)])

    def _heads(self, x):
        return split_heads(x, self.heads, self.head_dim)


class SelfAttention(_Projections):
    """``attn1``: q/k/v projections (the original's fused ``qkv``), optional qk LayerNorm over all channels,
    optional depthwise-conv KV compression of the token grid, fp32 softmax."""

    def __init__(self, cfg: PixArtConfig, sr_ratio: int, dtype):
        super().__init__(cfg, dtype)
        dim = cfg.hidden_size
        self.qk_norm = cfg.qk_norm
        if self.qk_norm:
            self.q_norm = LayerNorm(dim, eps=1e-5, dtype=dtype)
            self.k_norm = LayerNorm(dim, eps=1e-5, dtype=dtype)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = Conv2d(dim, dim, sr_ratio, stride=sr_ratio, groups=dim, dtype=dtype)
            self.sr_norm = LayerNorm(dim, eps=1e-5, dtype=dtype)

    def _compress(self, x, h, w):
        b, n, c = x.shape
        grid = x.swapaxes(1, 2).reshape(b, c, h, w)
        small = self.sr(grid)
        return self.sr_norm(small.reshape(b, c, -1).swapaxes(1, 2))

    def construct(self, x, h, w):
        b, n, c = x.shape
        q = self.to_q(x)
        k = self.to_k(x)
        v = self.to_v(x)
        if self.qk_norm:
            q = self.q_norm(q)
            k = self.k_norm(k)
        if self.sr_ratio > 1:
            k = self._compress(k, h, w)
            v = self._compress(v, h, w)
        out = attention(self._heads(q), self._heads(k), self._heads(v), None, self.scale)
        return self.to_out[0](out.swapaxes(1, 2).reshape(b, n, c))


class CrossAttention(_Projections):
    """``attn2``: image tokens attend to caption tokens; padded caption tokens get no weight."""

    def construct(self, x, context, bias):
        b, n, c = x.shape
        out = attention(self._heads(self.to_q(x)), self._heads(self.to_k(context)), self._heads(self.to_v(context)),
                        bias, self.scale)
        return self.to_out[0](out.swapaxes(1, 2).reshape(b, n, c))


class GELUProj(nn.Cell):
    def __init__(self, dim: int, hidden: int, dtype):
        super().__init__()
        self.proj = Linear(dim, hidden, dtype=dtype)
        self.act = GELUTanh()

    def construct(self, x):
        return self.act(self.proj(x))


class FeedForward(nn.Cell):
    """diffusers' ``FeedForward`` layout: net.0 = Linear+GELU(tanh), net.1 = dropout, net.2 = Linear."""

    def __init__(self, dim: int, dtype, mult: int = 4):
        super().__init__()
        self.net = nn.CellList([GELUProj(dim, dim * mult, dtype), nn.Identity(), Linear(dim * mult, dim, dtype=dtype)])

    def construct(self, x):
        return self.net[2](self.net[0](x))


class PixArtBlock(nn.Cell):
    def __init__(self, cfg: PixArtConfig, layer: int, dtype):
        super().__init__()
        dim = cfg.hidden_size
        self.scale_shift_table = zeros_param((6, dim), dtype, "scale_shift_table")
        self.norm1 = LayerNorm(dim, eps=cfg.norm_eps, affine=False)
        self.attn1 = SelfAttention(cfg, cfg.sr_ratio(layer), dtype)
        self.attn2 = CrossAttention(cfg, dtype)
        self.norm2 = LayerNorm(dim, eps=cfg.norm_eps, affine=False)
        self.ff = FeedForward(dim, dtype)

    def construct(self, x, modulation, context, context_bias, h, w):
        b = x.shape[0]
        table = self.scale_shift_table.reshape(1, 6, -1) + modulation.reshape(b, 6, -1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = ops.split(table, 1, axis=1)
        normed = self.norm1(x) * (1 + scale_msa) + shift_msa
        x = x + gate_msa * self.attn1(normed, h, w)
        x = x + self.attn2(x, context, context_bias)
        normed = self.norm2(x) * (1 + scale_mlp) + shift_mlp
        return x + gate_mlp * self.ff(normed)


class PixArtTransformer2D(PretrainedMixin, nn.Cell):
    """``(hidden_states (B,C,H,W), timestep (B,), encoder_hidden_states (B,L,caption_channels),
    encoder_attention_mask (B,L) or None) -> (B, out_channels, H, W)``."""

    component = "transformer"

    def __init__(self, config: PixArtConfig, dtype=ms.float32):
        super().__init__()
        dtype = to_ms_dtype(dtype)
        self.config = config
        self.compute_dtype = dtype
        dim = config.hidden_size
        self.patch_size = config.patch_size
        self.out_channels = config.output_channels
        self.pos_embed = PatchEmbed(config, dtype)
        self.adaln_single = AdaLayerNormSingle(dim, dtype)
        self.caption_projection = CaptionProjection(config.caption_channels, dim, dtype)
        self.transformer_blocks = nn.CellList([PixArtBlock(config, i, dtype) for i in range(config.num_layers)])
        self.norm_out = LayerNorm(dim, eps=1e-6, affine=False)
        self.scale_shift_table = zeros_param((2, dim), dtype, "scale_shift_table")
        self.proj_out = Linear(dim, config.patch_size ** 2 * self.out_channels, dtype=dtype)

    def construct(self, hidden_states, timestep, encoder_hidden_states, encoder_attention_mask=None):
        p = self.patch_size
        h, w = hidden_states.shape[2] // p, hidden_states.shape[3] // p
        x, modulation, embedded_timestep, context, bias = self.embed(hidden_states, timestep, encoder_hidden_states,
                                                                     encoder_attention_mask)
        for block in self.transformer_blocks:
            x = block(x, modulation, context, bias, h, w)
        return self.finish(x, embedded_timestep, h, w)

    def embed(self, hidden_states, timestep, encoder_hidden_states, encoder_attention_mask=None):
        """Everything before the blocks (also run alone by the block-by-block runners): the patch tokens, the
        timestep modulation and embedding, the projected caption and its key bias (None without a mask)."""
        x = self.pos_embed(hidden_states.astype(self.compute_dtype))
        modulation, embedded_timestep = self.adaln_single(timestep)
        context = self.caption_projection(encoder_hidden_states.astype(self.compute_dtype))
        bias = None
        if encoder_attention_mask is not None:
            bias = key_mask_bias(encoder_attention_mask)
        return x, modulation, embedded_timestep, context, bias

    def finish(self, x, embedded_timestep, h: int, w: int):
        """Everything after the blocks: the final modulated norm, the projection and the unpatchify."""
        b, p = x.shape[0], self.patch_size
        shift, scale = ops.split(self.scale_shift_table.reshape(1, 2, -1) + embedded_timestep.reshape(b, 1, -1), 1,
                                 axis=1)
        x = self.proj_out(self.norm_out(x) * (1 + scale) + shift)
        # unpatchify: (B, h*w, p*p*c) -> (B, c, h*p, w*p)
        x = x.reshape(b, h, w, p, p, self.out_channels).transpose(0, 5, 1, 3, 2, 4)
        return x.reshape(b, self.out_channels, h * p, w * p)
