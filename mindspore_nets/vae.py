"""diffusers ``AutoencoderKL`` (the SDXL VAE of PixArt-Sigma) as MindSpore Cells.

Parameter names equal diffusers' state-dict names of the current attention generation
(``decoder.mid_block.attentions.0.to_q.weight``, ``encoder.down_blocks.0.downsamplers.0.conv.bias``, ...), so a
converted ``vae/`` folder loads strictly. The computation mirrors diffusers exactly:

- ``ResnetBlock2D``: norm1, SiLU, conv1, norm2, SiLU, (dropout: no-op), conv2, plus a 1x1 ``conv_shortcut`` when
  the channel count changes; output scale factor 1.
- ``Downsample2D`` (padding 0): asymmetric zero pad (right 1, bottom 1), then a 3x3 stride-2 convolution.
- ``Upsample2D``: nearest-neighbour x2 (pure repetition, bit-exact with torch), then a 3x3 convolution.
- mid-block attention: one head of dimension ``channels``, GroupNorm, scale ``1/sqrt(channels)``, residual.
- decoder up blocks run over ``reversed(block_out_channels)`` with ``layers_per_block + 1`` resnets each.

GroupNorm statistics and the attention softmax run in fp32 whatever the compute dtype. ``encode`` / ``decode``
take fp32 (or any float) input, compute in the network's dtype and return that dtype. For GRAPH mode and
export, ``encoder_cell()`` / ``decoder_cell()`` give one Cell per function (they share this network's
parameters and do not rename them).
"""
from __future__ import annotations

import math

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from .config import VAEConfig
from .layers import (Conv2d, Linear, attention, cast, fast_kernels_on, host_buffers, ones_param, reshape,
                     upsample_nearest2x, zeros_param)
from .loading import PretrainedMixin

RESNET_EPS = 1e-6  # diffusers' Encoder/Decoder pass resnet_eps=1e-6 to every resnet, attention and conv_norm_out


_row_sum = ops.ReduceSum(keep_dims=False)
_row_sum_kept = ops.ReduceSum(keep_dims=True)
_batch_norm = ops.BatchNorm(is_training=False, epsilon=1e-30)  # eps is added to the variance beforehand


def _inner_length(shape) -> int:
    """Row length of the first-level partial sums: H*W up to 4096, else W (it divides every group's size)."""
    hw = shape[-1] * shape[-2]
    return hw if hw <= 4096 else shape[-1]


def _row_sums(x2, inner: int, host: bool = False):
    """Row sums of a (R, N) fp32 tensor, N = k * inner, in two levels: (R*k, inner) rows, then k partial sums.
    MindSpore's CPU ReduceSum is fast on 2-D last-axis rows and sums them sequentially; two short levels keep
    the fp32 rounding of a 4-million-element group near torch's. ``host``: reshapes without copies."""
    r, n = x2.shape
    k = n // inner
    part = _row_sum(reshape(x2, (r * k, inner), host), 1)
    return part.reshape(r, 1) if k == 1 else _row_sum_kept(part.reshape(r, k), 1)


def group_norm_fast(x, weight, bias, groups: int, eps: float, silu_to_host: bool = False):
    """Group norm with fp32 statistics for MindSpore's CPU kernels: group means and centred variances from
    two-level row sums, centring by ``bias_add``, normalisation and affine in one BatchNorm-inference kernel over
    (1, B*C, H*W/…, 1) with per-channel mean/variance (no broadcasting binary op: slow on CPU in PYNATIVE).
    ``silu_to_host`` (eager, ``layers.host_buffers``): SiLU of the result, written into a numpy-backed tensor a few
    channels at a time, every reshape a view (BatchNorm and SiLU act per channel and element: the same numbers)."""
    host = silu_to_host
    shape = x.shape
    bsz, ch = shape[0], shape[1]
    per_group = ch // groups
    x32 = cast(x, ms.float32)
    n = x32.size // (bsz * groups)
    inner = _inner_length(shape)
    mean = _row_sums(reshape(x32, (bsz * groups, n), host), inner, host) * (1.0 / n)
    mean_c = ops.broadcast_to(mean, (bsz * groups, per_group)).reshape(-1)
    rows = reshape(x32, (1, bsz * ch, n // per_group, 1), host)
    var = _centred_square_sums(rows, mean_c, per_group, n, inner, host) * (1.0 / n)
    var_c = ops.broadcast_to(var + eps, (bsz * groups, per_group)).reshape(-1)
    scale = ops.tile(cast(weight, ms.float32), (bsz,))
    shift = ops.tile(cast(bias, ms.float32), (bsz,))
    if not host:
        y = _batch_norm(rows, scale, shift, mean_c, var_c)[0]
        return cast(y.reshape(shape), x.dtype)
    return _silu_to_host(rows, (scale, shift, mean_c, var_c), shape, x.dtype)


def _silu_to_host(rows, channel_params, shape, dtype):
    """SiLU of ``group_norm_fast``'s BatchNorm, a few channels at a time into one numpy array (eager only; a function
    of its own: GRAPH mode parses every statement of the function it compiles, and has no ``del``)."""
    out = None
    total = rows.shape[1]
    step = max(1, GROUP_NORM_STEP_BYTES // (4 * rows.shape[2]))
    for c0 in range(0, total, step):
        c1 = min(total, c0 + step)
        y = _batch_norm(rows[:, c0:c1], *(p[c0:c1] for p in channel_params))[0]
        part = ops.silu(cast(y, dtype)).asnumpy()
        if out is None:
            out = np.empty((total, rows.shape[2]), part.dtype)
        out[c0:c1] = part.reshape(c1 - c0, -1)
        del y, part
    return ms.from_numpy(out.reshape(shape))


GROUP_NORM_STEP_BYTES = 128 * 2**20  # the centred copy and its square, a few groups at a time (fp32)


def _centred_square_sums(rows, mean_c, per_group: int, n: int, inner: int, host: bool = False):
    """Per-group sums of squared deviations, ``GROUP_NORM_STEP_BYTES`` of groups at a time: the same row sums as
    over the whole tensor at once (a group never straddles two steps), without a centred copy and its square of the
    whole feature map (2 GiB at 256 channels and 1024^2)."""
    total = rows.shape[1] // per_group
    step = max(1, GROUP_NORM_STEP_BYTES // (4 * n))
    parts = []
    for g0 in range(0, total, step):
        c0, c1 = g0 * per_group, min(total, g0 + step) * per_group
        centred = ops.bias_add(rows[:, c0:c1], -mean_c[c0:c1])
        parts.append(_row_sums(reshape(centred * centred, (-1, n), host), inner, host))
    return parts[0] if len(parts) == 1 else ops.concat(parts, axis=0)


class GroupNorm(nn.Cell):
    """``torch.nn.GroupNorm`` (affine) on (B, C, ...) with statistics and affine in fp32; eps is explicit.
    Built under ``layers.fast_kernels``: ``group_norm_fast``."""

    def __init__(self, num_groups: int, num_channels: int, eps: float, dtype=ms.float32):
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: {num_channels} channels not divisible into {num_groups} groups")
        self.num_groups = num_groups
        self.eps = eps
        self.weight = ones_param((num_channels,), dtype, "weight")
        self.bias = zeros_param((num_channels,), dtype, "bias")
        self.fast = fast_kernels_on()
        self.host = host_buffers(dtype)

    def silu(self, x):
        """``ops.silu(self(x))``; built for host buffers (``layers.host_buffers``), never whole in MindSpore's pool."""
        if self.host:
            return group_norm_fast(x, self.weight, self.bias, self.num_groups, self.eps, silu_to_host=True)
        return ops.silu(self(x))

    def construct(self, x):
        if self.fast:
            return group_norm_fast(x, self.weight, self.bias, self.num_groups, self.eps)
        shape = x.shape
        x32 = x.astype(ms.float32).reshape(shape[0], self.num_groups, -1)
        mean = x32.mean(axis=-1, keep_dims=True)
        centered = x32 - mean
        var = (centered * centered).mean(axis=-1, keep_dims=True)
        y = (centered * ops.rsqrt(var + self.eps)).reshape(shape[0], shape[1], -1)
        y = y * self.weight.astype(ms.float32).reshape(1, -1, 1) + self.bias.astype(ms.float32).reshape(1, -1, 1)
        return y.reshape(shape).astype(x.dtype)


class ResnetBlock2D(nn.Cell):
    def __init__(self, in_channels: int, out_channels: int, groups: int, dtype=ms.float32):
        super().__init__()
        self.norm1 = GroupNorm(groups, in_channels, RESNET_EPS, dtype=dtype)
        self.conv1 = Conv2d(in_channels, out_channels, 3, padding=1, dtype=dtype)
        self.norm2 = GroupNorm(groups, out_channels, RESNET_EPS, dtype=dtype)
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1, dtype=dtype)
        self.use_shortcut = in_channels != out_channels
        if self.use_shortcut:
            self.conv_shortcut = Conv2d(in_channels, out_channels, 1, dtype=dtype)
        else:
            self.conv_shortcut = None

    def construct(self, x):
        if self.norm1.host:  # eager fast kernels: no whole normalised map before its SiLU
            h = self.conv1(self.norm1.silu(x))
            h = self.conv2(self.norm2.silu(h))
        else:
            h = self.conv1(ops.silu(self.norm1(x)))
            h = self.conv2(ops.silu(self.norm2(h)))
        if self.use_shortcut:
            x = self.conv_shortcut(x)
        return x + h


class Downsample2D(nn.Cell):
    """diffusers ``Downsample2D(use_conv=True, padding=0)``: pad (0, 1, 0, 1), 3x3 stride-2 conv."""

    def __init__(self, channels: int, dtype=ms.float32):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, stride=2, padding=(0, 1, 0, 1), dtype=dtype)

    def construct(self, x):
        return self.conv(x)


class Upsample2D(nn.Cell):
    def __init__(self, channels: int, dtype=ms.float32):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, padding=1, dtype=dtype)

    def construct(self, x):
        if self.conv.unfold:  # the fast kernels upsample band by band
            return self.conv.upsampled(x)
        return self.conv(upsample_nearest2x(x))


class MidBlockAttention(nn.Cell):
    """diffusers ``Attention(_from_deprecated_attn_block=True)`` of the VAE mid block: one head over channels."""

    def __init__(self, channels: int, groups: int, dtype=ms.float32):
        super().__init__()
        self.group_norm = GroupNorm(groups, channels, RESNET_EPS, dtype=dtype)
        self.to_q = Linear(channels, channels, dtype=dtype)
        self.to_k = Linear(channels, channels, dtype=dtype)
        self.to_v = Linear(channels, channels, dtype=dtype)
        self.to_out = nn.CellList([Linear(channels, channels, dtype=dtype)])
        self.scale = 1.0 / math.sqrt(channels)

    def construct(self, x):
        b, c, h, w = x.shape
        tokens = self.group_norm(x).reshape(b, c, h * w).swapaxes(1, 2)  # (B, N, C)
        # scale q before the product: same result in fp32, and no fp16 overflow of the raw q.k products
        q = (self.to_q(tokens) * self.scale).reshape(b, 1, h * w, c)
        k = self.to_k(tokens).reshape(b, 1, h * w, c)
        v = self.to_v(tokens).reshape(b, 1, h * w, c)
        out = attention(q, k, v).reshape(b, h * w, c)
        out = self.to_out[0](out)
        return out.swapaxes(1, 2).reshape(b, c, h, w) + x


class UNetMidBlock2D(nn.Cell):
    def __init__(self, channels: int, groups: int, add_attention: bool, dtype=ms.float32):
        super().__init__()
        self.add_attention = add_attention
        self.resnets = nn.CellList([ResnetBlock2D(channels, channels, groups, dtype=dtype) for _ in range(2)])
        if add_attention:
            self.attentions = nn.CellList([MidBlockAttention(channels, groups, dtype=dtype)])
        else:
            self.attentions = None

    def construct(self, x):
        x = self.resnets[0](x)
        if self.add_attention:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class DownEncoderBlock2D(nn.Cell):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, add_downsample: bool,
                 dtype=ms.float32):
        super().__init__()
        self.resnets = nn.CellList([
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, groups, dtype=dtype)
            for i in range(num_layers)
        ])
        self.add_downsample = add_downsample
        self.downsamplers = nn.CellList([Downsample2D(out_channels, dtype=dtype)]) if add_downsample else None

    def construct(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        if self.add_downsample:
            x = self.downsamplers[0](x)
        return x


class UpDecoderBlock2D(nn.Cell):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, add_upsample: bool,
                 dtype=ms.float32):
        super().__init__()
        self.resnets = nn.CellList([
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, groups, dtype=dtype)
            for i in range(num_layers)
        ])
        self.add_upsample = add_upsample
        self.upsamplers = nn.CellList([Upsample2D(out_channels, dtype=dtype)]) if add_upsample else None

    def construct(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        if self.add_upsample:
            x = self.upsamplers[0](x)
        return x


class Encoder(nn.Cell):
    """diffusers ``Encoder`` with ``double_z=True``: image -> 2 * latent_channels moments (before quant_conv)."""

    def __init__(self, config: VAEConfig, dtype=ms.float32):
        super().__init__()
        chans = list(config.block_out_channels)
        groups = config.norm_num_groups
        self.conv_in = Conv2d(config.in_channels, chans[0], 3, padding=1, dtype=dtype)
        blocks = []
        out_ch = chans[0]
        for i in range(len(config.down_block_types)):
            in_ch, out_ch = out_ch, chans[i]
            blocks.append(DownEncoderBlock2D(in_ch, out_ch, config.layers_per_block, groups,
                                             add_downsample=i != len(chans) - 1, dtype=dtype))
        self.down_blocks = nn.CellList(blocks)
        self.mid_block = UNetMidBlock2D(chans[-1], groups, config.mid_block_add_attention, dtype=dtype)
        self.conv_norm_out = GroupNorm(groups, chans[-1], RESNET_EPS, dtype=dtype)
        self.conv_out = Conv2d(chans[-1], 2 * config.latent_channels, 3, padding=1, dtype=dtype)

    def construct(self, x):
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(ops.silu(self.conv_norm_out(x)))


class Decoder(nn.Cell):
    """diffusers ``Decoder`` (norm_type "group"): latents -> image."""

    def __init__(self, config: VAEConfig, dtype=ms.float32):
        super().__init__()
        chans = list(config.block_out_channels)
        groups = config.norm_num_groups
        self.conv_in = Conv2d(config.latent_channels, chans[-1], 3, padding=1, dtype=dtype)
        self.mid_block = UNetMidBlock2D(chans[-1], groups, config.mid_block_add_attention, dtype=dtype)
        rev = list(reversed(chans))
        blocks = []
        out_ch = rev[0]
        for i in range(len(config.up_block_types)):
            prev, out_ch = out_ch, rev[i]
            blocks.append(UpDecoderBlock2D(prev, out_ch, config.layers_per_block + 1, groups,
                                           add_upsample=i != len(chans) - 1, dtype=dtype))
        self.up_blocks = nn.CellList(blocks)
        self.conv_norm_out = GroupNorm(groups, chans[0], RESNET_EPS, dtype=dtype)
        self.conv_out = Conv2d(chans[0], config.out_channels, 3, padding=1, dtype=dtype)

    def construct(self, z):
        x = self.conv_in(z)
        x = self.mid_block(x)
        for block in self.up_blocks:
            x = block(x)
        if self.conv_norm_out.host:
            return self.conv_out(self.conv_norm_out.silu(x))
        return self.conv_out(ops.silu(self.conv_norm_out(x)))


class AutoencoderKL(PretrainedMixin, nn.Cell):
    """diffusers ``AutoencoderKL``: ``encode(x) -> moments``, ``decode(z) -> image``; ``construct`` = decode.

    ``moments`` are ``cat([mean, logvar])`` along channels (after ``quant_conv``), like diffusers'
    ``DiagonalGaussianDistribution.parameters``; scaling latents by ``scaling_factor`` is the caller's job.
    """

    component = "vae"

    def __init__(self, config: VAEConfig, dtype=ms.float32):
        super().__init__()
        if len(config.down_block_types) != len(config.block_out_channels) or \
                len(config.up_block_types) != len(config.block_out_channels):
            raise ValueError("AutoencoderKL: down/up_block_types must have one entry per block_out_channels")
        self.config = config
        self.compute_dtype = dtype
        self.scaling_factor = config.scaling_factor
        self.shift_factor = config.shift_factor
        self.latent_channels = config.latent_channels
        self.encoder = Encoder(config, dtype=dtype)
        self.decoder = Decoder(config, dtype=dtype)
        self.use_quant_conv = bool(config.use_quant_conv)
        self.use_post_quant_conv = bool(config.use_post_quant_conv)
        lc = config.latent_channels
        self.quant_conv = Conv2d(2 * lc, 2 * lc, 1, dtype=dtype) if self.use_quant_conv else None
        self.post_quant_conv = Conv2d(lc, lc, 1, dtype=dtype) if self.use_post_quant_conv else None

    def encode(self, x):
        """(B, in_channels, H, W) image in [-1, 1] -> (B, 2 * latent_channels, H/f, W/f) moments."""
        h = self.encoder(x.astype(self.compute_dtype))
        if self.use_quant_conv:
            h = self.quant_conv(h)
        return h

    def decode(self, z):
        """(B, latent_channels, h, w) unscaled latents -> (B, out_channels, h*f, w*f) image."""
        z = z.astype(self.compute_dtype)
        if self.use_post_quant_conv:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def construct(self, z):
        return self.decode(z)

    def encoder_cell(self) -> nn.Cell:
        """A Cell whose ``construct(x)`` is ``self.encode(x)`` (for GRAPH mode and export)."""
        return VAEEncoderCell(self)

    def decoder_cell(self) -> nn.Cell:
        """A Cell whose ``construct(z)`` is ``self.decode(z)`` (for GRAPH mode and export)."""
        return VAEDecoderCell(self)


class VAEEncoderCell(nn.Cell):
    """``construct(x) = vae.encode(x)``; ``auto_prefix=False`` keeps the VAE's parameter names unchanged."""

    def __init__(self, vae: AutoencoderKL):
        super().__init__(auto_prefix=False)
        self.vae = vae

    def construct(self, x):
        return self.vae.encode(x)


class VAEDecoderCell(nn.Cell):
    """``construct(z) = vae.decode(z)``; ``auto_prefix=False`` keeps the VAE's parameter names unchanged."""

    def __init__(self, vae: AutoencoderKL):
        super().__init__(auto_prefix=False)
        self.vae = vae

    def construct(self, z):
        return self.vae.decode(z)
