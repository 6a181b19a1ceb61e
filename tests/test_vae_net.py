"""MindSpore AutoencoderKL against diffusers' AutoencoderKL: what is particular to the VAE beyond the runner's
standard checks (``test_networks.py``): names and shapes at full size, the variant without quant convs and mid-block
attention, GroupNorm and upsampling details, ``from_pretrained``.

Tiny random diffusers VAEs (``pixart_demo.tiny``) are loaded into our network with the strict loader and compared
on encode moments (the quant_conv output) and decode images.
"""
from __future__ import annotations

import json
import math

import mindspore as ms
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL as TorchAutoencoderKL

from converters.references import torch_forward
from mindspore_nets.config import VAEConfig
from mindspore_nets.loading import load_into
from mindspore_nets.metrics import rel_l2
from mindspore_nets.vae import AutoencoderKL, GroupNorm, upsample_nearest2x
from pixart_core import registry
from pixart_demo.tiny import TINY_VAE, tiny_vae

from .network_runner import SDXL_VAE, check_parameter_table, check_view, ms_network

FP32_TOL = 1e-5

# the other switches diffusers offers: no quant convs, no mid-block attention, a third block without
# a channel change (so that resnets without conv_shortcut sit between blocks that have one)
VARIANT = dict(block_out_channels=[8, 8, 16], down_block_types=["DownEncoderBlock2D"] * 3,
               up_block_types=["UpDecoderBlock2D"] * 3, use_quant_conv=False, use_post_quant_conv=False,
               mid_block_add_attention=False)


@pytest.fixture(scope="module")
def tiny():
    vae = tiny_vae()
    gen = torch.Generator().manual_seed(7)
    x = (torch.rand((1, 3, 32, 32), generator=gen) * 2 - 1).numpy()
    z = torch.randn((1, 4, 8, 8), generator=gen).numpy()
    moments = torch_forward("vae_encoder", vae, {"image": x})  # the quant_conv output, cat([mean, logvar])
    image = torch_forward("vae_decoder", vae, {"latent": z})
    return dict(vae=vae, x=x, z=z, moments=moments, image=image)


def test_parameter_table_matches_diffusers_tiny(tiny):
    ours = check_parameter_table("vae", tiny["vae"])  # diffusers' names and shapes, all fp32
    assert "decoder.mid_block.attentions.0.to_out.0.weight" in ours
    assert "encoder.down_blocks.1.resnets.0.conv_shortcut.weight" in ours
    assert "encoder.down_blocks.0.downsamplers.0.conv.weight" in ours
    assert "encoder.down_blocks.1.downsamplers.0.conv.weight" not in ours  # last down block: no downsampler
    assert ours["encoder.conv_out.weight"][0] == (8, 16, 3, 3)  # double_z
    assert ours["quant_conv.weight"][0] == (8, 8, 1, 1)
    assert ours["post_quant_conv.weight"][0] == (4, 4, 1, 1)


def test_parameter_table_matches_diffusers_sdxl_full_size():
    with torch.device("meta"):
        torch_vae = TorchAutoencoderKL(**SDXL_VAE)
    ours = check_parameter_table("vae", torch_vae)
    assert len(ours) == 248
    assert sum(math.prod(shape) for shape, _ in ours.values()) == 83_653_863
    assert ours["decoder.up_blocks.3.resnets.2.conv2.weight"][0] == (128, 128, 3, 3)
    assert ours["decoder.up_blocks.0.upsamplers.0.conv.weight"][0] == (512, 512, 3, 3)
    assert "decoder.up_blocks.3.upsamplers.0.conv.weight" not in ours


def test_encode_decode_fp32_pynative(tiny):
    net = ms_network("vae", tiny["vae"])
    moments = net.encode(ms.Tensor(tiny["x"])).asnumpy()
    image = net.decode(ms.Tensor(tiny["z"])).asnumpy()
    assert moments.shape == (1, 8, 16, 16) and image.shape == (1, 3, 16, 16)  # one downsampler: factor 2
    assert rel_l2(moments, tiny["moments"]) <= FP32_TOL
    assert rel_l2(image, tiny["image"]) <= FP32_TOL
    assert rel_l2(net(ms.Tensor(tiny["z"])).asnumpy(), tiny["image"]) <= FP32_TOL
    assert net.scaling_factor == pytest.approx(0.13025)


def test_view_cells_keep_the_vae_parameters(tiny):
    """The encoder / decoder Cells (graph mode, export) neither rename nor copy the VAE's parameters."""
    net = ms_network("vae", tiny["vae"])
    names_before = [p.name for p in net.get_parameters()]
    for view in registry.component("vae").views:
        assert [p.name for p in registry.view(view).cell(net).get_parameters()] == names_before
    assert [p.name for p in net.decoder_cell().get_parameters()] == names_before
    assert [p.name for p in net.get_parameters()] == names_before


def test_variant_without_quant_convs_and_mid_attention():
    vae = tiny_vae(seed=3, **VARIANT)
    ours = check_parameter_table("vae", vae)
    assert not any(k.startswith(("quant_conv", "post_quant_conv")) or ".attentions." in k for k in ours)
    net = ms_network("vae", vae)
    for view in registry.component("vae").views:
        check_view(view, vae, net=net)  # fp32: rel L2 <= 1e-5, every row, the interface's shape


def test_group_norms_mirror_diffusers(tiny):
    """Every GroupNorm has diffusers' groups and eps (1e-6); the numbers alone cannot see eps at unit scale."""
    net = AutoencoderKL(VAEConfig.from_dict(TINY_VAE))
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
    src = ms_network("vae", tiny["vae"])
    ms.save_checkpoint(src, str(tmp_path / "diffusion_pytorch_model.safetensors"), format="safetensors")
    (tmp_path / "config.json").write_text(json.dumps(dict(tiny["vae"].config, _class_name="AutoencoderKL")))
    net = AutoencoderKL.from_pretrained(tmp_path)
    assert net.scaling_factor == pytest.approx(0.13025)
    assert rel_l2(net.decode(ms.Tensor(tiny["z"])).asnumpy(), tiny["image"]) <= FP32_TOL


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_fast_decoder_with_host_buffers_gives_the_pool_only_numbers(tiny, dtype, monkeypatch):
    """Built in PYNATIVE under ``fast_kernels``, the decoder writes its SiLU'd group norms, convolution bands and
    upsampled convolutions into host arrays (``layers.host_buffers``); a few channels and rows at a time here
    (small steps), against the same fast network kept in MindSpore's pool: the same numbers, bit for bit."""
    from mindspore_nets import layers, vae as vae_module

    ms.set_context(mode=ms.PYNATIVE_MODE)
    monkeypatch.setattr(vae_module, "GROUP_NORM_STEP_BYTES", 4 * 16 * 3)  # three channels of a 4x4 map a step
    monkeypatch.setattr(layers, "CONV_BAND_BYTES", 4 * 8 * 9 * 32 * 3)  # a few output rows a band
    with layers.fast_kernels():
        host = ms_network("vae", tiny["vae"], dtype)
        with monkeypatch.context() as m:
            m.setattr(layers, "host_buffers", lambda dtype: False)
            m.setattr(vae_module, "host_buffers", lambda dtype: False)
            pooled = ms_network("vae", tiny["vae"], dtype)
    assert host.decoder.up_blocks[0].resnets[0].norm1.host and host.decoder.conv_in.host_output
    assert not pooled.decoder.up_blocks[0].resnets[0].norm1.host and not pooled.decoder.conv_in.host_output
    z = ms.Tensor(tiny["z"])
    ours = host.decode(z).asnumpy()
    np.testing.assert_array_equal(ours, pooled.decode(z).asnumpy())
    assert rel_l2(ours.astype(np.float32), tiny["image"]) <= (FP32_TOL if dtype == "fp32" else 5e-3)
