"""T5 v1.1 encoder (PixArt-Sigma's text encoder) as a MindSpore Cell.

Cells and parameters carry the names of transformers' ``T5EncoderModel`` (``shared.weight``,
``encoder.block.{i}.layer.0.SelfAttention.q.weight``, ``encoder.block.{i}.layer.1.DenseReluDense.wi_0.weight``,
``encoder.final_layer_norm.weight``, ...), so a converted folder loads here and in mindone alike, and every Cell
path equals the torch module path (parity taps need no naming table). The one torch name we do not create is
``encoder.embed_tokens.weight``: it is ``shared.weight`` tied, and the converter drops it by a named rule.

Numerics follow ``transformers.models.t5.modeling_t5`` operation by operation:

- RMS norm: ``var = mean(x.float32 ** 2)``, ``h = x.float32 * rsqrt(var + eps)``, cast to the weight dtype when that
  is fp16/bf16, then ``weight * h``.
- Attention: no score scaling; relative position bias (bidirectional buckets) computed once from block 0's table and
  shared by all blocks; key padding mask added to it; scores and softmax in fp32.
- Feed-forward: gated ``gelu_new`` (tanh GELU) or relu; its input is cast to ``wo``'s dtype before ``wo``.
- fp16: ``wo`` is kept in fp32 (transformers' ``_keep_in_fp32_modules = ["wo"]``, applied for fp16 only), so its
  output and everything added to it is fp32 (torch type promotion: fp16 + fp32 -> fp32). After self-attention and
  after the feed-forward the hidden states are clamped to +-(65504, or 64504 if any inf) when, and only when, they
  are fp16 -- exactly T5Block.forward's rule. In practice the residual stream becomes fp32 after block 0's
  feed-forward, as in transformers loaded with ``torch_dtype=torch.float16``.
"""
from __future__ import annotations

import math

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from .config import T5Config
from .layers import (Linear, attention, fast_kernels_on, gelu_tanh, key_mask_bias, ones_param, to_ms_dtype,
                     zeros_param)
from .loading import PretrainedMixin

FP16_MAX = 65504.0  # torch.finfo(torch.float16).max


def relative_position_buckets(query_length: int, key_length: int, num_buckets: int, max_distance: int,
                              bidirectional: bool = True) -> np.ndarray:
    """(query_length, key_length) int32 bucket indices, equal to transformers' ``T5Attention.compute_bias`` buckets.

    Mirrors ``_relative_position_bucket`` with the same float32 operations (log, divide, multiply, truncate), so
    the bucket boundaries fall exactly where torch puts them.
    """
    context = np.arange(query_length, dtype=np.int64)[:, None]
    memory = np.arange(key_length, dtype=np.int64)[None, :]
    relative = memory - context
    buckets = np.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative > 0).astype(np.int64) * num_buckets
        relative = np.abs(relative)
    else:
        relative = -np.minimum(relative, 0)
    max_exact = num_buckets // 2
    is_small = relative < max_exact
    # only positions >= max_exact use the log branch; clip the rest so log never sees 0
    rel_large = np.maximum(relative, max_exact).astype(np.float32)
    large = (np.log(rel_large / np.float32(max_exact))
             / np.float32(math.log(max_distance / max_exact))
             * np.float32(num_buckets - max_exact))
    large = max_exact + large.astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    buckets += np.where(is_small, relative, large)
    return buckets.astype(np.int32)


def _bucket_tensor(length, num_buckets, max_distance):
    # called from construct with constants: evaluated once at compile time in GRAPH mode
    return Tensor(relative_position_buckets(length, length, num_buckets, max_distance, True))


def _clamp_fp16(hidden):
    """T5Block's fp16 guard: clamp to +-finfo.max, or +-(finfo.max - 1000) if any value is inf. fp16 only."""
    if hidden.dtype == ms.float16:
        clamp_value = ops.select(ops.isinf(hidden).any(),
                                 Tensor(FP16_MAX - 1000.0, ms.float16), Tensor(FP16_MAX, ms.float16))
        hidden = ops.clamp(hidden, -clamp_value, clamp_value)
    return hidden


class T5Embedding(nn.Cell):
    """``torch.nn.Embedding`` with a ``weight`` Parameter (num_embeddings, embedding_dim)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype=ms.float32):
        super().__init__()
        self.weight = zeros_param((num_embeddings, embedding_dim), dtype, "weight")

    def construct(self, ids):
        return ops.gather(self.weight, ids, 0)


class T5LayerNorm(nn.Cell):
    """T5's RMS norm: no mean subtraction, no bias, statistics in fp32 (transformers' order of operations)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6, dtype=ms.float32):
        super().__init__()
        self.weight = ones_param((hidden_size,), dtype, "weight")
        self.variance_epsilon = eps

    def construct(self, hidden_states):
        x32 = hidden_states.astype(ms.float32)
        variance = (x32 * x32).mean(axis=-1, keep_dims=True)
        hidden = x32 * ops.rsqrt(variance + self.variance_epsilon)
        if self.weight.dtype == ms.float16 or self.weight.dtype == ms.bfloat16:
            hidden = hidden.astype(self.weight.dtype)
        return self.weight * hidden


class T5Attention(nn.Cell):
    """Encoder self-attention; block 0 also owns ``relative_attention_bias`` (num_buckets, num_heads)."""

    def __init__(self, config: T5Config, has_relative_attention_bias: bool = False, dtype=ms.float32):
        super().__init__()
        self.n_heads = config.num_heads
        self.key_value_proj_dim = config.d_kv
        self.inner_dim = config.num_heads * config.d_kv
        self.num_buckets = config.relative_attention_num_buckets
        self.max_distance = config.relative_attention_max_distance
        self.has_relative_attention_bias = has_relative_attention_bias
        self.q = Linear(config.d_model, self.inner_dim, bias=False, dtype=dtype)
        self.k = Linear(config.d_model, self.inner_dim, bias=False, dtype=dtype)
        self.v = Linear(config.d_model, self.inner_dim, bias=False, dtype=dtype)
        self.o = Linear(self.inner_dim, config.d_model, bias=False, dtype=dtype)
        if has_relative_attention_bias:
            self.relative_attention_bias = T5Embedding(self.num_buckets, self.n_heads, dtype=dtype)

    def compute_bias(self, length: int):
        """(1, heads, L, L) fp32 relative position bias for a static sequence length L."""
        buckets = _bucket_tensor(length, self.num_buckets, self.max_distance)
        values = self.relative_attention_bias(buckets)  # (L, L, heads)
        return values.astype(ms.float32).transpose(2, 0, 1).expand_dims(0)

    def _heads(self, x, batch, length):
        return x.reshape(batch, length, self.n_heads, self.key_value_proj_dim).transpose(0, 2, 1, 3)

    def construct(self, hidden_states, bias):
        batch, length = hidden_states.shape[0], hidden_states.shape[1]
        q = self._heads(self.q(hidden_states), batch, length)
        k = self._heads(self.k(hidden_states), batch, length)
        v = self._heads(self.v(hidden_states), batch, length)
        out = attention(q, k, v, bias, 1.0)  # T5 folds scaling into its init: no 1/sqrt(d)
        out = out.transpose(0, 2, 1, 3).reshape(batch, length, self.inner_dim)
        return self.o(out)


class T5LayerSelfAttention(nn.Cell):
    def __init__(self, config: T5Config, has_relative_attention_bias: bool = False, dtype=ms.float32):
        super().__init__()
        self.SelfAttention = T5Attention(config, has_relative_attention_bias, dtype=dtype)
        self.layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon, dtype=dtype)

    def construct(self, hidden_states, bias):
        return hidden_states + self.SelfAttention(self.layer_norm(hidden_states), bias)


def _activation(x, use_gelu: bool, fast: bool):
    """T5 v1.1's ``gelu_new`` (tanh GELU) or the original T5's ReLU."""
    return gelu_tanh(x, fast) if use_gelu else ops.relu(x)


class T5DenseGatedActDense(nn.Cell):
    def __init__(self, config: T5Config, dtype=ms.float32, wo_dtype=ms.float32):
        super().__init__()
        self.wi_0 = Linear(config.d_model, config.d_ff, bias=False, dtype=dtype)
        self.wi_1 = Linear(config.d_model, config.d_ff, bias=False, dtype=dtype)
        self.wo = Linear(config.d_ff, config.d_model, bias=False, dtype=wo_dtype)
        self.use_gelu = config.act == "gelu_new"
        self.fast = fast_kernels_on()

    def construct(self, hidden_states):
        hidden = _activation(self.wi_0(hidden_states), self.use_gelu, self.fast) * self.wi_1(hidden_states)
        return self.wo(hidden)  # Linear casts its input to wo's dtype first, as transformers does


class T5DenseActDense(nn.Cell):
    def __init__(self, config: T5Config, dtype=ms.float32, wo_dtype=ms.float32):
        super().__init__()
        self.wi = Linear(config.d_model, config.d_ff, bias=False, dtype=dtype)
        self.wo = Linear(config.d_ff, config.d_model, bias=False, dtype=wo_dtype)
        self.use_gelu = config.act == "gelu_new"
        self.fast = fast_kernels_on()

    def construct(self, hidden_states):
        return self.wo(_activation(self.wi(hidden_states), self.use_gelu, self.fast))


class T5LayerFF(nn.Cell):
    def __init__(self, config: T5Config, dtype=ms.float32):
        super().__init__()
        # transformers' _keep_in_fp32_modules = ["wo"] applies when loading in fp16 (not bf16)
        wo_dtype = ms.float32 if dtype == ms.float16 else dtype
        dense = T5DenseGatedActDense if config.gated else T5DenseActDense
        self.DenseReluDense = dense(config, dtype=dtype, wo_dtype=wo_dtype)
        self.layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon, dtype=dtype)

    def construct(self, hidden_states):
        # fp16 residual + fp32 wo output -> fp32, like torch's type promotion
        return hidden_states + self.DenseReluDense(self.layer_norm(hidden_states))


class T5Block(nn.Cell):
    def __init__(self, config: T5Config, has_relative_attention_bias: bool = False, dtype=ms.float32):
        super().__init__()
        self.layer = nn.CellList([
            T5LayerSelfAttention(config, has_relative_attention_bias, dtype=dtype),
            T5LayerFF(config, dtype=dtype),
        ])

    def construct(self, hidden_states, bias):
        hidden_states = _clamp_fp16(self.layer[0](hidden_states, bias))
        return _clamp_fp16(self.layer[1](hidden_states))


class T5Stack(nn.Cell):
    """``T5EncoderModel.encoder`` minus ``embed_tokens`` (tied to ``shared``): takes the token embeddings."""

    def __init__(self, config: T5Config, dtype=ms.float32):
        super().__init__()
        self.block = nn.CellList([T5Block(config, has_relative_attention_bias=(i == 0), dtype=dtype)
                                  for i in range(config.num_layers)])
        self.final_layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon, dtype=dtype)

    def construct(self, inputs_embeds, attention_mask):
        length = inputs_embeds.shape[1]
        position_bias = self.block[0].layer[0].SelfAttention.compute_bias(length)  # (1, H, L, L) fp32
        bias = position_bias + key_mask_bias(attention_mask)  # (B, H, L, L) fp32
        hidden_states = inputs_embeds
        for block in self.block:
            hidden_states = block(hidden_states, bias)
        return self.final_layer_norm(hidden_states)


class T5Encoder(PretrainedMixin, nn.Cell):
    """transformers ``T5EncoderModel`` in MindSpore: ``(input_ids (B, L) int, attention_mask (B, L)) ->
    last_hidden_state (B, L, d_model)``. ``attention_mask``: 1 keeps a token, 0 masks it as a key."""

    component = "text_encoder"

    def __init__(self, config: T5Config, dtype=ms.float32):
        super().__init__()
        self.config = config
        self.compute_dtype = to_ms_dtype(dtype)
        self.shared = T5Embedding(config.vocab_size, config.d_model, dtype=self.compute_dtype)
        self.encoder = T5Stack(config, dtype=self.compute_dtype)

    def construct(self, input_ids, attention_mask):
        return self.encoder(self.shared(input_ids), attention_mask)

    def module_paths(self) -> dict[str, nn.Cell]:
        """Cell path -> Cell for every sub-cell; each path is the torch ``T5EncoderModel`` module path
        (``encoder.block.3``, ``encoder.block.3.layer.1.DenseReluDense``, ``encoder.final_layer_norm``, ...)."""
        return {name: cell for name, cell in self.cells_and_names() if name}
