"""MindSpore AutoencoderKL against diffusers' AutoencoderKL: names, shapes and numbers.

Tiny random diffusers VAEs (fixed seed, every parameter re-drawn from a normal distribution so GroupNorm
affines and biases are not trivial) are loaded into our network with the strict loader and compared on
encode moments (the quant_conv output) and decode images, in PYNATIVE and GRAPH mode, fp32 and fp16.
"""
from __future__ import annotations

import json
import math

import mindspore as ms
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL as TorchAutoencoderKL

from mindspore_nets.config import VAEConfig
from mindspore_nets.loading import load_into, parameter_table
from mindspore_nets.vae import AutoencoderKL, GroupNorm, upsample_nearest2x

FP32_TOL = 1e-5
FP16_TOL = 5e-3

TINY = dict(
    in_channels=3, out_channels=3, block_out_channels=[8, 16], layers_per_block=1, norm_num_groups=4,
    latent_channels=4, down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
    sample_size=32, scaling_factor=0.13025,
)
# the other switches diffusers offers: no quant convs, no mid-block attention, a third block without
# a channel change (so that resnets without conv_shortcut sit between blocks that have one)
TINY_VARIANT = dict(
    TINY, block_out_channels=[8, 8, 16], down_block_types=["DownEncoderBlock2D"] * 3,
    up_block_types=["UpDecoderBlock2D"] * 3, use_quant_conv=False, use_post_quant_conv=False,
    mid_block_add_attention=False,
)
SDXL = dict(
    in_channels=3, out_channels=3, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
    norm_num_groups=32, latent_channels=4, down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4, sample_size=1024, scaling_factor=0.13025, force_upcast=True,
)


def rel_l2(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def build_torch_vae(kwargs: dict, seed: int = 0) -> TorchAutoencoderKL:
    torch.manual_seed(seed)
    vae = TorchAutoencoderKL(**kwargs).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.25 * torch.randn(p.shape, generator=gen))
    return vae


def torch_reference(vae: TorchAutoencoderKL, x: torch.Tensor, z: torch.Tensor):
    with torch.no_grad():
        moments = vae.encode(x).latent_dist.parameters  # the quant_conv output, cat([mean, logvar])
        image = vae.decode(z).sample
    return moments.numpy(), image.numpy()


def ms_vae(vae: TorchAutoencoderKL, kwargs: dict, dtype=ms.float32) -> AutoencoderKL:
    net = AutoencoderKL(VAEConfig.from_dict(kwargs), dtype=dtype)
    load_into(net, {k: v.numpy() for k, v in vae.state_dict().items()})
    net.set_train(False)
    return net


@pytest.fixture(scope="module")
def tiny():
    vae = build_torch_vae(TINY)
    gen = torch.Generator().manual_seed(7)
    x = torch.rand((1, 3, 32, 32), generator=gen) * 2 - 1
    z = torch.randn((1, 4, 8, 8), generator=gen)
    moments, image = torch_reference(vae, x, z)
    return dict(vae=vae, x=x.numpy(), z=z.numpy(), moments=moments, image=image)


@pytest.fixture
def graph_mode():
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        yield
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)


def check_table(kwargs: dict, torch_vae: TorchAutoencoderKL) -> dict:
    ours = parameter_table(AutoencoderKL, VAEConfig.from_dict(kwargs))
    theirs = {k: tuple(v.shape) for k, v in torch_vae.state_dict().items()}
    assert sorted(ours) == sorted(theirs), (sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours)))
    bad = {k: (ours[k][0], theirs[k]) for k in theirs if ours[k][0] != theirs[k]}
    assert not bad, bad
    return ours


def test_parameter_table_matches_diffusers_tiny(tiny):
    ours = check_table(TINY, tiny["vae"])
    assert "decoder.mid_block.attentions.0.to_out.0.weight" in ours
    assert "encoder.down_blocks.1.resnets.0.conv_shortcut.weight" in ours
    assert "encoder.down_blocks.0.downsamplers.0.conv.weight" in ours
    assert "encoder.down_blocks.1.downsamplers.0.conv.weight" not in ours  # last down block: no downsampler
    assert ours["encoder.conv_out.weight"][0] == (8, 16, 3, 3)  # double_z
    assert ours["quant_conv.weight"][0] == (8, 8, 1, 1)
    assert ours["post_quant_conv.weight"][0] == (4, 4, 1, 1)
    assert all(dt == ms.float32 for _, dt in ours.values())


def test_parameter_table_matches_diffusers_sdxl_full_size():
    with torch.device("meta"):
        torch_vae = TorchAutoencoderKL(**SDXL)
    ours = check_table(SDXL, torch_vae)
    assert len(ours) == 248
    assert sum(math.prod(shape) for shape, _ in ours.values()) == 83_653_863
    assert ours["decoder.up_blocks.3.resnets.2.conv2.weight"][0] == (128, 128, 3, 3)
    assert ours["decoder.up_blocks.0.upsamplers.0.conv.weight"][0] == (512, 512, 3, 3)
    assert "decoder.up_blocks.3.upsamplers.0.conv.weight" not in ours


def test_encode_decode_fp32_pynative(tiny):
    net = ms_vae(tiny["vae"], TINY)
    moments = net.encode(ms.Tensor(tiny["x"])).asnumpy()
    image = net.decode(ms.Tensor(tiny["z"])).asnumpy()
    assert moments.shape == (1, 8, 16, 16) and image.shape == (1, 3, 16, 16)  # one downsampler: factor 2
    assert rel_l2(moments, tiny["moments"]) <= FP32_TOL
    assert rel_l2(image, tiny["image"]) <= FP32_TOL
    assert rel_l2(net(ms.Tensor(tiny["z"])).asnumpy(), tiny["image"]) <= FP32_TOL
    assert net.scaling_factor == pytest.approx(0.13025)


def test_encode_decode_fp32_graph(tiny, graph_mode):
    net = ms_vae(tiny["vae"], TINY)
    names_before = [p.name for p in net.get_parameters()]
    moments = net.encoder_cell()(ms.Tensor(tiny["x"])).asnumpy()
    image = net.decoder_cell()(ms.Tensor(tiny["z"])).asnumpy()
    assert rel_l2(moments, tiny["moments"]) <= FP32_TOL
    assert rel_l2(image, tiny["image"]) <= FP32_TOL
    # the wrappers neither rename nor copy the VAE's parameters
    assert [p.name for p in net.decoder_cell().get_parameters()] == names_before
    assert [p.name for p in net.get_parameters()] == names_before


def test_fp16_compute_close_to_fp32_torch(tiny):
    net = ms_vae(tiny["vae"], TINY, dtype=ms.float16)
    assert all(p.dtype == ms.float16 for p in net.get_parameters())
    image = net.decode(ms.Tensor(tiny["z"]))
    moments = net.encode(ms.Tensor(tiny["x"]))
    assert image.dtype == ms.float16
    image = image.asnumpy().astype(np.float32)
    moments = moments.asnumpy().astype(np.float32)
    assert np.isfinite(image).all() and np.isfinite(moments).all()
    assert rel_l2(image, tiny["image"]) <= FP16_TOL
    assert rel_l2(moments, tiny["moments"]) <= FP16_TOL


def test_variant_without_quant_convs_and_mid_attention():
    vae = build_torch_vae(TINY_VARIANT, seed=3)
    ours = check_table(TINY_VARIANT, vae)
    assert not any(k.startswith(("quant_conv", "post_quant_conv")) or ".attentions." in k for k in ours)
    gen = torch.Generator().manual_seed(11)
    x = torch.rand((1, 3, 16, 16), generator=gen) * 2 - 1
    z = torch.randn((1, 4, 4, 4), generator=gen)
    moments_t, image_t = torch_reference(vae, x, z)
    net = ms_vae(vae, TINY_VARIANT)
    assert rel_l2(net.encode(ms.Tensor(x.numpy())).asnumpy(), moments_t) <= FP32_TOL
    assert rel_l2(net.decode(ms.Tensor(z.numpy())).asnumpy(), image_t) <= FP32_TOL


def test_group_norms_mirror_diffusers(tiny):
    """Every GroupNorm has diffusers' groups and eps (1e-6); the numbers alone cannot see eps at unit scale."""
    net = AutoencoderKL(VAEConfig.from_dict(TINY))
    ours = {name: (cell.num_groups, cell.eps) for name, cell in net.cells_and_names() if isinstance(cell, GroupNorm)}
    theirs = {name: (m.num_groups, m.eps) for name, m in tiny["vae"].named_modules()
              if isinstance(m, torch.nn.GroupNorm)}
    assert ours == theirs
    assert len(ours) == 24  # encoder 4 + 5 (mid) + 1, decoder 5 (mid) + 8 + 1


@pytest.mark.parametrize("dtype", [ms.float32, ms.float16])
def test_group_norm_small_variance_and_offset(dtype):
    """Statistics in fp32: eps matters at std 1e-3, and an fp16 input with offset 100 still normalizes."""
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((2, 8, 4, 4)) * (1e-3 if dtype == ms.float32 else 0.5) + 100.0 * (dtype == ms.float16))
    x = x.astype(np.float16 if dtype == ms.float16 else np.float32)
    w = (1 + 0.3 * rng.standard_normal(8)).astype(np.float32)
    b = (0.3 * rng.standard_normal(8)).astype(np.float32)
    gn = GroupNorm(4, 8, 1e-6, dtype=dtype)
    load_into(gn, {"weight": w, "bias": b})
    ours = gn(ms.Tensor(x)).asnumpy()
    assert ours.dtype == x.dtype
    ref = torch.nn.GroupNorm(4, 8, eps=1e-6)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(w))
        ref.bias.copy_(torch.from_numpy(b))
        theirs = ref(torch.from_numpy(x.astype(np.float32))).numpy()
    assert rel_l2(ours.astype(np.float32), theirs) <= (FP32_TOL if dtype == ms.float32 else 2e-3)


def test_upsample_nearest_is_bit_exact():
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 7)).astype(np.float32)
    ours = upsample_nearest2x(ms.Tensor(x)).asnumpy()
    theirs = torch.nn.functional.interpolate(torch.from_numpy(x), scale_factor=2.0, mode="nearest").numpy()
    assert ours.shape == theirs.shape == (2, 3, 10, 14)
    np.testing.assert_array_equal(ours, theirs)


def test_from_pretrained_folder(tiny, tmp_path):
    src = ms_vae(tiny["vae"], TINY)
    ms.save_checkpoint(src, str(tmp_path / "diffusion_pytorch_model.safetensors"), format="safetensors")
    (tmp_path / "config.json").write_text(json.dumps(dict(tiny["vae"].config, _class_name="AutoencoderKL")))
    net = AutoencoderKL.from_pretrained(tmp_path)
    assert net.scaling_factor == pytest.approx(0.13025)
    assert rel_l2(net.decode(ms.Tensor(tiny["z"])).asnumpy(), tiny["image"]) <= FP32_TOL
