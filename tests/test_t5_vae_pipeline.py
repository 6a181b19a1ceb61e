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
from parity.cases import ms_forward
from pixart_demo.tiny import TINY_T5, TINY_VAE, tiny_t5

from .helpers import assert_clean_failure, run_cli
from .network_runner import T5_XXL, check_against_torch, t5_inputs, vae_inputs


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
    check_against_torch("text_encoder", net, t5_model, t5_inputs(TINY_T5["vocab_size"]))  # rel L2 <= 1e-5


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
    arrays = t5_inputs(TINY_T5["vocab_size"])
    with torch.no_grad():  # the feed-forward output of block 0 in fp32 exceeds fp16's range
        h = model.encoder.block[0].layer[0](model.shared(torch.from_numpy(arrays["input_ids"]).long()))[0]
        assert model.encoder.block[0].layer[1].DenseReluDense(
            model.encoder.block[0].layer[1].layer_norm(h)).abs().max() > 65504
    model.save_pretrained(tmp_path / "src")
    convert_ok(tmp_path / "src", "-o", tmp_path / "out", "--dtype", "fp16")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    dtypes = {row["name"]: row["dtype"] for row in manifest["tensors"]}
    assert dtypes["encoder.block.0.layer.1.DenseReluDense.wo.weight"] == "float32"
    assert dtypes["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"] == "float16"
    net = T5Encoder.from_pretrained(tmp_path / "out", dtype="fp16")
    check_against_torch("text_encoder", net, model, arrays, "fp16")  # finite, rel L2 <= 5e-3


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
    arrays = t5_inputs(TINY_T5["vocab_size"])
    with torch.no_grad():
        ref = full.encoder(**{k: torch.from_numpy(v).long() for k, v in arrays.items()}).last_hidden_state.numpy()
    assert rel_l2(ms_forward("text_encoder", net, arrays), ref) <= 1e-5


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
    arrays = vae_inputs(TINY_VAE)
    for view in ("vae_encoder", "vae_decoder"):
        check_against_torch(view, net, vae_model, arrays)  # rel L2 <= 1e-5
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
    check_against_torch("text_encoder", t5, models["text_encoder"], t5_inputs(TINY_T5["vocab_size"]))  # <= 1e-5
    check_against_torch("vae_decoder", vae, models["vae"], vae_inputs(TINY_VAE))
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

    with torch.device("meta"):
        state = T5EncoderModel(HFConfig(**T5_XXL)).state_dict()
    state = dict(state)
    state["encoder.embed_tokens.weight"] = torch.empty(32128, 4096, device="meta")
    table = {k: s for k, (s, _) in parameter_table(T5Encoder, T5Config(**T5_XXL)).items()}
    plan = build_plan(t5_transformers(), DictSource(state), table)
    assert not plan.problems
    assert len(plan.targets) == 219
    assert sum(int(np.prod(t.shape)) for t in plan.targets) == 4_762_310_656
    assert [k for k, _ in plan.dropped] == ["encoder.embed_tokens.weight"]
