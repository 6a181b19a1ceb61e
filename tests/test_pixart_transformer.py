"""The MindSpore PixArt-Sigma transformer, converted through the CLI from both source layouts, against the torch
references: diffusers' PixArtTransformer2DModel and an independent statement of the original PixArtMS."""
from __future__ import annotations

import json

import mindspore as ms
import numpy as np
import pytest
import torch

from converters.engine import run_in_memory
from converters.keymaps.pixart import pixart_original
from converters.references import torch_forward
from mindspore_nets import PixArtTransformer2D
from mindspore_nets.config import PixArtConfig
from mindspore_nets.loading import parameter_table
from mindspore_nets.metrics import rel_l2
from parity.cases import ms_forward
from pixart_core import registry
from pixart_demo.tiny import randomize_, tiny_pixart

from .helpers import run_cli
from .network_runner import check_against_torch, check_fp16_parameters, transformer_cases
from .original_pixart import XL2, OriginalPixArtMS


def without_mask(net, arrays):
    """The network's own optional mask left out (the graph interface always has one)."""
    args = [ms.Tensor(arrays[n]) for n in ("hidden_states", "timestep", "encoder_hidden_states")]
    return net(*args, None).astype(ms.float32).asnumpy()


@pytest.mark.parametrize("layout", ["diffusers", "pth"])
def test_fp32_matches_diffusers(layout, converted_pixart, pixart_model, ms_mode):
    net = PixArtTransformer2D.from_pretrained(converted_pixart[layout])
    cell = registry.view("transformer").cell(net)
    for name, arrays in transformer_cases():
        assert arrays["encoder_attention_mask"][1].sum() == 3 and set(arrays["timestep"]) == {999.0, 1.0}
        check_against_torch("transformer", net, pixart_model, arrays, cell=cell)  # rel L2 <= 1e-5, every row too


def test_mask_removes_padded_tokens(converted_pixart):
    """Changing the caption behind the mask changes nothing; without the mask it does."""
    net = PixArtTransformer2D.from_pretrained(converted_pixart["diffusers"])
    _, arrays = transformer_cases()[0]
    changed = dict(arrays, encoder_hidden_states=arrays["encoder_hidden_states"].copy())
    changed["encoder_hidden_states"][1, 3:] += 5.0
    same = ms_forward("transformer", net, changed)
    assert np.abs(same - ms_forward("transformer", net, arrays)).max() < 1e-6
    assert np.abs(without_mask(net, changed) - without_mask(net, arrays)).max() > 1e-3


def test_fp16_compute_vs_fp32_torch(converted_pixart, pixart_model):
    net = PixArtTransformer2D.from_pretrained(converted_pixart["pth"], dtype="fp16")
    assert net.transformer_blocks[0].attn1.to_q.weight.dtype == ms.float16
    check_fp16_parameters("transformer", net)
    for name, arrays in transformer_cases():
        check_against_torch("transformer", net, pixart_model, arrays, "fp16")  # finite, rel L2 <= 5e-3


def test_pth_and_diffusers_convert_to_identical_tensors(converted_pixart):
    a = ms.load_checkpoint(str(converted_pixart["pth"] / "diffusion_pytorch_model.safetensors"), format="safetensors")
    b = ms.load_checkpoint(str(converted_pixart["diffusers"] / "diffusion_pytorch_model.safetensors"),
                           format="safetensors")
    assert set(a) - set(b) == {"caption_projection.y_embedding"}  # the .pth keeps its training buffer
    for name in b:
        assert a[name].dtype == b[name].dtype
        assert np.array_equal(a[name].asnumpy(), b[name].asnumpy()), name


def test_round_trip_back_to_original_is_bit_exact(converted_pixart, pixart_pth):
    ms_tensors = ms.load_checkpoint(str(converted_pixart["pth"] / "diffusion_pytorch_model.safetensors"),
                                    format="safetensors")
    as_torch = {k: torch.from_numpy(v.asnumpy()) for k, v in ms_tensors.items()}
    back = run_in_memory(pixart_original().inverse(), as_torch)
    original = torch.load(pixart_pth, weights_only=True)["state_dict"]
    assert set(original) - set(back) == {"pos_embed"}  # dropped by its named rule, recomputed at run time
    for key, value in back.items():
        assert torch.equal(value, original[key]), key


@pytest.mark.parametrize("variant", ["plain", "kv_compress", "qk_norm", "both"])
def test_original_layout_against_original_semantics(variant, workdir):
    """An original-layout .pth, converted with --config, computes what the original PixArtMS computes; the
    KV-compress and qk-norm variants load and their parameters are used."""
    kv = variant in ("kv_compress", "both")
    qk = variant in ("qk_norm", "both")
    torch.manual_seed(3)
    ref = randomize_(OriginalPixArtMS(kv_compress_layers=(1,) if kv else (), scale_factor=2 if kv else 1,
                                      qk_norm=qk), seed=3, std=0.1)
    pth = workdir / f"original-{variant}.pth"
    torch.save({"state_dict": ref.state_dict()}, pth)
    config = dict(num_attention_heads=2, attention_head_dim=8, num_layers=2, sample_size=8, patch_size=2,
                  caption_channels=24, cross_attention_dim=16, interpolation_scale=1.0, out_channels=8,
                  qk_norm=qk, kv_compress_layers=[1] if kv else [], kv_compress_scale_factor=2 if kv else 1)
    cfg_path = workdir / f"config-{variant}.json"
    cfg_path.write_text(json.dumps(config))
    out = workdir / f"ms-original-{variant}"
    result = run_cli("convert", pth, "-o", out, "--config", cfg_path)
    assert result.exit_code == 0, result.output
    net = PixArtTransformer2D.from_pretrained(out)
    for name, arrays in transformer_cases():
        with torch.no_grad():
            expected = ref(*[torch.from_numpy(arrays[n]) for n in registry.view("transformer").inputs])
        err = rel_l2(ms_forward("transformer", net, arrays), expected.numpy())
        assert err <= 1e-5, (variant, name, err)
    names = {n for n, _ in net.parameters_and_names()}
    assert ("transformer_blocks.1.attn1.sr.weight" in names) == kv
    assert ("transformer_blocks.0.attn1.sr.weight" in names) is False
    assert ("transformer_blocks.0.attn1.q_norm.weight" in names) == qk
    if kv or qk:  # the extra parameters take part: perturbing them moves the output
        _, arrays = transformer_cases()[0]
        before = ms_forward("transformer", net, arrays)
        param = net.transformer_blocks[1].attn1.sr_norm.bias if kv else net.transformer_blocks[0].attn1.k_norm.weight
        param.set_data(param + 0.5)
        assert rel_l2(ms_forward("transformer", net, arrays), before) > 1e-4  # exactly 0 if unused


def test_kv_compress_keys_without_config_are_reported(workdir):
    ref = OriginalPixArtMS(kv_compress_layers=(0, 1), scale_factor=2, qk_norm=True)
    pth = workdir / "original-kv-noconfig.pth"
    torch.save({"state_dict": ref.state_dict()}, pth)
    config = workdir / "config-plain.json"
    config.write_text(json.dumps(dict(num_attention_heads=2, attention_head_dim=8, num_layers=2, sample_size=8,
                                      caption_channels=24, cross_attention_dim=16, interpolation_scale=1.0)))
    out = workdir / "ms-kv-noconfig"
    result = run_cli("convert", pth, "-o", out, "--config", config)
    assert result.exit_code == 2
    assert "attn1.sr.weight [n=0..1]" in result.stderr and "kv_compress_layers" in result.stderr
    assert "attn1.q_norm.weight" in result.stderr and "qk_norm" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("sample_size,scale,grid", [(32, 0.5, (16, 16)), (64, 1.0, (32, 24)),
                                                    (128, 2.0, (48, 84)), (256, 4.0, (20, 36))])
def test_released_variants_and_buckets(sample_size, scale, grid, tmp_path):
    """The four released sizes (sample_size / interpolation_scale) on a bucket-shaped token grid, including
    768x1344 at 1024 (48x84 tokens)."""
    model = tiny_pixart(seed=5, num_layers=1, sample_size=sample_size, interpolation_scale=scale)
    model.save_pretrained(tmp_path / "src")
    assert run_cli("convert", tmp_path / "src", "-o", tmp_path / "out").exit_code == 0
    net = PixArtTransformer2D.from_pretrained(tmp_path / "out")
    assert net.pos_embed.interpolation_scale == scale and net.pos_embed.base_size == sample_size // 2
    rng = np.random.default_rng(0)
    arrays = {"hidden_states": rng.standard_normal((1, 4, grid[0] * 2, grid[1] * 2)).astype(np.float32),
              "timestep": np.array([500.5], np.float32),  # fractional, as the original sampler feeds
              "encoder_hidden_states": rng.standard_normal((1, 6, 24)).astype(np.float32),
              "encoder_attention_mask": np.array([[1, 1, 1, 0, 0, 0]], np.float32)}
    check_against_torch("transformer", net, model, arrays)  # rel L2 <= 1e-5


def test_integer_timesteps(converted_pixart, pixart_model):
    net = PixArtTransformer2D.from_pretrained(converted_pixart["diffusers"])
    _, arrays = transformer_cases()[1]
    t = np.array([999, 1], np.int32)
    err = rel_l2(ms_forward("transformer", net, dict(arrays, timestep=t)),
                 torch_forward("transformer", pixart_model, dict(arrays, timestep=t.astype(np.int64))))
    assert err <= 1e-5


def test_full_size_xl2_parameter_table():
    """PixArt-Sigma XL/2 from shapes alone: 435 tensors, 610,856,096 values (the released checkpoint)."""
    table = parameter_table(PixArtTransformer2D, PixArtConfig(sample_size=128, interpolation_scale=2.0))
    # 28 blocks x 21 diffusers tensors + 15 top-level = 603 in diffusers naming (qkv and kv_linear split)
    assert len(table) == 603
    assert sum(int(np.prod(shape)) for shape, _ in table.values()) == 610_856_096
    assert table["transformer_blocks.27.attn1.to_q.weight"][0] == (1152, 1152)
    assert table["adaln_single.linear.weight"][0] == (6912, 1152)
    assert table["proj_out.weight"][0] == (32, 1152)
    # the original layout: fusing q/k/v and k/v back gives the 435 tensors of a released .pth
    meta = {name: torch.empty(shape, device="meta") for name, (shape, _) in table.items()}
    with torch.device("meta"):
        original = OriginalPixArtMS(**XL2).state_dict()
    original_params = {k: v for k, v in original.items() if k not in ("pos_embed", "y_embedder.y_embedding")}
    assert len(original_params) == 435
    from converters.engine import build_plan
    from converters.sources import DictSource

    plan = build_plan(pixart_original().inverse(), DictSource(meta), None)
    assert not plan.problems
    assert {t.name: t.shape for t in plan.targets} == {k: tuple(v.shape) for k, v in original_params.items()}
