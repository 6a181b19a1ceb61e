"""``pixart-ms parity``: layer-by-layer agreement of the tiny converted pipeline, the report files, a corrupted
conversion caught at the right block, sampling parity, and the tap correspondence at full size."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file, save_file

from mindspore_nets import AutoencoderKL, PixArtTransformer2D, T5Encoder
from mindspore_nets.config import PixArtConfig, T5Config, VAEConfig
from mindspore_nets.loading import parameter_table
from parity.taps import tap_paths
from pixart_core import registry

from .helpers import run_cli
from .network_runner import SDXL_VAE, T5_XXL

WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="session")
def parity_report(tiny_pipeline, workdir):
    src, out, _ = tiny_pipeline
    report_dir = workdir / "parity-report"
    result = run_cli("parity", src, out, "--report", report_dir, "--steps", "10")
    return result, report_dir


def test_tiny_pipeline_within_fp32_tolerance_at_every_tap(parity_report):
    result, report_dir = parity_report
    assert result.exit_code == 0, result.output
    report = json.loads((report_dir / "parity.json").read_text())
    assert set(report["components"]) == {"transformer", "text_encoder", "vae_encoder", "vae_decoder"}
    for name, comp in report["components"].items():
        assert comp["ok"] and comp["first_failure"] is None
        assert comp["taps"], name
        for tap in comp["taps"]:
            assert tap["rel_l2"] <= 1e-5 and tap["nan"] == 0 and tap["inf"] == 0, (name, tap)
    taps = {t["tap"] for t in report["components"]["transformer"]["taps"]}
    assert {"pos_embed", "adaln_single.emb.timestep_embedder", "adaln_single.linear", "caption_projection",
            "transformer_blocks.1.attn1", "transformer_blocks.1.attn2", "transformer_blocks.1.ff",
            "transformer_blocks.1", "proj_out", "output"} <= taps
    assert len(report["components"]["transformer"]["cases"]) == 3  # three timesteps
    assert {"shared", "encoder.block.1", "encoder.final_layer_norm"} <= {
        t["tap"] for t in report["components"]["text_encoder"]["taps"]}
    sampling = report["sampling"]
    assert sampling["steps"] == 10 and sampling["final_latent_rel_l2"] <= 1e-4 and sampling["image_psnr_db"] > 60
    assert "**PASS**" in result.stdout and "transformer_blocks.{n}.attn1 (n=0..1)" in result.stdout


def test_report_files(parity_report):
    _, report_dir = parity_report
    html = (report_dir / "parity.html").read_text()
    for name in ("transformer", "text_encoder", "vae_encoder", "vae_decoder"):
        with Image.open(report_dir / f"{name}.png") as img:
            assert img.format == "PNG" and img.size[0] > 300
        assert f"src='{name}.png'" in html
    assert (report_dir / "parity.md").read_text().startswith("# Parity")


@pytest.mark.parametrize("corruption", ["scale", "swap"])
def test_corrupted_conversion_is_caught_at_its_block(corruption, tiny_pipeline, tmp_path):
    src, out, _ = tiny_pipeline
    bad = tmp_path / "transformer"
    shutil.copytree(out / "transformer", bad)
    tensors = load_file(bad / WEIGHTS)
    if corruption == "scale":
        tensors["transformer_blocks.1.ff.net.2.weight"] = tensors["transformer_blocks.1.ff.net.2.weight"] * 1.05
        expected = "transformer_blocks.1.ff"
    else:  # block 1's self-attention query and key swapped
        q, k = "transformer_blocks.1.attn1.to_q.weight", "transformer_blocks.1.attn1.to_k.weight"
        tensors[q], tensors[k] = tensors[k], tensors[q]
        expected = "transformer_blocks.1.attn1"
    save_file(tensors, bad / WEIGHTS)
    report_dir = tmp_path / "report"
    result = run_cli("parity", src / "transformer", bad, "--report", report_dir)
    assert result.exit_code == 1
    report = json.loads((report_dir / "parity.json").read_text())
    comp = report["components"]["transformer"]
    assert comp["first_failure"] == expected
    assert f"first divergence at `{expected}`" in result.stdout
    earlier = [row for row in comp["summary"]][: [r["tap"] for r in comp["summary"]].index(expected)]
    assert all(row["ok"] for row in earlier)  # everything before the corrupted block still agrees


def test_tolerance_override_and_bad_input(tiny_pipeline, tmp_path):
    src, out, _ = tiny_pipeline
    result = run_cli("parity", src, out, "--component", "text_encoder", "--tolerance", "1e-9", "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["tolerance"] == 1e-9 and not report["components"]["text_encoder"]["ok"]
    assert run_cli("parity", tmp_path / "nowhere", out / "vae").exit_code == 2
    assert run_cli("parity", src, out, "--timesteps", "a,b").exit_code == 2


def test_fp16_parity(tiny_pipeline):
    src, out, _ = tiny_pipeline
    result = run_cli("parity", src, out, "--dtype", "fp16", "--no-sampling", "--json", "--timesteps", "999")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    worst = max(t["rel_l2"] for c in report["components"].values() for t in c["taps"])
    assert 1e-5 < worst <= 5e-3  # fp16 really ran, and stayed within its tolerance


def test_tap_correspondence_at_full_size():
    """Every tap derived from the MindSpore cell tree is a module of the torch reference, at full size."""
    from diffusers import AutoencoderKL as TorchVAE
    from diffusers import PixArtTransformer2DModel
    from transformers import T5Config as HFConfig
    from transformers import T5EncoderModel

    from mindspore.nn.utils import no_init_parameters

    with torch.device("meta"):
        refs = {"transformer": PixArtTransformer2DModel(sample_size=128, interpolation_scale=2, caption_channels=4096,
                                                        use_additional_conditions=False),
                "text_encoder": T5EncoderModel(HFConfig(**T5_XXL)), "vae": TorchVAE(**SDXL_VAE)}
    with no_init_parameters():
        nets = {"transformer": PixArtTransformer2D(PixArtConfig(sample_size=128, interpolation_scale=2.0)),
                "text_encoder": T5Encoder(T5Config(**T5_XXL)), "vae": AutoencoderKL(VAEConfig.from_dict(SDXL_VAE))}
    counts = {}
    for component in registry.VIEWS:
        key = registry.view(component).component
        paths = tap_paths(component, [p for p, _ in nets[key].cells_and_names()])
        modules = dict(refs[key].named_modules())
        assert all(p in modules for p in paths), [p for p in paths if p not in modules]
        counts[component] = len(paths)
    assert counts == {"transformer": 5 + 4 * 28, "text_encoder": 2 + 24, "vae_encoder": 4 + 4, "vae_decoder": 4 + 4}
    assert len(parameter_table(PixArtTransformer2D, PixArtConfig(sample_size=128))) == 603
