"""Small Cells shared by the three networks.

They name their parameters ``weight`` / ``bias`` like torch (MindSpore's own ``nn.LayerNorm`` says gamma/beta and
defaults to eps 1e-7), and they keep normalization statistics and softmax in fp32 whatever the compute dtype.
Parameters start as zeros: every network is filled from a converted checkpoint, and zeros initialize lazily
under ``no_init_parameters`` so that full-size parameter tables cost no memory.
"""
from __future__ import annotations

import contextlib

import mindspore as ms
import numpy as np
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
        self.fast = _FAST_KERNELS

    def construct(self, x):
        x = cast(x, self.weight.dtype)
        if not self.fast:
            return ops.dense(x, self.weight, self.bias)
        # built under ``fast_kernels``: MatMul(transpose_b) on 2-D rows, then the bias (bit for bit Dense's numbers
        # at T5-XXL and XL/2 sizes, within an ulp where Dense folds the bias in). MindSpore's CPU Dense keeps a
        # transposed copy of the weight it multiplies (+229 MiB for one 160 MiB T5-XXL FF weight, measured in
        # PYNATIVE) and is 15-40% slower
        shape = x.shape
        y = _MATMUL_NT(x.reshape(-1, shape[-1]), self.weight)
        if self.bias is not None:
            y = ops.bias_add(y, self.bias)
        return y.reshape(shape[:-1] + (y.shape[-1],))


_MATMUL = ops.MatMul()
_MATMUL_NT = ops.MatMul(transpose_b=True)


def cast(x, dtype):
    """``x`` in ``dtype``, without a copy when it already is: MindSpore's same-dtype ``astype`` copies in PYNATIVE
    mode (a 1 GiB feature map of the SDXL decoder at 1024^2 had two copies alive in every convolution)."""
    return x if x.dtype == dtype else x.astype(dtype)


class LayerNorm(nn.Cell):
    """``torch.nn.LayerNorm`` over the last axis with statistics in fp32; eps is always explicit."""

    def __init__(self, dim: int, eps: float, affine: bool = True, dtype=ms.float32):
        super().__init__()
        self.eps = eps
        self.affine = affine
        if affine:
            self.weight = ones_param((dim,), dtype, "weight")
            self.bias = zeros_param((dim,), dtype, "bias")
        # built under ``fast_kernels``: MindSpore's fused LayerNorm kernel on the fp32 input (8x faster on CPU than
        # the two mean reductions, and closer to float64: 4.7e-8 against 5.6e-8 rel L2 at 2 x 4096 x 1152)
        self.fused = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps) if _FAST_KERNELS else None
        if self.fused is not None and not affine:
            self.unit = ms.Tensor(np.ones(dim, np.float32))
            self.zero = ms.Tensor(np.zeros(dim, np.float32))

    def construct(self, x):
        x32 = cast(x, ms.float32)
        if self.fused is not None:
            if self.affine:
                return cast(self.fused(x32, cast(self.weight, ms.float32), cast(self.bias, ms.float32))[0], x.dtype)
            return cast(self.fused(x32, self.unit, self.zero)[0], x.dtype)
        mean = x32.mean(axis=-1, keep_dims=True)
        centered = x32 - mean
        var = (centered * centered).mean(axis=-1, keep_dims=True)
        y = centered * ops.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight.astype(ms.float32) + self.bias.astype(ms.float32)
        return y.astype(x.dtype)


class GELUTanh(nn.Cell):
    """GELU with the tanh approximation (torch ``approximate="tanh"``, transformers ``gelu_new``)."""

    def __init__(self):
        super().__init__()
        self.fast = _FAST_KERNELS

    def construct(self, x):
        return gelu_tanh(x, self.fast)


def gelu_tanh(x, fast: bool):
    """``fast`` (a Cell built under ``fast_kernels``): the same function written as x * sigmoid(2u), u = sqrt(2/pi) *
    (x + 0.044715 x^3), since 0.5 * (1 + tanh(u)) = sigmoid(2u). MindSpore's CPU GeLU kernel is 8-10x slower than
    torch's; this is 8x faster than it and 6.8e-8 rel L2 from float64 (the kernel 3.5e-8; a tanh form is no option:
    MindSpore's CPU tanh is 1.6e-5 off)."""
    if not fast:
        return ops.gelu(x, approximate="tanh")
    u = x * (GELU_C + GELU_C3 * (x * x))
    return x * ops.sigmoid(u + u)


GELU_C = 0.7978845608028654  # sqrt(2 / pi)
GELU_C3 = GELU_C * 0.044715


# Query rows per attention step when set (``query_blocks``): at 1024^2 one fp32 score tensor of the XL/2 is 2 GiB,
# so validation and parity runs compute it in slices. Read when the forward runs (PYNATIVE) or is compiled (GRAPH).
_QUERY_BLOCK: int | None = None
_QUERY_FIXED = False


@contextlib.contextmanager
def query_blocks(rows: int | None, fixed: bool = False):
    """Within the block, ``attention`` computes its scores in query slices no larger than ``rows`` rows of a square
    attention over the same queries: ``rows`` query rows at a time against as many keys as queries, more rows when
    the keys are fewer (a cross-attention to 300 caption tokens), never more scores (None: all at once).

    ``fixed``: ``rows`` query rows whatever the keys. Slices of one size throughout: MindSpore's pool keeps blocks of
    every size a run used side by side (the XL/2's fp16 export at 1024^2: 2.45-2.50 GiB with the larger
    cross-attention slices, 2.28 GiB with fixed ones, against its 2.48 GiB rule)."""
    global _QUERY_BLOCK, _QUERY_FIXED
    before, _QUERY_BLOCK, _QUERY_FIXED = (_QUERY_BLOCK, _QUERY_FIXED), rows, fixed
    try:
        yield
    finally:
        _QUERY_BLOCK, _QUERY_FIXED = before


def attention(q, k, v, bias=None, scale: float = 1.0):
    """Multi-head attention core on (B, heads, N, d) tensors.

    Scores and softmax run in fp32 (fp16 scores overflow at PixArt-2K and T5 sizes); ``bias`` is an additive
    fp32 mask broadcastable to (B, heads, N, M): 0 keeps a key, a large negative number removes it. Each query row
    is independent, so slicing the rows (``query_blocks``) gives the same numbers with a smaller peak.
    """
    rows, keys = q.shape[-2], k.shape[-2]
    block = _QUERY_BLOCK
    if block is not None and not _QUERY_FIXED:
        block = max(block, block * rows // max(keys, 1))
    if block is not None and rows > block:
        # heads split by reshape + swapaxes are strided views in PYNATIVE mode, and every slice's matmul would copy
        # the whole k and v again: one copy up front (the XL/2's self-attention at 1024^2, 256-row slices: 1.9 s
        # against 3.6 s a block, bitwise equal; research/s21/attn_view.py)
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        parts = []
        for start in range(0, rows, block):
            stop = min(start + block, rows)
            part_bias = bias
            if bias is not None and bias.shape[-2] == rows:
                part_bias = bias[..., start:stop, :]
            parts.append(_attention_rows(q[..., start:stop, :], k, v, part_bias, scale))
        return ops.concat(parts, axis=-2)
    return _attention_rows(q, k, v, bias, scale)


_QK = ops.BatchMatMul(transpose_b=True)  # q @ k^T without a transposed copy of k for every query slice
# probs @ v: bitwise ops.matmul's result, at half its PYNATIVE CPU time (XL/2 at 1024^2, 256-row slices: 0.99 s
# against 1.56 s a sample; ops.matmul broadcasts its 4-D operands first)
_PV = ops.BatchMatMul()


def _attention_rows(q, k, v, bias, scale: float):
    scores = _QK(q, k)
    scores = cast(scores, ms.float32)
    if scale != 1.0:
        scores = scores * scale
    if bias is not None:
        scores = scores + bias
    probs = ops.softmax(scores, axis=-1)
    return _PV(cast(probs, v.dtype), v)


# additive mask value: exp(MASKED - max) underflows to exactly 0 in fp32, so padded keys get no weight
MASKED = -1.0e9


def key_mask_bias(mask):
    """(B, M) keep-mask (1 keeps, 0 masks) -> (B, 1, 1, M) additive fp32 bias for ``attention``."""
    keep = mask.astype(ms.float32)
    return ((1.0 - keep) * MASKED).reshape(keep.shape[0], 1, 1, keep.shape[1])


# Fast CPU formulations, chosen when a Cell is built (``fast_kernels``): MindSpore's CPU Conv2D kernel is slow
# (the SDXL VAE decode spends most of its time there) and so are broadcasting reductions in PYNATIVE mode. Cells
# built outside the context keep the plain ops, so exported graphs and their numbers do not change.
_FAST_KERNELS = False
CONV_BAND_BYTES = 256 * 2**20  # largest im2col buffer of one step (fp32), in rows of the output


@contextlib.contextmanager
def fast_kernels(on: bool = True):
    """Cells built within use the fast CPU formulations: convolution as im2col + matmul, the VAE's group norm with
    two-level sums, LayerNorm as MindSpore's fused kernel, tanh GELU through a sigmoid, Linear as MatMul(transpose_b)
    (fp32 statistics and sums, within 1e-7 of float64 like the plain kernels)."""
    global _FAST_KERNELS
    before, _FAST_KERNELS = _FAST_KERNELS, on
    try:
        yield
    finally:
        _FAST_KERNELS = before


def fast_kernels_on() -> bool:
    return _FAST_KERNELS


def reshape(x, shape, host: bool = False):
    """``x.reshape(shape)``; ``host`` (eager runs, ``host_buffers``): without a copy. MindSpore 2.10's PYNATIVE reshape
    copies its input (1 GiB more for a 256-channel map at 1024^2; research/s22/reshape_probe.py), numpy's reshape of
    the same memory does not (``asnumpy`` shares a CPU tensor's memory and keeps the tensor alive)."""
    if host:
        return ms.from_numpy(x.asnumpy().reshape(shape))
    return x.reshape(shape)


def host_buffers(dtype) -> bool:
    """Whether a Cell built now under ``fast_kernels`` writes its large outputs piece by piece into numpy arrays
    (``from_numpy``: freed to the OS with the tensor) instead of MindSpore's CPU pool, which keeps the largest set of
    blocks a run ever held. Eager (PYNATIVE) runs only: a compiled graph has no numpy; fp32 and fp16 (numpy has no
    bf16)."""
    return _FAST_KERNELS and ms.get_context("mode") == ms.PYNATIVE_MODE and dtype in (ms.float32, ms.float16)


def synchronous_launch() -> None:
    """Launch PYNATIVE ops synchronously, for the rest of the process (``mindspore.runtime.launch_blocking``; it
    cannot be undone). On this 2-core CPU the asynchronous pipeline's queue threads spin beside the kernels and take
    their cores: the DiT's feed-forward MatMul (8192 x 1152 @ 1152 x 4608) ran 0.77-0.84 s asynchronous and 0.49-0.51 s
    synchronous (torch 0.51-0.57 s); the SDXL VAE decode at 256^2 15 s and 9.3-9.8 s (torch 3.7 s). The outputs are the
    same kernels' (research/s20/vae_op_time.md)."""
    ms.runtime.launch_blocking()


def conv_unfold(x, weight, bias, stride: int, pad: tuple, band_bytes: int | None = None,
                host_output: bool = False, upsample: bool = False):
    """NCHW convolution (groups 1) as ``W (Cout, Cin*k*k) @ im2col(x)``, over bands of output rows so that one
    column buffer stays under ``band_bytes``. The matmul accumulates each output in one dot product (blocked), the
    same sums torch's CPU convolution makes.

    A band unfolds its own input rows plus the halo the kernel reaches, with ``ops.unfold``'s padding, and drops
    the output rows that padding invented at a band's inner edges: no padded copy of the whole input (the SDXL
    decoder's largest convolution, 128 x 1024^2: 4.97 s against 7.31 s with a separate ``ops.pad``, outputs
    bitwise equal; research/s21/conv_band.py).

    ``host_output`` (PYNATIVE only): the bands are written into one numpy array that becomes the output without a
    copy (``from_numpy``), instead of being concatenated. MindSpore's CPU pool keeps the largest set of blocks a run
    ever held: bands and their concatenation together were twice every large output there, for good.

    ``upsample``: the convolution of ``x`` upsampled 2x (nearest), each band upsampling its own input rows: the
    decoder's last upsampler never holds its 1 GiB input at 1024^2."""
    b, cin, h, w = x.shape
    cout, _, k, _ = weight.shape
    top, bottom, left, right = pad
    if upsample:
        h, w = 2 * h, 2 * w
    if top != bottom or left != right or top % stride:  # unfold pads symmetrically; bands start on a stride
        if upsample:
            x, upsample = upsample_nearest2x(x), False
        x = ops.pad(x, (left, right, top, bottom))
        h, w, top, left = h + top + bottom, w + left + right, 0, 0
    ho = (h + 2 * top - k) // stride + 1
    wo = (w + 2 * left - k) // stride + 1
    wmat = weight.reshape(cout, cin * k * k)
    if k == 1 and stride == 1 and top == left == 0 and not host_output:
        if upsample:
            x = upsample_nearest2x(x)
        y = ops.matmul(wmat, x.reshape(b, cin, h * w)).reshape(b, cout, ho, wo)
        return y if bias is None else ops.bias_add(y, bias)
    # the bias goes on each band, and nothing but the bands outlives a band's step: at 1024^2 one 256-channel output
    # is 1 GiB, and MindSpore's pool keeps whatever a convolution held at once (the SDXL decode at 1024^2 peaked at
    # 8.61 GiB with the bias added to the concatenated output; research/s21/vae_stage_mem.py)
    rows = max(1, min(ho, (band_bytes or CONV_BAND_BYTES) // (4 * cin * k * k * wo * b)))
    bands = [(x, wmat, bias, stride, top, left, k, wo, r0, min(ho, r0 + rows), upsample, host_output)
             for r0 in range(0, ho, rows)]
    if host_output:  # 1x1 convolutions too: their one matmul over the whole map would sit in the pool
        return _bands_to_host(bands, (b, cout, ho, wo))
    outs = [_conv_band(*args) for args in bands]
    return outs[0] if len(outs) == 1 else ops.concat(outs, axis=2)


def _bands_to_host(bands, shape):
    """``conv_unfold``'s bands written into one numpy array, the output without a copy (eager only; a function of its
    own: GRAPH mode parses every statement of the function it compiles, and has no ``del``). The bias is added as
    each band is written (fp32: the same rounding as ``bias_add``), not in a pass of its own: MindSpore's
    ``bias_add`` over the bands took 10.6 of the 160 s of an SDXL decode at 1024^2 (benchmarks/vae_conv_floor.py)."""
    out = None
    x, wmat, bias, stride, top, left, k, wo, _, _, upsample, host = bands[0]  # the same in every band
    numpy_bias = bias is not None and bias.dtype == ms.float32
    band_bias = None if numpy_bias else bias
    if numpy_bias:
        bias = bias.asnumpy().reshape(1, -1, 1, 1)
    source = None if upsample else x.asnumpy()  # once a convolution: shares an op output's memory (copies a view)
    for *_, r0, r1, _, _ in bands:
        part = _conv_band(x, wmat, band_bias, stride, top, left, k, wo, r0, r1, upsample, host, source).asnumpy()
        if out is None:
            out = np.empty(shape, part.dtype)
        rows = out[:, :, r0:r0 + part.shape[2]]
        if numpy_bias:
            np.add(part, bias, out=rows)
        else:
            rows[...] = part
        del part, rows
    return ms.from_numpy(out)


def _conv_band(x, wmat, bias, stride: int, top: int, left: int, k: int, wo: int, r0: int, r1: int,
               upsample: bool = False, host: bool = False, source=None):
    """Output rows [r0, r1) of ``conv_unfold``: its own input rows plus the kernel's halo unfolded (a function of its
    own, so that the column buffer is freed on return: GRAPH mode cannot compile ``del``)."""
    b, cin, h, _ = x.shape
    h = 2 * h if upsample else h
    cout = wmat.shape[0]
    lo, hi = max(0, r0 * stride - top), min(h, (r1 - 1) * stride - top + k)
    rows = _input_rows(x, lo, hi, upsample) if source is None else _host_rows(x, source, lo, hi)
    cols = ops.unfold(rows, k, padding=(top, left), stride=stride)
    # a batch of one is a plain 2-D product (MindSpore's batched matmul is slower on this CPU). MindSpore's own
    # reshape, a view here: ``asnumpy`` copies an unfold output (8 s of an SDXL decode at 1024^2 went to it)
    band = _MATMUL(wmat, cols.reshape(cin * k * k, -1)) if b == 1 else ops.matmul(wmat, cols)
    band = reshape(band, (b, cout, -1, wo), host)
    first = (r0 * stride - lo) // stride  # rows made from padding above an inner band's first input row
    if first or band.shape[2] != r1 - r0:
        band = band[:, :, first:first + r1 - r0]
    return band if bias is None else ops.bias_add(band, bias)


def _host_rows(x, source, lo: int, hi: int):
    """Rows [lo, hi) of an eager convolution's input ``x``, copied out contiguous from ``source`` (its memory as
    numpy): ``ops.unfold`` of a sliced view took 85-103 ms a 56-row band of the SDXL decoder, of the same rows
    copied out by numpy 44-70 ms (research/s23/unfold_input.py; the decode's unfold time 31 -> 20 s at 1024^2)."""
    if (lo, hi) == (0, x.shape[2]):
        return x
    return ms.from_numpy(np.ascontiguousarray(source[:, :, lo:hi]))


def _input_rows(x, lo: int, hi: int, upsample: bool):
    """Rows [lo, hi) of a convolution's input: ``x``'s, or, with ``upsample``, those of ``x`` upsampled 2x (nearest),
    made from the rows of ``x`` they repeat."""
    if not upsample:
        return x if (lo, hi) == (0, x.shape[2]) else x[:, :, lo:hi, :]
    a, b = lo // 2, (hi + 1) // 2
    up = upsample_nearest2x(x if (a, b) == (0, x.shape[2]) else x[:, :, a:b, :])
    return up if (2 * a, 2 * b) == (lo, hi) else up[:, :, lo - 2 * a:hi - 2 * a, :]


def upsample_nearest2x(x):
    """``F.interpolate(x, scale_factor=2.0, mode="nearest")`` as a pure repetition (bit-exact)."""
    b, c, h, w = x.shape
    x = ops.broadcast_to(x.reshape(b, c, h, 1, w, 1), (b, c, h, 2, w, 2))
    return x.reshape(b, c, h * 2, w * 2)


class Conv2d(nn.Cell):
    """``torch.nn.Conv2d`` (NCHW): weight (out, in/groups, kh, kw), optional bias (out,).

    ``padding`` is an int (symmetric) or ``(top, bottom, left, right)`` (the VAE's asymmetric downsampling pad).
    Built under ``fast_kernels``, a groups-1 convolution runs as im2col + matmul (``conv_unfold``).
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
        self.unfold = _FAST_KERNELS and groups == 1
        self.host_output = self.unfold and host_buffers(dtype)
        self.stride, self.pad = stride, pad

    def construct(self, x):
        if self.unfold:
            return conv_unfold(cast(x, self.weight.dtype), self.weight, self.bias if self.has_bias else None,
                               self.stride, self.pad, host_output=self.host_output)
        y = self.conv(cast(x, self.weight.dtype), self.weight)
        if self.has_bias:
            y = ops.bias_add(y, self.bias)
        return y

    def upsampled(self, x):
        """The convolution of ``x`` upsampled 2x (nearest); built under ``fast_kernels``, without that input ever
        whole (``conv_unfold``'s ``upsample``)."""
        if self.unfold:
            return conv_unfold(cast(x, self.weight.dtype), self.weight, self.bias if self.has_bias else None,
                               self.stride, self.pad, host_output=self.host_output, upsample=True)
        return self.construct(upsample_nearest2x(x))
