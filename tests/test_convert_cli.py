"""``pixart-ms convert`` / ``verify`` on good and bad input: exit codes, one-line errors, nothing written at the
target on failure, the options (dtype, format, ema, dry run, json), every supported source layout."""
from __future__ import annotations

import json
import os
import shutil

import mindspore as ms
import numpy as np
import pytest
import torch

from converters.sources import read_safetensors_header

from .helpers import assert_clean_failure, run_cli  # assert_clean_failure: also imported from here by others

WEIGHTS = "diffusion_pytorch_model.safetensors"


def load_ms(folder, name=WEIGHTS):
    fmt = "ckpt" if name.endswith(".ckpt") else "safetensors"
    return {k: v.asnumpy() if v.dtype != ms.bfloat16 else v.astype(ms.float32).asnumpy()
            for k, v in ms.load_checkpoint(str(folder / name), format=fmt).items()}


@pytest.fixture
def state_dict(pixart_pth):
    return torch.load(pixart_pth, weights_only=True)["state_dict"]


def save_pth(state, path):
    torch.save({"state_dict": state}, path)
    return path


def convert_pth(pth, out, cfg, *extra):
    return run_cli("convert", pth, "-o", out, "--config", cfg, *extra)


class Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_code_is_refused(tmp_path, pixart_diffusers_dir):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x_embedder.proj.weight": torch.zeros(1)}, "payload": Evil(marker)}, evil)
    out = tmp_path / "out"
    result = convert_pth(evil, out, pixart_diffusers_dir / "config.json")
    assert_clean_failure(result, out, "refused", "evil.pth")
    assert not marker.exists()


def test_truncated_files(tmp_path, pixart_pth, pixart_diffusers_dir):
    cut = tmp_path / "cut.pth"
    cut.write_bytes(pixart_pth.read_bytes()[: pixart_pth.stat().st_size // 2])
    out = tmp_path / "out"
    assert_clean_failure(convert_pth(cut, out, pixart_diffusers_dir / "config.json"), out, "cut.pth", "truncated")
    folder = tmp_path / "cut-diffusers"
    shutil.copytree(pixart_diffusers_dir, folder)
    weights = folder / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-1000])
    assert_clean_failure(run_cli("convert", folder, "-o", out), out, WEIGHTS)


def test_missing_key(tmp_path, state_dict, pixart_diffusers_dir):
    del state_dict["blocks.1.mlp.fc2.weight"]
    pth = save_pth(state_dict, tmp_path / "missing.pth")
    out = tmp_path / "out"
    assert_clean_failure(convert_pth(pth, out, pixart_diffusers_dir / "config.json"), out,
                         "missing from the source", "transformer_blocks.1.ff.net.2.weight")


def test_shape_mismatch(tmp_path, state_dict, pixart_diffusers_dir):
    state_dict["final_layer.linear.weight"] = torch.zeros(24, 16)
    pth = save_pth(state_dict, tmp_path / "shape.pth")
    out = tmp_path / "out"
    assert_clean_failure(convert_pth(pth, out, pixart_diffusers_dir / "config.json"), out,
                         "proj_out.weight: (24, 16) from final_layer.linear.weight, network expects (32, 16)")


def test_every_problem_is_listed_together(tmp_path, state_dict, pixart_diffusers_dir):
    del state_dict["t_block.1.bias"]
    state_dict["blocks.0.attn.qkv.weight"] = torch.zeros(47, 16)  # cannot split in 3
    state_dict["stray.weight"] = torch.zeros(2)
    pth = save_pth(state_dict, tmp_path / "many.pth")
    out = tmp_path / "out"
    result = convert_pth(pth, out, pixart_diffusers_dir / "config.json")
    assert_clean_failure(result, out, "no rule for 1 source tensor(s): stray.weight", "cannot be split in 3",
                         "adaln_single.linear.bias")


def test_unknown_layout(tmp_path):
    from safetensors.torch import save_file

    odd = tmp_path / "odd.safetensors"
    save_file({"encoder.layers.0.weight": torch.zeros(2)}, odd)
    out = tmp_path / "out"
    assert_clean_failure(run_cli("convert", odd, "-o", out), out, "unknown layout")
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    assert_clean_failure(run_cli("convert", empty, "-o", out), out, "unknown layout")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert_clean_failure(run_cli("convert", text, "-o", out), out, "unknown weights format")


def test_existing_output_is_left_alone(tmp_path, pixart_diffusers_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run_cli("convert", pixart_diffusers_dir, "-o", out)
    assert result.exit_code == 2 and "already exists" in result.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    # --overwrite replaces only a folder pixart-ms wrote: a user's folder stays as it is
    result = run_cli("convert", pixart_diffusers_dir, "-o", out, "--overwrite")
    assert result.exit_code == 2 and "not a folder pixart-ms wrote" in result.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    ours = tmp_path / "ours"
    assert run_cli("convert", pixart_diffusers_dir, "-o", ours).exit_code == 0
    (ours / "stale.txt").write_text("replaced with the folder")
    assert run_cli("convert", pixart_diffusers_dir, "-o", ours, "--overwrite").exit_code == 0
    assert (ours / WEIGHTS).is_file() and not (ours / "stale.txt").exists()
    assert run_cli("convert", pixart_diffusers_dir, "-o", pixart_diffusers_dir, "--overwrite").exit_code == 2


def test_a_converted_pipeline_is_replaced_and_a_users_is_not(tmp_path, tiny_pipeline):
    """A pipeline folder pixart-ms converted has no manifest of its own (its components do): ``--overwrite`` replaces
    it (``pixart-ms demo`` run twice); a user's diffusers pipeline, or ours with a file of the user's beside its
    components, stays as it is."""
    src, _, _ = tiny_pipeline
    out = tmp_path / "pipeline"
    assert run_cli("convert", src, "-o", out).exit_code == 0
    (out / "vae" / "stale.txt").write_text("replaced with the folder")
    result = run_cli("convert", src, "-o", out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert (out / "vae" / "manifest.json").is_file() and not (out / "vae" / "stale.txt").exists()
    users = tmp_path / "users-pipeline"
    shutil.copytree(src, users)
    before = sorted(p.relative_to(users) for p in users.rglob("*"))
    result = run_cli("convert", src, "-o", users, "--overwrite")
    assert result.exit_code == 2 and "not a folder pixart-ms wrote" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert sorted(p.relative_to(users) for p in users.rglob("*")) == before
    (out / "notes.txt").write_text("mine")
    result = run_cli("convert", src, "-o", out, "--overwrite")
    assert result.exit_code == 2 and "not a folder pixart-ms wrote" in result.stderr
    assert (out / "notes.txt").read_text() == "mine" and (out / "vae" / "manifest.json").is_file()


def test_nan_and_fp16_overflow_are_named(tmp_path, state_dict, pixart_diffusers_dir):
    state_dict["blocks.0.mlp.fc1.bias"][3] = float("nan")
    state_dict["t_block.1.weight"][0, 0] = 1e6
    pth = save_pth(state_dict, tmp_path / "values.pth")
    out = tmp_path / "out"
    result = convert_pth(pth, out, pixart_diffusers_dir / "config.json", "--dtype", "fp16")
    assert_clean_failure(result, out, "blocks.0.mlp.fc1.bias: 1 NaN/Inf", "adaln_single.linear.weight",
                         "overflows fp16")
    result = convert_pth(pth, out, pixart_diffusers_dir / "config.json")  # fp32 keeps 1e6, still refuses NaN
    assert_clean_failure(result, out, "blocks.0.mlp.fc1.bias")


@pytest.mark.parametrize("dtype,expected", [("fp16", "F16"), ("bf16", "BF16"), ("keep", "F32")])
def test_dtype_policy(tmp_path, pixart_diffusers_dir, dtype, expected):
    out = tmp_path / "out"
    assert run_cli("convert", pixart_diffusers_dir, "-o", out, "--dtype", dtype).exit_code == 0
    header, _ = read_safetensors_header(out / WEIGHTS)
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {expected}
    from mindspore_nets import PixArtTransformer2D

    net = PixArtTransformer2D.from_pretrained(out)
    # bf16 is storage only on CPU: it computes in fp32
    assert net.proj_out.weight.dtype == {"F16": ms.float16, "BF16": ms.float32, "F32": ms.float32}[expected]


def test_ckpt_format_equals_safetensors(tmp_path, converted_pixart, pixart_diffusers_dir):
    out = tmp_path / "out"
    assert run_cli("convert", pixart_diffusers_dir, "-o", out, "--format", "ckpt").exit_code == 0
    a, b = load_ms(out, "diffusion_pytorch_model.ckpt"), load_ms(converted_pixart["diffusers"])
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert run_cli("verify", out).exit_code == 0


def test_sharded_safetensors_and_bin_layouts(tmp_path, pixart_model, converted_pixart):
    expected = load_ms(converted_pixart["diffusers"])
    sharded = tmp_path / "sharded"
    pixart_model.save_pretrained(sharded, max_shard_size="20KB")
    assert (sharded / "diffusion_pytorch_model.safetensors.index.json").is_file()
    binary = tmp_path / "bin"
    pixart_model.save_pretrained(binary, safe_serialization=False)
    assert (binary / "diffusion_pytorch_model.bin").is_file()
    for src in (sharded, binary):
        out = tmp_path / f"out-{src.name}"
        result = run_cli("convert", src, "-o", out)
        assert result.exit_code == 0, result.output
        got = load_ms(out)
        assert got.keys() == expected.keys() and all(np.array_equal(got[k], expected[k]) for k in got)


def test_shard_index_disagreeing_with_shards(tmp_path, pixart_model):
    sharded = tmp_path / "sharded"
    pixart_model.save_pretrained(sharded, max_shard_size="20KB")
    index = sharded / "diffusion_pytorch_model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"]["proj_out.weight"] = sorted(set(data["weight_map"].values()))[0]
    data["weight_map"]["ghost.weight"] = sorted(set(data["weight_map"].values()))[0]
    index.write_text(json.dumps(data))
    out = tmp_path / "out"
    assert_clean_failure(run_cli("convert", sharded, "-o", out), out, "index and shards disagree")


def test_ema_and_y_embedding_options(tmp_path, state_dict, pixart_diffusers_dir):
    ema = {k: v + 1.0 for k, v in state_dict.items()}
    pth = tmp_path / "train.pth"
    torch.save({"state_dict": state_dict, "state_dict_ema": ema, "epoch": 3}, pth)
    cfg = pixart_diffusers_dir / "config.json"
    plain, with_ema = tmp_path / "plain", tmp_path / "ema"
    assert convert_pth(pth, plain, cfg).exit_code == 0
    assert convert_pth(pth, with_ema, cfg, "--ema", "--drop-y-embedding").exit_code == 0
    a, b = load_ms(plain), load_ms(with_ema)
    assert np.allclose(b["proj_out.bias"], a["proj_out.bias"] + 1.0)
    assert "caption_projection.y_embedding" in a and "caption_projection.y_embedding" not in b
    manifest = json.loads((with_ema / "manifest.json").read_text())
    assert {"key": "y_embedder.y_embedding", "reason": "caption-dropout embedding dropped by --drop-y-embedding"} \
        in manifest["dropped"]
    no_ema = tmp_path / "no-ema.pth"
    save_pth(state_dict, no_ema)
    out = tmp_path / "out"
    assert_clean_failure(convert_pth(no_ema, out, cfg, "--ema"), out, "no 'state_dict_ema'")


def test_sample_size_from_pos_embed(tmp_path, state_dict, pixart_diffusers_dir, workdir):
    """Without --config the architecture comes from the shapes and the sample size from the pos_embed buffer;
    a tiny model's head count cannot be read from shapes, so give it one through a minimal config."""
    cfg = tmp_path / "heads.json"
    cfg.write_text(json.dumps({"num_attention_heads": 2, "attention_head_dim": 8, "num_layers": 2,
                               "caption_channels": 24, "cross_attention_dim": 16}))
    pth = save_pth(state_dict, tmp_path / "any.pth")
    out = tmp_path / "out"
    result = run_cli("convert", pth, "-o", out, "--config", cfg, "--json")
    assert result.exit_code == 0, result.output
    written = json.loads((out / "config.json").read_text())
    assert written["sample_size"] == 8 and written["interpolation_scale"] == 8 / 64
    assert written["use_additional_conditions"] is False
    summary = json.loads(result.stdout)
    assert any("pos_embed buffer" in n for n in summary["components"][0]["notes"])
    del state_dict["pos_embed"]
    save_pth(state_dict, tmp_path / "nopos.pth")
    out2 = tmp_path / "out2"
    assert_clean_failure(run_cli("convert", tmp_path / "nopos.pth", "-o", out2, "--config", cfg), out2,
                         "--sample-size")
    assert run_cli("convert", tmp_path / "nopos.pth", "-o", out2, "--config", cfg, "--sample-size", "32").exit_code == 0
    assert json.loads((out2 / "config.json").read_text())["interpolation_scale"] == 0.5


def test_full_size_architecture_from_shapes(tmp_path):
    """An XL/2 .pth needs no --config: 28 layers, 16 heads of 72, sample size from pos_embed (dry run; the
    tensors are tiny stand-ins only in their count, not in their shapes — built on the meta device then saved
    as real zeros would be 2.4 GB, so the plan is checked from a source of empty tensors)."""
    from converters.configs import resolve_config
    from converters.detect import Job
    from converters.sources import DictSource

    from .original_pixart import XL2, OriginalPixArtMS

    with torch.device("meta"):
        state = OriginalPixArtMS(**XL2).state_dict()
    state["pos_embed"] = torch.empty(1, 4096, 1152, device="meta")
    job = Job(tmp_path / "xl.pth", "pixart_original", DictSource(state), None)
    config, written, notes = resolve_config(job)
    assert (config.num_layers, config.num_attention_heads, config.sample_size, config.interpolation_scale) == \
        (28, 16, 128, 2.0)
    assert config.caption_channels == 4096 and config.output_channels == 8


def test_dry_run_and_json(tmp_path, pixart_diffusers_dir):
    out = tmp_path / "out"
    result = run_cli("convert", pixart_diffusers_dir, "-o", out, "--dry-run")
    assert result.exit_code == 0 and "nothing written" in result.stdout
    assert "transformer_blocks.1.attn1.to_q.weight <- transformer_blocks.1.attn1.to_q.weight" in result.stdout
    assert not out.exists()
    result = run_cli("convert", pixart_diffusers_dir, "-o", out, "--json")
    summary = json.loads(result.stdout)
    comp = summary["components"][0]
    assert comp["tensors"] == 57 and comp["layout"] == "pixart_diffusers" and comp["dtypes"] == ["float32"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["tensors"]) == 57 and manifest["versions"]["mindspore"] == ms.__version__
    row = next(r for r in manifest["tensors"] if r["name"] == "proj_out.weight")
    assert row["shape"] == [32, 16] and row["dtype"] == "float32" and len(row["sha256"]) == 64


def test_progress_bar_on_stderr(tmp_path, pixart_diffusers_dir):
    result = run_cli("convert", pixart_diffusers_dir, "-o", tmp_path / "out")
    assert result.exit_code == 0 and "transformer" in result.stderr and "100%" in result.stderr


def test_verify_catches_changed_bytes(tmp_path, pixart_diffusers_dir):
    out = tmp_path / "out"
    assert run_cli("convert", pixart_diffusers_dir, "-o", out).exit_code == 0
    assert run_cli("verify", out).exit_code == 0
    header, start = read_safetensors_header(out / WEIGHTS)
    begin = header["proj_out.bias"]["data_offsets"][0]
    raw = bytearray((out / WEIGHTS).read_bytes())
    raw[start + begin] ^= 0xFF
    (out / WEIGHTS).write_bytes(bytes(raw))
    result = run_cli("verify", out)
    assert result.exit_code == 1
    assert "proj_out.bias differs from the manifest" in result.stdout
    (out / "manifest.json").unlink()
    assert run_cli("verify", out).exit_code == 2
