"""torch -> MindSpore -> torch through the CLI (``convert``, then ``convert --to diffusers|original``): every tensor
comes back bit-exact, for the pipeline and for each source layout and weights format; the diffusers / transformers
classes load what ``--to diffusers`` writes with no missing or unexpected key, the original ``PixArtMS`` loads
what ``--to original`` writes with ``strict=True``; a ``--to`` that does not fit the source, and a shape that does
not fit the config, stop with exit 2 and leave nothing behind."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open

from converters.keymaps.pixart import original_pos_embed
from converters.sources import read_safetensors_header
from pixart_core.components import PIPELINE_COPIED

from .helpers import assert_clean_failure, run_cli
from .original_pixart import OriginalPixArtMS

COMPONENTS = ("transformer", "text_encoder", "vae")
ORIGINAL = "PixArt-Sigma.pth"


def torch_tensors(folder) -> dict:
    """Every tensor of a torch-side folder's safetensors files (sharded or not), as numpy."""
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


def assert_bit_exact(expected: dict, got: dict, where: str):
    for name, value in expected.items():
        assert name in got, (where, name)
        assert got[name].dtype == value.dtype and got[name].shape == value.shape, (where, name)
        assert torch.equal(got[name].reshape(-1).view(torch.uint8), value.reshape(-1).view(torch.uint8)), (where, name)


def convert_back(src, out, to, *extra):
    result = run_cli("convert", src, "-o", out, "--to", to, *extra)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def pipeline_back(tiny_pipeline, workdir):
    _, ms_out, _ = tiny_pipeline
    back = workdir / "pipeline-back"
    convert_back(ms_out, back, "diffusers")
    return back


def test_pipeline_round_trip_is_bit_exact(tiny_pipeline, pipeline_back):
    src, _, _ = tiny_pipeline
    for name in COMPONENTS:
        source, back = torch_tensors(src / name), torch_tensors(pipeline_back / name)
        assert_bit_exact(source, back, name)
        extra = set(back) - set(source)
        if name == "text_encoder":  # transformers' layout carries the tied embedding under both names
            assert extra <= {"encoder.embed_tokens.weight"}
            assert torch.equal(back["encoder.embed_tokens.weight"], back["shared.weight"])
        else:
            assert not extra, (name, extra)
        for weights in (pipeline_back / name).glob("*.safetensors"):
            assert read_safetensors_header(weights)[0]["__metadata__"]["format"] == "pt"
    for name in PIPELINE_COPIED:
        copied = sorted(p.name for p in (pipeline_back / name).iterdir())
        assert copied == sorted(p.name for p in (src / name).iterdir())
    assert json.loads((pipeline_back / "model_index.json").read_text()) == json.loads((src / "model_index.json")
                                                                                      .read_text())
    assert run_cli("verify", pipeline_back).exit_code == 0


def test_diffusers_and_transformers_load_it_cleanly(pipeline_back):
    from diffusers import AutoencoderKL, PixArtSigmaPipeline, PixArtTransformer2DModel
    from transformers import T5EncoderModel

    for cls, name in ((PixArtTransformer2DModel, "transformer"), (AutoencoderKL, "vae"),
                      (T5EncoderModel, "text_encoder")):
        _, info = cls.from_pretrained(pipeline_back / name, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], (name, info)
        assert not info.get("mismatched_keys"), (name, info)
    config = json.loads((pipeline_back / "transformer" / "config.json").read_text())
    assert "kv_compress_layers" not in config and config["_class_name"] == "PixArtTransformer2DModel"
    pipe = PixArtSigmaPipeline.from_pretrained(pipeline_back)
    assert type(pipe.transformer).__name__ == "PixArtTransformer2DModel"


def test_forward_again_gives_the_same_mindspore_folder(tiny_pipeline, pipeline_back, workdir):
    """diffusers -> MindSpore -> diffusers -> MindSpore: the second MindSpore folder equals the first."""
    _, ms_out, _ = tiny_pipeline
    again = workdir / "pipeline-ms-again"
    assert run_cli("convert", pipeline_back, "-o", again).exit_code == 0
    for name in COMPONENTS:
        first, second = torch_tensors(ms_out / name), torch_tensors(again / name)
        assert set(first) == set(second), name
        assert_bit_exact(first, second, name)


def test_original_round_trip_is_bit_exact(converted_pixart, pixart_pth, workdir):
    back = workdir / "pth-back"
    result = convert_back(converted_pixart["pth"], back, "original", "--json")
    summary = json.loads(result.stdout)["components"][0]
    assert summary["written_layout"] == "pixart_original" and summary["extras"] == ["y_embedder.y_embedding"]
    source = torch.load(pixart_pth, weights_only=True)["state_dict"]
    written = torch.load(back / ORIGINAL, weights_only=True, mmap=True)
    assert set(written) == {"state_dict"}
    state = written["state_dict"]
    assert set(state) == set(source)  # fused qkv / kv_linear, pos_embed recomputed, y_embedding kept
    assert_bit_exact(source, state, "original")
    config = json.loads((back / "config.json").read_text())
    assert np.array_equal(state["pos_embed"].numpy(), original_pos_embed(config))
    reference = OriginalPixArtMS(sample_size=config["sample_size"], pe_interpolation=config["interpolation_scale"])
    assert torch.equal(state["pos_embed"], reference.pos_embed)  # what the original's constructor computes
    missing, unexpected = reference.load_state_dict(state, strict=True)
    assert not missing and not unexpected
    manifest = json.loads((back / "manifest.json").read_text())
    assert manifest["target"] == "original" and manifest["weights_file"] == ORIGINAL
    assert next(r for r in manifest["tensors"] if r["name"] == "pos_embed")["op"].startswith("computed")
    assert run_cli("verify", back).exit_code == 0


@pytest.mark.parametrize("route", ["diffusers-ckpt", "pth-ckpt", "pth-to-diffusers"])
def test_each_layout_and_format(route, pixart_diffusers_dir, pixart_pth, workdir):
    """Each source layout through a MindSpore folder in each weights format and back; and the original layout's
    folder written as diffusers equals the diffusers source of the same model (its extra dropped by a rule)."""
    layout, fmt = route.split("-", 1)
    cfg = pixart_diffusers_dir / "config.json"
    ms_folder = workdir / f"rt-{route}-ms"
    source_args = [pixart_diffusers_dir] if layout == "diffusers" else [pixart_pth, "--config", cfg]
    fmt_args = ["--format", "ckpt"] if fmt == "ckpt" else []
    assert run_cli("convert", *source_args, "-o", ms_folder, *fmt_args).exit_code == 0
    back = workdir / f"rt-{route}-back"
    if route == "diffusers-ckpt":
        convert_back(ms_folder, back, "diffusers")
        assert_bit_exact(torch_tensors(pixart_diffusers_dir), torch_tensors(back), route)
        assert set(torch_tensors(back)) == set(torch_tensors(pixart_diffusers_dir))
    elif route == "pth-ckpt":
        convert_back(ms_folder, back, "original")
        source = torch.load(pixart_pth, weights_only=True)["state_dict"]
        state = torch.load(back / ORIGINAL, weights_only=True, mmap=True)["state_dict"]
        assert set(state) == set(source)
        assert_bit_exact(source, state, route)
    else:
        result = convert_back(ms_folder, back, "diffusers", "--json")
        dropped = json.loads(result.stdout)["components"][0]["dropped"]
        assert [d["key"] for d in dropped] == ["caption_projection.y_embedding"]
        assert_bit_exact(torch_tensors(pixart_diffusers_dir), torch_tensors(back), route)
        assert set(torch_tensors(back)) == set(torch_tensors(pixart_diffusers_dir))


def test_dry_run_lists_the_backward_plan(tiny_pipeline, workdir):
    _, ms_out, _ = tiny_pipeline
    out = workdir / "never-written"
    result = run_cli("convert", ms_out / "text_encoder", "-o", out, "--to", "diffusers", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)["components"][0]["plan"]
    tie = [row for row in plan if row["sources"] == ["shared.weight"]]
    assert sorted(row["target"] for row in tie) == ["encoder.embed_tokens.weight", "shared.weight"]
    assert {row["op"] for row in tie} == {"tie(2)"}
    assert not out.exists()


def test_to_that_does_not_fit_the_source(tiny_pipeline, pixart_diffusers_dir, converted_pixart, tmp_path):
    src, ms_out, _ = tiny_pipeline
    out = tmp_path / "out"
    assert_clean_failure(run_cli("convert", ms_out / "transformer", "-o", out), out, "already a MindSpore folder")
    assert_clean_failure(run_cli("convert", ms_out, "-o", out), out, "already a MindSpore pipeline")
    assert_clean_failure(run_cli("convert", ms_out / "vae", "-o", out, "--to", "original"), out,
                         "--to original does not fit a vae")
    assert_clean_failure(run_cli("convert", ms_out, "-o", out, "--to", "original"), out, "transformer alone")
    assert_clean_failure(run_cli("convert", pixart_diffusers_dir, "-o", out, "--to", "diffusers"), out,
                         "already in the diffusers layout")
    assert_clean_failure(run_cli("convert", ms_out / "text_encoder", "-o", out, "--to", "diffusers", "--format",
                                 "ckpt"), out, "--format ckpt applies to --to mindspore")
    # the diffusers route has no caption-dropout embedding, which the original layout cannot do without
    assert_clean_failure(run_cli("convert", converted_pixart["diffusers"], "-o", out, "--to", "original"), out,
                         "needs y_embedder.y_embedding")


def test_shape_that_does_not_fit_the_config(converted_pixart, tmp_path):
    folder = tmp_path / "edited"
    shutil.copytree(converted_pixart["pth"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["caption_channels"] = 32
    (folder / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    assert_clean_failure(run_cli("convert", folder, "-o", out, "--to", "diffusers"), out,
                         "caption_projection.linear_1.weight: (16, 24)", "network expects (16, 32)")


def test_verify_catches_a_changed_pth(converted_pixart, tmp_path):
    back = tmp_path / "back"
    convert_back(converted_pixart["pth"], back, "original")
    data = bytearray((back / ORIGINAL).read_bytes())
    data[-2000] ^= 1  # inside the last tensor records or the zip directory
    (back / ORIGINAL).write_bytes(bytes(data))
    result = run_cli("verify", back)
    assert result.exit_code == 1, result.output


def test_bf16_through_a_mindspore_ckpt(pixart_diffusers_dir, workdir):
    """bf16 weights in a MindSpore .ckpt come back as the source rounded to bf16, byte for byte."""
    ms_folder, back = workdir / "rt-bf16-ms", workdir / "rt-bf16-back"
    result = run_cli("convert", pixart_diffusers_dir, "-o", ms_folder, "--dtype", "bf16", "--format", "ckpt")
    assert result.exit_code == 0, result.output
    convert_back(ms_folder, back, "diffusers")
    source, got = torch_tensors(pixart_diffusers_dir), torch_tensors(back)
    assert set(got) == set(source)
    assert_bit_exact({k: v.to(torch.bfloat16) for k, v in source.items()}, got, "bf16")


def test_backward_pipeline_rerun_with_overwrite(tiny_pipeline, pipeline_back, tmp_path):
    """``--to diffusers`` run again into a pipeline folder it wrote: refused without ``--overwrite`` (the folder left
    as it was), replaced with it (the same tensors, a stale file of the old one gone)."""
    _, ms_out, _ = tiny_pipeline
    out = tmp_path / "back"
    shutil.copytree(pipeline_back, out)
    (out / "vae" / "stale.safetensors").write_bytes(b"x")
    refused = run_cli("convert", ms_out, "-o", out, "--to", "diffusers")
    assert refused.exit_code == 2 and "already exists (--overwrite" in refused.stderr, refused.output
    assert (out / "vae" / "stale.safetensors").exists()
    convert_back(ms_out, out, "diffusers", "--overwrite")
    assert not (out / "vae" / "stale.safetensors").exists()
    for name in COMPONENTS:
        assert_bit_exact(torch_tensors(pipeline_back / name), torch_tensors(out / name), name)
    assert run_cli("verify", out).exit_code == 0
