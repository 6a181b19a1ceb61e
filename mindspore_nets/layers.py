"""Small Cells shared by the three networks.

They name their parameters ``weight`` / ``bias`` like torch (MindSpore's own ``nn.LayerNorm`` says gamma/beta and
defaults to eps 1e-7), and they keep normalization statistics and softmax in fp32 whatever the compute dtype.
Parameters start as zeros: every network is filled from a converted checkpoint, and zeros initialize lazily
under ``no_init_parameters`` so that full-size parameter tables cost no memory.
"""
from __future__ import annotations

import contextlib

import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import initializer

from pixart_core import dtypes

COMPUTE_DTYPES = ("fp32", "fp16", "bf16")


def to_ms_dtype(dtype) -> ms.Type:
    """Accept ``None``, ``"fp16"``-style names, numpy/torch-style names or a MindSpore dtype."""
    if dtype is None:
        return ms.float32
    if isinstance(dtype, str):
        entry = dtypes.DTYPES.get(dtypes.SHORT_NAMES.get(dtype, dtype))
        if entry is None or entry.short not in COMPUTE_DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(COMPUTE_DTYPES)}")
        return dtypes.ms_dtype(entry.name)
    return dtype


def zeros_param(shape, dtype, name: str) -> Parameter:
    return Parameter(initializer("zeros", tuple(shape), dtype), name=name)


def ones_param(shape, dtype, name: str) -> Parameter:
    return Parameter(initializer("ones", tuple(shape), dtype), name=name)


class Linear(nn.Cell):
    """``torch.nn.Linear``: weight (out, in), optional bias (out,)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype=ms.float32):
        super().__init__()
        self.weight = zeros_param((out_features, in_features), dtype, "weight")
        self.bias = zeros_param((out_features,), dtype, "bias") if bias else None

    def construct(self, x):
        x = x.astype(self.weight.dtype)
        return ops.dense(x, self.weight, self.bias)


class LayerNorm(nn.Cell):
    """``torch.nn.LayerNorm`` over the last axis with statistics in fp32; eps is always explicit."""

    def __init__(self, dim: int, eps: float, affine: bool = True, dtype=ms.float32):
        super().__init__()
        self.eps = eps
        self.affine = affine
        if affine:
            self.weight = ones_param((dim,), dtype, "weight")
            self.bias = zeros_param((dim,), dtype, "bias")

    def construct(self, x):
        x32 = x.astype(ms.float32)
        mean = x32.mean(axis=-1, keep_dims=True)
        centered = x32 - mean
        var = (centered * centered).mean(axis=-1, keep_dims=True)
        y = centered * ops.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight.astype(ms.float32) + self.bias.astype(ms.float32)
        return y.astype(x.dtype)


class GELUTanh(nn.Cell):
    """GELU with the tanh approximation (torch ``approximate="tanh"``, transformers ``gelu_new``)."""

    def construct(self, x):
        return ops.gelu(x, approximate="tanh")


# Query rows per attention step when set (``query_blocks``): at 1024^2 one fp32 score tensor of the XL/2 is 2 GiB,
# so validation and parity runs compute it in slices. Read when the forward runs (PYNATIVE) or is compiled (GRAPH).
_QUERY_BLOCK: int | None = None


@contextlib.contextmanager
def query_blocks(rows: int | None):
    """Within the block, ``attention`` computes at most ``rows`` query rows at a time (None: all at once)."""
    global _QUERY_BLOCK
    before, _QUERY_BLOCK = _QUERY_BLOCK, rows
    try:
        yield
    finally:
        _QUERY_BLOCK = before


def attention(q, k, v, bias=None, scale: float = 1.0):
    """Multi-head attention core on (B, heads, N, d) tensors.

    Scores and softmax run in fp32 (fp16 scores overflow at PixArt-2K and T5 sizes); ``bias`` is an additive
    fp32 mask broadcastable to (B, heads, N, M): 0 keeps a key, a large negative number removes it. Each query row
    is independent, so slicing the rows (``query_blocks``) gives the same numbers with a smaller peak.
    """
    rows = q.shape[-2]
    if _QUERY_BLOCK is not None and rows > _QUERY_BLOCK:
        parts = []
        for start in range(0, rows, _QUERY_BLOCK):
            stop = min(start + _QUERY_BLOCK, rows)
            part_bias = bias
            if bias is not None and bias.shape[-2] == rows:
                part_bias = bias[..., start:stop, :]
            parts.append(_attention_rows(q[..., start:stop, :], k, v, part_bias, scale))
        return ops.concat(parts, axis=-2)
    return _attention_rows(q, k, v, bias, scale)


def _attention_rows(q, k, v, bias, scale: float):
    scores = ops.matmul(q, k.swapaxes(-1, -2)).astype(ms.float32)
    if scale != 1.0:
        scores = scores * scale
    if bias is not None:
        scores = scores + bias
    probs = ops.softmax(scores, axis=-1).astype(v.dtype)
    return ops.matmul(probs, v)


# additive mask value: exp(MASKED - max) underflows to exactly 0 in fp32, so padded keys get no weight
MASKED = -1.0e9


def key_mask_bias(mask):
    """(B, M) keep-mask (1 keeps, 0 masks) -> (B, 1, 1, M) additive fp32 bias for ``attention``."""
    keep = mask.astype(ms.float32)
    return ((1.0 - keep) * MASKED).reshape(keep.shape[0], 1, 1, keep.shape[1])


class Conv2d(nn.Cell):
    """``torch.nn.Conv2d`` (NCHW): weight (out, in/groups, kh, kw), optional bias (out,).

    ``padding`` is an int (symmetric) or ``(top, bottom, left, right)`` (the VAE's asymmetric downsampling pad).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding=0,
                 groups: int = 1, bias: bool = True, dtype=ms.float32):
        super().__init__()
        pad = (padding,) * 4 if isinstance(padding, int) else tuple(padding)
        self.weight = zeros_param((out_channels, in_channels // groups, kernel_size, kernel_size), dtype, "weight")
        self.bias = zeros_param((out_channels,), dtype, "bias") if bias else None
        self.has_bias = bias
        self.conv = ops.Conv2D(out_channels, kernel_size, mode=1, pad_mode="pad", pad=pad, stride=stride,
                               group=groups)

    def construct(self, x):
        y = self.conv(x.astype(self.weight.dtype), self.weight)
        if self.has_bias:
            y = ops.bias_add(y, self.bias)
        return y
