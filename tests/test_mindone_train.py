"""Checkpoints as mindone's PixArt-Sigma training writes them (``mindspore.save_checkpoint``; the names of
``examples/pixart_sigma`` at zhtmike/mindone 1e0c5b3c and of mindone's trainers), converted to diffusers, to the
original ``.pth`` and to our MindSpore folders: the diffusers model computes what our MindSpore network computes
on the same checkpoint (fp32 relative L2 <= 1e-5), the original ``PixArtMS`` loads the ``.pth`` strictly and
computes it too; optimizer, step, loss-scale, EMA and frozen VAE / T5 entries are dropped by named rules and
listed; anything unknown, or mindone's KV compression, stops the plan."""
from __future__ import annotations

import json

import mindspore as ms
import numpy as np
import pytest
import torch

from converters.references import torch_forward
from mindspore_nets import PixArtTransformer2D
from mindspore_nets.metrics import rel_l2
from parity.cases import ms_forward

from .helpers import assert_clean_failure, run_cli
from .network_runner import transformer_cases
from .original_pixart import OriginalPixArtMS

Y = "y_embedder.y_embedding"


def save_ms(path, named: dict, append_dict=None):
    ms.save_checkpoint([ms.Parameter(ms.Tensor(v), name=k) for k, v in named.items()], str(path),
                       append_dict=append_dict)
    return path


@pytest.fixture(scope="module")
def mindone(pixart_pth, tiny_pipeline, workdir):
    """The files of one tiny mindone run, in the original names: the resume checkpoint of the whole training
    network (transformer, frozen y_embedding, fp16 VAE and T5 unprefixed, EMA copies, AdamW moments, step and
    loss-scale state), the trainable-parameters-only epoch checkpoint, and a pre-merge EMA file."""
    state = torch.load(pixart_pth, weights_only=True)["state_dict"]
    rng = np.random.default_rng(11)
    trained = {k: (v.numpy() + 0.02 * rng.standard_normal(v.shape)).astype(np.float32)
               for k, v in state.items() if k not in ("pos_embed", Y)}  # "fine-tuned"
    ema = {k: v.numpy().copy() for k, v in state.items() if k not in ("pos_embed", Y)}
    y = state[Y].numpy()
    _, ms_out, _ = tiny_pipeline
    frozen = {}
    for name in ("vae", "text_encoder"):
        for k, v in ms.load_checkpoint(str(next((ms_out / name).glob("*.safetensors"))), format="safetensors").items():
            frozen[k] = v.asnumpy().astype(np.float16)
    resume = {**trained, Y: y, **frozen,
              **{f"ema.{k}": v for k, v in ema.items()},
              **{f"adam_m.{k}": np.zeros_like(v) for k, v in trained.items()},
              **{f"adam_v.{k}": np.full_like(v, 1e-4) for k, v in trained.items()},
              "global_step": np.array([10], np.int32), "beta1_power": np.array(0.9 ** 10, np.float32),
              "beta2_power": np.array(0.999 ** 10, np.float32), "scale_sense": np.array(65536.0, np.float32)}
    folder = workdir / "mindone-run"
    folder.mkdir()
    return {
        "trained": trained, "ema": ema, "y": y,
        "resume": save_ms(folder / "train_resume.ckpt", resume,
                          append_dict={"epoch_num": 2, "cur_step": 10, "loss_scale": 65536.0}),
        "epoch": save_ms(folder / "epoch_2.ckpt", trained),
        "ema_file": save_ms(folder / "epoch_2_ema.ckpt", {**ema, Y: y}),
    }


def convert(src, out, cfg, *extra):
    result = run_cli("convert", src, "-o", out, "--config", cfg, *extra)
    assert result.exit_code == 0, result.output
    return result


def test_resume_checkpoint_to_diffusers_computes_what_mindspore_does(mindone, pixart_diffusers_dir, workdir):
    from diffusers import PixArtTransformer2DModel

    cfg = pixart_diffusers_dir / "config.json"
    ms_folder, diffusers_folder = workdir / "mindone-ms", workdir / "mindone-diffusers"
    convert(mindone["resume"], ms_folder, cfg)
    result = convert(mindone["resume"], diffusers_folder, cfg, "--to", "diffusers", "--json")
    summary = json.loads(result.stdout)["components"][0]
    assert summary["layout"] == "pixart_mindone_train" and summary["written_layout"] == "pixart_diffusers"
    reasons = {d["key"]: d["reason"] for d in summary["dropped"]}
    assert "optimizer state" in reasons["adam_m.blocks.1.mlp.fc2.weight"]
    assert "optimizer state" in reasons["adam_v.t_block.1.bias"]
    assert "EMA copy" in reasons["ema.blocks.0.attn.qkv.weight"]
    assert "frozen VAE" in reasons["encoder.conv_in.weight"] and "frozen VAE" in reasons["decoder.conv_out.weight"]
    assert "frozen T5" in reasons["shared.weight"] and "frozen T5" in reasons["encoder.final_layer_norm.weight"]
    assert "frozen T5" in reasons["encoder.block.1.layer.1.DenseReluDense.wo.weight"]
    for key in ("global_step", "beta1_power", "scale_sense", "epoch_num", "cur_step", "loss_scale"):
        assert key in reasons, key
    assert "caption_projection.y_embedding" in reasons  # diffusers has no place for the extra
    model, info = PixArtTransformer2DModel.from_pretrained(diffusers_folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    # the values are the trained ones, split as the key map says
    qkv = mindone["trained"]["blocks.1.attn.qkv.weight"]
    assert np.array_equal(model.transformer_blocks[1].attn1.to_k.weight.detach().numpy(), qkv[16:32])
    net = PixArtTransformer2D.from_pretrained(ms_folder)
    for name, arrays in transformer_cases():
        err = rel_l2(torch_forward("transformer", model.eval(), arrays), ms_forward("transformer", net, arrays))
        assert err <= 1e-5, (name, err)


def test_resume_checkpoint_to_original(mindone, pixart_diffusers_dir, workdir):
    cfg = pixart_diffusers_dir / "config.json"
    out = workdir / "mindone-original"
    convert(mindone["resume"], out, cfg, "--to", "original")
    state = torch.load(out / "PixArt-Sigma.pth", weights_only=True, mmap=True)["state_dict"]
    for key, value in mindone["trained"].items():
        assert np.array_equal(state[key].numpy(), value), key
    assert np.array_equal(state[Y].numpy(), mindone["y"])
    ref = OriginalPixArtMS().eval()
    missing, unexpected = ref.load_state_dict(state, strict=True)
    assert not missing and not unexpected
    net = PixArtTransformer2D.from_pretrained(workdir / "mindone-ms")
    for name, arrays in transformer_cases():
        with torch.no_grad():
            expected = ref(*(torch.from_numpy(arrays[k]) for k in ("hidden_states", "timestep",
                                                                  "encoder_hidden_states", "encoder_attention_mask")))
        assert rel_l2(ms_forward("transformer", net, arrays), expected.numpy()) <= 1e-5, name


def test_ema_copies(mindone, pixart_diffusers_dir, workdir):
    cfg = pixart_diffusers_dir / "config.json"
    out = workdir / "mindone-ema"
    result = convert(mindone["resume"], out, cfg, "--ema", "--to", "original", "--json")
    reasons = {d["key"]: d["reason"] for d in json.loads(result.stdout)["components"][0]["dropped"]}
    assert "non-EMA" in reasons["blocks.0.attn.qkv.weight"]
    state = torch.load(out / "PixArt-Sigma.pth", weights_only=True)["state_dict"]
    for key, value in mindone["ema"].items():
        assert np.array_equal(state[key].numpy(), value), key
    # a pre-merge EMA file holds the plain names: it converts without --ema, and --ema finds nothing in it
    plain = workdir / "mindone-ema-file"
    convert(mindone["ema_file"], plain, cfg, "--to", "original")
    again = torch.load(plain / "PixArt-Sigma.pth", weights_only=True)["state_dict"]
    assert all(torch.equal(again[k], state[k]) for k in state)
    bad = workdir / "mindone-ema-bad"
    assert_clean_failure(run_cli("convert", mindone["ema_file"], "-o", bad, "--config", cfg, "--ema"), bad,
                         "no ema.* entries")


def test_trainable_parameters_only(mindone, pixart_diffusers_dir, workdir, tmp_path):
    """The epoch checkpoint lacks the frozen y_embedding: diffusers needs none; the original layout does."""
    cfg = pixart_diffusers_dir / "config.json"
    convert(mindone["epoch"], workdir / "mindone-epoch-diffusers", cfg, "--to", "diffusers")
    out = tmp_path / "out"
    assert_clean_failure(run_cli("convert", mindone["epoch"], "-o", out, "--config", cfg, "--to", "original"), out,
                         "needs y_embedder.y_embedding", "trainable parameters only")


def test_y_embedding_from_the_starting_checkpoint(mindone, pixart_pth, converted_pixart, pixart_diffusers_dir,
                                                 workdir, tmp_path):
    """mindone saves no frozen y_embedding; --y-embedding-from takes it from the checkpoint training started from
    (an original .pth, or our MindSpore folder of it), recorded in the manifest."""
    cfg = pixart_diffusers_dir / "config.json"
    for name, donor in (("pth", pixart_pth), ("ms", converted_pixart["pth"])):
        out = workdir / f"mindone-epoch-original-{name}"
        convert(mindone["epoch"], out, cfg, "--to", "original", "--y-embedding-from", donor)
        state = torch.load(out / "PixArt-Sigma.pth", weights_only=True)["state_dict"]
        assert np.array_equal(state[Y].numpy(), mindone["y"])
        assert np.array_equal(state["blocks.0.attn.qkv.weight"].numpy(), mindone["trained"]["blocks.0.attn.qkv.weight"])
        OriginalPixArtMS().load_state_dict(state, strict=True)
        manifest = json.loads((out / "manifest.json").read_text())
        assert any("taken from" in note for note in manifest["notes"])
        assert len(manifest["source"]["files"]) == 2
    out = tmp_path / "out"
    assert_clean_failure(run_cli("convert", mindone["epoch"], "-o", out, "--config", cfg, "--to", "original",
                                 "--y-embedding-from", pixart_diffusers_dir), out, "no caption-dropout embedding")
    assert_clean_failure(run_cli("convert", mindone["resume"], "-o", out, "--config", cfg, "--to", "original",
                                 "--y-embedding-from", pixart_pth), out, "has its own y_embedder.y_embedding")


def test_unknown_entry_stops_the_plan(mindone, pixart_diffusers_dir, tmp_path):
    named = {**mindone["trained"], "lora_down.blocks.0.weight": np.ones((4, 16), np.float32)}
    path = save_ms(tmp_path / "odd.ckpt", named)
    out = tmp_path / "out"
    assert_clean_failure(run_cli("convert", path, "-o", out, "--config", pixart_diffusers_dir / "config.json",
                                 "--to", "diffusers"), out, "no rule for 1 source tensor(s): lora_down.blocks.0.weight")


def test_kv_compression_is_refused(mindone, pixart_diffusers_dir, tmp_path):
    """mindone's sr conv has no bias and its norm no weights: nothing is invented, the plan stops."""
    named = {**mindone["trained"], "blocks.1.attn.sr.weight": np.full((16, 1, 2, 2), 0.25, np.float32)}
    path = save_ms(tmp_path / "kv.ckpt", named)
    out = tmp_path / "out"
    assert_clean_failure(run_cli("convert", path, "-o", out, "--config", pixart_diffusers_dir / "config.json"), out,
                         "blocks.1.attn.sr.weight: mindone's KV compression")
