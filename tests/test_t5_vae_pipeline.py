"""T5 encoder and VAE converted through the CLI from every transformers / diffusers layout, compared with the
torch references; the tied embedding, the decoder of a full T5 and the old VAE attention names; a whole tiny
pipeline in one command."""
from __future__ import annotations

import json
import shutil

import mindspore as ms
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from converters.engine import build_plan
from converters.keymaps.t5 import t5_transformers
from converters.sources import DictSource
from mindspore_nets import AutoencoderKL, PixArtTransformer2D, T5Encoder
from mindspore_nets.config import T5Config
from mindspore_nets.loading import parameter_table
from mindspore_nets.metrics import rel_l2
from .forwards import (ms_t5_output, ms_vae_outputs, t5_inputs, torch_t5_output, torch_vae_outputs,
                       vae_inputs)
from pixart_demo.tiny import TINY_T5, TINY_VAE, tiny_t5, tiny_vae

from .conftest import run_cli
from .test_convert_cli import assert_clean_failure


@pytest.fixture(scope="session")
def t5_model():
    return tiny_t5(seed=0)


@pytest.fixture(scope="session")
def vae_model():
    return tiny_vae(seed=0)


def convert_ok(*args):
    result = run_cli("convert", *args)
    assert result.exit_code == 0, result.output
    return result


def save_t5_bin(model, folder, shards: int):
    """transformers 5 writes only safetensors; the older pytorch_model.bin layouts are written by hand."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(model.config.to_dict()))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if shards == 1:
        torch.save(state, folder / "pytorch_model.bin")
        return
    keys = sorted(state)
    weight_map = {}
    for i in range(shards):
        name = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = keys[i::shards]
        torch.save({k: state[k] for k in part}, folder / name)
        weight_map.update({k: name for k in part})
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.mark.parametrize("layout", ["single", "sharded", "bin", "sharded-bin"])
def test_t5_layouts_fp32(layout, t5_model, tmp_path, ms_mode):
    src = tmp_path / "src"
    if "bin" in layout:
        save_t5_bin(t5_model, src, shards=2 if "sharded" in layout else 1)
    else:
        t5_model.save_pretrained(src, max_shard_size="20KB" if "sharded" in layout else "10GB")
    expected = {"single": "model.safetensors", "sharded": "model.safetensors.index.json",
                "bin": "pytorch_model.bin", "sharded-bin": "pytorch_model.bin.index.json"}[layout]
    assert (src / expected).is_file()
    convert_ok(src, "-o", tmp_path / "out")
    net = T5Encoder.from_pretrained(tmp_path / "out")
    ids, mask = t5_inputs(TINY_T5["vocab_size"])
    err = rel_l2(ms_t5_output(net, ids, mask), torch_t5_output(t5_model, ids, mask))
    assert err <= 1e-5, (layout, ms_mode, err)


def test_t5_fp16_with_overflowing_wo(tmp_path):
    """fp16 MindSpore against fp32 torch, with feed-forward weights scaled so that a naive fp16 ``wo`` product
    overflows; ``--dtype fp16`` keeps ``wo`` in fp32 as transformers does."""
    model = tiny_t5(seed=4)
    with torch.no_grad():
        for block in model.encoder.block:
            ff = block.layer[1].DenseReluDense
            ff.wi_0.weight.mul_(4.0)
            ff.wi_1.weight.mul_(4.0)
            ff.wo.weight.mul_(6000.0)
    ids, mask = t5_inputs(TINY_T5["vocab_size"])
    with torch.no_grad():  # the feed-forward output of block 0 in fp32 exceeds fp16's range
        h = model.encoder.block[0].layer[0](model.shared(torch.from_numpy(ids).long()))[0]
        assert model.encoder.block[0].layer[1].DenseReluDense(
            model.encoder.block[0].layer[1].layer_norm(h)).abs().max() > 65504
    model.save_pretrained(tmp_path / "src")
    convert_ok(tmp_path / "src", "-o", tmp_path / "out", "--dtype", "fp16")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    dtypes = {row["name"]: row["dtype"] for row in manifest["tensors"]}
    assert dtypes["encoder.block.0.layer.1.DenseReluDense.wo.weight"] == "float32"
    assert dtypes["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"] == "float16"
    net = T5Encoder.from_pretrained(tmp_path / "out", dtype="fp16")
    out = ms_t5_output(net, ids, mask)
    assert np.isfinite(out).all()
    assert rel_l2(out, torch_t5_output(model, ids, mask)) <= 5e-3


def _t5_state(t5_model):
    return {k: v.detach().clone().contiguous() for k, v in t5_model.state_dict().items()}


def _save_t5(state, folder, config):
    folder.mkdir()
    save_file(state, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_t5_tied_embedding(t5_model, tmp_path):
    config = t5_model.config.to_dict()
    state = _t5_state(t5_model)
    state["encoder.embed_tokens.weight"] = state["shared.weight"].clone()
    convert_ok(_save_t5(state, tmp_path / "both", config), "-o", tmp_path / "out-both")
    manifest = json.loads((tmp_path / "out-both" / "manifest.json").read_text())
    assert any(d["key"] == "encoder.embed_tokens.weight" for d in manifest["dropped"])
    only = {("encoder.embed_tokens.weight" if k == "shared.weight" else k): v for k, v in state.items()
            if k != "encoder.embed_tokens.weight"}
    convert_ok(_save_t5(only, tmp_path / "only", config), "-o", tmp_path / "out-only")
    a = ms.load_checkpoint(str(tmp_path / "out-both" / "model.safetensors"), format="safetensors")
    b = ms.load_checkpoint(str(tmp_path / "out-only" / "model.safetensors"), format="safetensors")
    assert np.array_equal(a["shared.weight"].asnumpy(), b["shared.weight"].asnumpy())
    state["encoder.embed_tokens.weight"][5, 3] += 1.0  # untied: dropping it would lose data
    out = tmp_path / "out-untied"
    assert_clean_failure(run_cli("convert", _save_t5(state, tmp_path / "untied", config), "-o", out), out,
                         "not a tied copy of shared.weight")


def test_full_t5_converts_its_encoder(tmp_path):
    from transformers import T5Config as HFConfig
    from transformers import T5ForConditionalGeneration

    torch.manual_seed(0)
    full = T5ForConditionalGeneration(HFConfig(**{**TINY_T5, "is_encoder_decoder": True, "num_decoder_layers": 1}))
    full.save_pretrained(tmp_path / "full")
    result = convert_ok(tmp_path / "full", "-o", tmp_path / "out", "--json")
    dropped = json.loads(result.stdout)["components"][0]["dropped"]
    assert any(d["key"].startswith("decoder.block.0.") and "encoder only" in d["reason"] for d in dropped)
    net = T5Encoder.from_pretrained(tmp_path / "out")
    ids, mask = t5_inputs(TINY_T5["vocab_size"])
    with torch.no_grad():
        ref = full.encoder(input_ids=torch.from_numpy(ids).long(),
                           attention_mask=torch.from_numpy(mask).long()).last_hidden_state.numpy()
    assert rel_l2(ms_t5_output(net, ids, mask), ref) <= 1e-5


OLD_NAMES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


@pytest.mark.parametrize("naming", ["current", "old"])
def test_vae_both_naming_generations(naming, vae_model, tmp_path, ms_mode):
    src = tmp_path / "src"
    vae_model.save_pretrained(src)
    if naming == "old":
        weights = src / "diffusion_pytorch_model.safetensors"
        state = load_file(weights)
        renamed = {}
        for key, value in state.items():
            for new, old in OLD_NAMES.items():
                key = key.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
            renamed[key] = value
        assert "decoder.mid_block.attentions.0.proj_attn.weight" in renamed
        save_file(renamed, weights)
    convert_ok(src, "-o", tmp_path / "out")
    net = AutoencoderKL.from_pretrained(tmp_path / "out")
    image, latent = vae_inputs(TINY_VAE)
    ours, ref = ms_vae_outputs(net, image, latent), torch_vae_outputs(vae_model, image, latent)
    assert rel_l2(ours[0], ref[0]) <= 1e-5 and rel_l2(ours[1], ref[1]) <= 1e-5
    assert net.scaling_factor == TINY_VAE["scaling_factor"]


def test_pipeline_in_one_command(tiny_pipeline):
    src, out, models = tiny_pipeline
    assert json.loads((out / "model_index.json").read_text()) == json.loads((src / "model_index.json").read_text())
    for name in ("tokenizer", "scheduler"):
        for f in (src / name).iterdir():
            assert (out / name / f.name).read_bytes() == f.read_bytes()
    for name in ("transformer", "text_encoder", "vae"):
        assert (out / name / "manifest.json").is_file()
    transformer = PixArtTransformer2D.from_pretrained(out / "transformer")
    t5 = T5Encoder.from_pretrained(out / "text_encoder")
    vae = AutoencoderKL.from_pretrained(out / "vae")
    ids, mask = t5_inputs(TINY_T5["vocab_size"])
    assert rel_l2(ms_t5_output(t5, ids, mask), torch_t5_output(models["text_encoder"], ids, mask)) <= 1e-5
    image, latent = vae_inputs(TINY_VAE)
    assert rel_l2(ms_vae_outputs(vae, image, latent)[1], torch_vae_outputs(models["vae"], image, latent)[1]) <= 1e-5
    assert transformer.config.caption_channels == t5.config.d_model
    result = run_cli("verify", out)
    assert result.exit_code == 0 and result.stdout.count(": ok") == 3


def test_pipeline_problems_reported_together(tiny_pipeline, tmp_path):
    src, _, _ = tiny_pipeline
    broken = tmp_path / "broken"
    shutil.copytree(src, broken)
    weights = broken / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    del state["decoder.conv_out.bias"]
    save_file(state, weights)
    cfg = json.loads((broken / "transformer" / "config.json").read_text())
    cfg["num_layers"] = 3
    (broken / "transformer" / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    result = run_cli("convert", broken, "-o", out)
    assert_clean_failure(result, out, "decoder.conv_out.bias", "transformer_blocks.2")


def test_full_size_t5_xxl_plan_from_shapes():
    """The public T5-v1.1-XXL encoder checkpoint (both embedding names) plans cleanly onto our network:
    219 tensors, 4,762,310,656 values."""
    from transformers import T5Config as HFConfig
    from transformers import T5EncoderModel

    cfg = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
               relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu")
    with torch.device("meta"):
        state = T5EncoderModel(HFConfig(**cfg)).state_dict()
    state = dict(state)
    state["encoder.embed_tokens.weight"] = torch.empty(32128, 4096, device="meta")
    table = {k: s for k, (s, _) in parameter_table(T5Encoder, T5Config(**cfg)).items()}
    plan = build_plan(t5_transformers(), DictSource(state), table)
    assert not plan.problems
    assert len(plan.targets) == 219
    assert sum(int(np.prod(t.shape)) for t in plan.targets) == 4_762_310_656
    assert [k for k, _ in plan.dropped] == ["encoder.embed_tokens.weight"]
