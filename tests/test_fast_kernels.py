"""``layers.fast_kernels``: im2col + matmul convolutions and two-level group-norm sums, chosen when a Cell is built;
the same function as the plain ops (and torch), closer to float64, and never used by Cells built outside it."""
from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
import torch

from mindspore_nets.layers import Conv2d, conv_unfold, fast_kernels
from mindspore_nets.metrics import rel_l2
from mindspore_nets.vae import GroupNorm

RNG = np.random.default_rng(0)


def _conv_pair(cin, cout, k, stride, padding):
    with fast_kernels():
        fast = Conv2d(cin, cout, k, stride=stride, padding=padding)
    plain = Conv2d(cin, cout, k, stride=stride, padding=padding)
    weight = RNG.standard_normal((cout, cin, k, k)).astype(np.float32) * 0.2
    bias = RNG.standard_normal(cout).astype(np.float32)
    for cell in (fast, plain):
        cell.weight.set_data(ms.Tensor(weight))
        cell.bias.set_data(ms.Tensor(bias))
    return fast, plain, weight, bias


@pytest.mark.parametrize("k, stride, padding", [(3, 1, 1), (1, 1, 0), (3, 2, (0, 1, 0, 1)), (2, 2, 0)])
def test_unfold_convolution_matches_torch(k, stride, padding):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    fast, plain, weight, bias = _conv_pair(8, 16, k, stride, padding)
    assert fast.unfold and not plain.unfold
    x = RNG.standard_normal((2, 8, 13, 11)).astype(np.float32)
    xt = torch.from_numpy(x).double()
    if isinstance(padding, tuple):  # (top, bottom, left, right) -> torch's (left, right, top, bottom)
        xt = torch.nn.functional.pad(xt, (padding[2], padding[3], padding[0], padding[1]))
        padding = 0
    ref = torch.nn.functional.conv2d(xt, torch.from_numpy(weight).double(), torch.from_numpy(bias).double(),
                                     stride=stride, padding=padding).numpy()
    ours = fast(ms.Tensor(x)).asnumpy()
    assert ours.shape == ref.shape
    assert rel_l2(ours, ref) < 1e-6
    assert rel_l2(plain(ms.Tensor(x)).asnumpy(), ref) < 1e-6


@pytest.mark.parametrize("batch, k, stride, pad", [(1, 3, 1, 1), (2, 3, 1, 1), (1, 5, 1, 2), (1, 4, 2, 2),
                                                    (1, 3, 2, 1)])
@pytest.mark.parametrize("rows", [1, 2, 3, 7])
def test_unfold_convolution_in_bands_equals_one_band(batch, k, stride, pad, rows):
    """Each band unfolds its rows plus the kernel's halo and drops the rows padding made at inner edges."""
    x = RNG.standard_normal((batch, 4, 17, 9)).astype(np.float32)
    w = RNG.standard_normal((6, 4, k, k)).astype(np.float32)
    pads = (pad,) * 4
    whole = conv_unfold(ms.Tensor(x), ms.Tensor(w), None, stride, pads).asnumpy()
    wo = (9 + 2 * pad - k) // stride + 1
    banded = conv_unfold(ms.Tensor(x), ms.Tensor(w), None, stride, pads,
                         band_bytes=4 * batch * 4 * k * k * wo * rows).asnumpy()
    np.testing.assert_array_equal(whole, banded)
    # the bands written into one host array instead of concatenated: the same numbers
    host = conv_unfold(ms.Tensor(x), ms.Tensor(w), None, stride, pads, band_bytes=4 * batch * 4 * k * k * wo * rows,
                       host_output=True)
    np.testing.assert_array_equal(whole, host.asnumpy())
    ref = torch.nn.functional.conv2d(torch.from_numpy(x).double(), torch.from_numpy(w).double(), stride=stride,
                                     padding=pad).numpy()
    assert whole.shape == ref.shape
    assert rel_l2(whole, ref) < 1e-6


@pytest.mark.parametrize("shape", [(2, 64, 9, 7), (1, 64, 96, 96)])  # H*W up to 4096 in one level, and above
def test_fast_group_norm_matches_torch_in_float64(shape):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    with fast_kernels():
        fast = GroupNorm(32, shape[1], 1e-6)
    plain = GroupNorm(32, shape[1], 1e-6)
    assert fast.fast and not plain.fast
    weight = RNG.standard_normal(shape[1]).astype(np.float32)
    bias = RNG.standard_normal(shape[1]).astype(np.float32)
    for cell in (fast, plain):
        cell.weight.set_data(ms.Tensor(weight))
        cell.bias.set_data(ms.Tensor(bias))
    x = (RNG.standard_normal(shape) * 3 + 1.5).astype(np.float32)
    ref = torch.nn.functional.group_norm(torch.from_numpy(x).double(), 32, torch.from_numpy(weight).double(),
                                         torch.from_numpy(bias).double(), 1e-6).numpy()
    ours = fast(ms.Tensor(x)).asnumpy()
    assert rel_l2(ours, ref) < 2e-7
    assert rel_l2(ours, ref) <= 2 * rel_l2(plain(ms.Tensor(x)).asnumpy(), ref) + 1e-8


def test_switch_is_read_at_construction_only():
    with fast_kernels():
        inside = Conv2d(4, 4, 3, padding=1)
        with fast_kernels(False):
            nested_off = Conv2d(4, 4, 3, padding=1)
    after = Conv2d(4, 4, 3, padding=1)
    depthwise = None
    with fast_kernels():
        depthwise = Conv2d(4, 4, 2, stride=2, groups=4)  # grouped convolutions keep ops.Conv2D
    assert inside.unfold and not nested_off.unfold and not after.unfold and not depthwise.unfold


@pytest.mark.parametrize("affine", [True, False])
def test_fused_layer_norm_matches_torch_in_float64(affine):
    from mindspore_nets.layers import LayerNorm

    ms.set_context(mode=ms.PYNATIVE_MODE)
    with fast_kernels():
        fast = LayerNorm(96, eps=1e-6, affine=affine)
    plain = LayerNorm(96, eps=1e-6, affine=affine)
    assert fast.fused is not None and plain.fused is None
    weight = RNG.standard_normal(96).astype(np.float32)
    bias = RNG.standard_normal(96).astype(np.float32)
    if affine:
        for cell in (fast, plain):
            cell.weight.set_data(ms.Tensor(weight))
            cell.bias.set_data(ms.Tensor(bias))
    x = (RNG.standard_normal((2, 50, 96)) * 3 + 1.5).astype(np.float32)
    ref = torch.nn.functional.layer_norm(torch.from_numpy(x).double(), (96,),
                                         torch.from_numpy(weight).double() if affine else None,
                                         torch.from_numpy(bias).double() if affine else None, 1e-6).numpy()
    ours = fast(ms.Tensor(x)).asnumpy()
    assert rel_l2(ours, ref) < 1e-7
    assert rel_l2(ours, ref) <= 2 * rel_l2(plain(ms.Tensor(x)).asnumpy(), ref) + 1e-8
    half = fast(ms.Tensor(x).astype(ms.float16))  # fp16 in, fp32 statistics, fp16 out
    assert half.dtype == ms.float16 and rel_l2(half.asnumpy(), ref) < 1e-3


def test_sigmoid_gelu_matches_torch_in_float64():
    from mindspore_nets.layers import GELUTanh

    ms.set_context(mode=ms.PYNATIVE_MODE)
    with fast_kernels():
        fast = GELUTanh()
    plain = GELUTanh()
    assert fast.fast and not plain.fast
    x = (RNG.standard_normal((4, 1000)) * 3).astype(np.float32)
    ref = torch.nn.functional.gelu(torch.from_numpy(x).double(), approximate="tanh").numpy()
    ours = fast(ms.Tensor(x)).asnumpy()
    assert rel_l2(ours, ref) < 1.5e-7
    assert rel_l2(ours, ref) <= 3 * rel_l2(plain(ms.Tensor(x)).asnumpy(), ref) + 1e-8
    assert np.all(np.isfinite(fast(ms.Tensor(np.array([-1e4, -80.0, 80.0, 1e4], np.float32))).asnumpy()))


@pytest.mark.parametrize("shape, bias", [((7, 24), True), ((2, 5, 24), True), ((2, 5, 24), False)])
def test_fast_linear_matches_float64(shape, bias):
    from mindspore_nets.layers import Linear

    ms.set_context(mode=ms.PYNATIVE_MODE)
    with fast_kernels():
        fast = Linear(24, 40, bias=bias)
    plain = Linear(24, 40, bias=bias)
    assert fast.fast and not plain.fast
    weight = RNG.standard_normal((40, 24)).astype(np.float32)
    for cell in (fast, plain):
        cell.weight.set_data(ms.Tensor(weight))
        if bias:
            cell.bias.set_data(ms.Tensor(np.arange(40, dtype=np.float32)))
    x = ms.Tensor(RNG.standard_normal(shape).astype(np.float32))
    ours = fast(x).asnumpy()
    assert ours.shape == shape[:-1] + (40,)
    ref = x.asnumpy().astype(np.float64) @ weight.astype(np.float64).T + (np.arange(40) if bias else 0)
    # the same dot products; the bias is added after the product (Dense may fold it in): within an ulp
    assert rel_l2(ours, ref) < 1e-7 and rel_l2(ours, ref) <= 2 * rel_l2(plain(x).asnumpy(), ref) + 1e-8
    assert np.array_equal(ms.jit(fast.construct)(x).asnumpy(), ours)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_eager_convolution_writes_its_bands_to_host_memory(dtype):
    """A fast Conv2d built in PYNATIVE mode fills one host array with its bands (bias included), the numbers of the
    concatenated bands; built for GRAPH mode it concatenates (no numpy in a compiled graph)."""
    from mindspore_nets import layers

    ms.set_context(mode=ms.PYNATIVE_MODE)
    kind = getattr(ms, dtype)
    with fast_kernels():
        eager = Conv2d(4, 6, 3, padding=1, dtype=kind)
    assert eager.host_output
    eager.weight.set_data(ms.Tensor(RNG.standard_normal((6, 4, 3, 3)).astype(dtype)))
    eager.bias.set_data(ms.Tensor(RNG.standard_normal(6).astype(dtype)))
    x = ms.Tensor(RNG.standard_normal((1, 4, 23, 11)).astype(dtype))
    band = 4 * 4 * 9 * 11 * 5  # five output rows a band
    concatenated = layers.conv_unfold(x, eager.weight, eager.bias, 1, (1,) * 4, band_bytes=band)
    written = layers.conv_unfold(x, eager.weight, eager.bias, 1, (1,) * 4, band_bytes=band, host_output=True)
    assert written.dtype == kind and written.shape == (1, 6, 23, 11)
    np.testing.assert_array_equal(written.asnumpy(), concatenated.asnumpy())
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        with fast_kernels():
            assert not Conv2d(4, 6, 3, padding=1).host_output
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)


@pytest.mark.parametrize("batch, k, pad", [(1, 3, 1), (2, 3, 1), (1, 5, 2), (1, 1, 0)])
@pytest.mark.parametrize("rows", [1, 2, 3, 7, 64])
@pytest.mark.parametrize("host", [False, True])
def test_upsampling_convolution_equals_convolving_the_upsampled_input(batch, k, pad, rows, host):
    """Each band upsamples its own input rows (odd first rows included): the convolution of the whole upsampled
    input, bit for bit."""
    from mindspore_nets.layers import upsample_nearest2x

    ms.set_context(mode=ms.PYNATIVE_MODE)
    x = ms.Tensor(RNG.standard_normal((batch, 4, 9, 5)).astype(np.float32))
    w = ms.Tensor(RNG.standard_normal((6, 4, k, k)).astype(np.float32))
    bias = ms.Tensor(RNG.standard_normal(6).astype(np.float32))
    band = 4 * batch * 4 * k * k * 10 * rows
    whole = conv_unfold(upsample_nearest2x(x), w, bias, 1, (pad,) * 4).asnumpy()
    fused = conv_unfold(x, w, bias, 1, (pad,) * 4, band_bytes=band, host_output=host, upsample=True).asnumpy()
    assert fused.shape == (batch, 6, 18, 10)
    np.testing.assert_array_equal(whole, fused)


def test_fast_vae_cells_built_for_graph_mode_compile_and_match():
    """Built in GRAPH mode, the fast VAE Cells take no host-buffer path, and ``ms.jit`` compiles them (the host
    paths live in functions of their own: the graph parser reads every statement of a function it compiles)."""
    from mindspore_nets.vae import GroupNorm, ResnetBlock2D, Upsample2D

    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        with fast_kernels():
            cells = [Conv2d(4, 6, 3, padding=1), Conv2d(4, 6, 1), GroupNorm(2, 4, 1e-6), Upsample2D(4),
                     ResnetBlock2D(4, 6, 2)]
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    x = ms.Tensor(RNG.standard_normal((1, 4, 9, 7)).astype(np.float32))
    for cell in cells:
        for p in cell.get_parameters():
            p.set_data(ms.Tensor(RNG.standard_normal(p.shape).astype(np.float32)))
        eager = cell(x).asnumpy()
        np.testing.assert_array_equal(ms.jit(cell.construct)(x).asnumpy(), eager, err_msg=type(cell).__name__)
