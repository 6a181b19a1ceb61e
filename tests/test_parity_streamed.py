"""Block-streamed parity (the default): the same numbers and report as whole-network mode, a bad block named,
a peak memory that does not grow with depth, and the ``--whole`` / ``--max-memory`` guards."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from safetensors.numpy import load_file, save_file

from pixart_demo.tiny import tiny_t5

from .helpers import REPO_ROOT, assert_clean_failure, run_cli

COMPONENTS = "transformer,text_encoder"


@pytest.fixture(scope="module")
def both_modes(tiny_pipeline, tmp_path_factory):
    src, out, _ = tiny_pipeline
    reports = {}
    for mode in ("streamed", "whole"):
        folder = tmp_path_factory.mktemp(f"parity-{mode}") / "report"
        extra = ("--whole",) if mode == "whole" else ()
        result = run_cli("parity", src, out, "--component", COMPONENTS, "--no-sampling", "--report", folder, *extra)
        assert result.exit_code == 0, result.output
        reports[mode] = (json.loads((folder / "parity.json").read_text()), folder)
    return reports


def _shape(value):
    """The structure of a report: keys, nesting and list lengths, without the numbers."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items() if k not in ("seconds", "memory_estimate_bytes")}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return type(value).__name__


def test_streamed_and_whole_give_the_same_taps_and_report(both_modes):
    streamed, s_dir = both_modes["streamed"]
    whole, w_dir = both_modes["whole"]
    assert set(streamed["components"]) == set(whole["components"]) == set(COMPONENTS.split(","))
    for name, comp in streamed["components"].items():
        other = whole["components"][name]
        assert comp["mode"] == "streamed" and other["mode"] == "whole"
        assert [(t["tap"], t["case"]) for t in comp["taps"]] == [(t["tap"], t["case"]) for t in other["taps"]]
        for a, b in zip(comp["taps"], other["taps"]):
            for metric in ("rel_l2", "max_abs", "mean_abs", "cosine"):
                assert abs(a[metric] - b[metric]) <= 1e-7 * max(1.0, abs(b[metric])), (name, a["tap"], metric)
            assert a["shape"] == b["shape"]
        # streamed mode's own addition: each block fed the torch block's input, one row per block + the output
        blocks = {"transformer": "transformer_blocks", "text_encoder": "encoder.block"}[name]
        assert [r["tap"] for r in comp["local"]] == [f"{blocks}.0", f"{blocks}.1", "output"]
        assert all(0 < r["rel_l2"] <= 1e-5 for r in comp["local"])
        comp["local"], other["local"] = [], []
    assert _shape(streamed) == _shape(whole)
    for folder in (s_dir, w_dir):
        assert {p.name for p in folder.iterdir()} == {"parity.json", "parity.md", "parity.html",
                                                      "transformer.png", "text_encoder.png"}
    assert "streamed" in (s_dir / "parity.md").read_text()


def _save_t5(folder, **config):
    model = tiny_t5(seed=1, **config)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def t5_four_blocks(tmp_path_factory):
    root = tmp_path_factory.mktemp("t5-4")
    src = _save_t5(root / "src", num_layers=4)
    out = root / "ms"
    result = run_cli("convert", src, "-o", out, "--component", "text_encoder")
    assert result.exit_code == 0, result.output
    return src, out


def test_corrupted_middle_block_of_t5_is_named_first(t5_four_blocks, tmp_path):
    src, out = t5_four_blocks
    bad = tmp_path / "bad"
    subprocess.run(["cp", "-r", str(out), str(bad)], check=True)
    weights = bad / "model.safetensors"
    tensors = load_file(weights)
    name = "encoder.block.2.layer.1.DenseReluDense.wo.weight"
    tensors[name] = tensors[name] * 1.02
    save_file(tensors, weights, metadata={"format": "np"})
    report_dir = tmp_path / "report"
    result = run_cli("parity", src, bad, "--report", report_dir)
    assert result.exit_code == 1, result.output
    comp = json.loads((report_dir / "parity.json").read_text())["components"]["text_encoder"]
    assert comp["mode"] == "streamed" and comp["first_failure"] == "encoder.block.2"
    over = [r["tap"] for r in comp["summary"] if not r["ok"]]
    assert over == ["encoder.block.2", "encoder.block.3", "encoder.final_layer_norm", "output"]
    # fed the torch side's input, only the corrupted block itself is off
    local = {r["tap"]: r["rel_l2"] for r in comp["local"]}
    assert local["encoder.block.2"] > 1e-3
    assert max(local["encoder.block.0"], local["encoder.block.1"], local["encoder.block.3"]) <= 1e-5
    assert "first divergence at `encoder.block.2`" in result.stdout



def test_bf16_source_streamed_equals_whole(tmp_path):
    """A bf16 source (as the real T5-XXL ships): the streamed torch blocks take the source tensors as they are and
    cast them in torch, the whole reference reads them as fp32; the taps agree as in fp32."""
    import torch

    src = tmp_path / "src"
    tiny_t5(seed=2).to(torch.bfloat16).save_pretrained(src)
    out = tmp_path / "ms"
    assert run_cli("convert", src, "-o", out, "--component", "text_encoder").exit_code == 0
    taps = {}
    for mode, extra in (("streamed", ()), ("whole", ("--whole",))):
        result = run_cli("parity", src, out, "--dtype", "bf16", "--max-length", "16", "--json", *extra)
        assert result.exit_code == 0, result.output
        taps[mode] = json.loads(result.stdout)["components"]["text_encoder"]["taps"]
    assert [t["tap"] for t in taps["streamed"]] == [t["tap"] for t in taps["whole"]]
    for a, b in zip(taps["streamed"], taps["whole"]):
        assert abs(a["rel_l2"] - b["rel_l2"]) <= 1e-7, a["tap"]
        assert a["rel_l2"] <= 1e-5, a["tap"]

PEAK = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=False, stdout=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
"""
WIDE = dict(d_model=1024, d_ff=4096, num_heads=16, d_kv=64, vocab_size=128)
BLOCK_BYTES = (4 * 1024 * 1024 + 3 * 1024 * 4096) * 4  # q, k, v, o + wi_0, wi_1, wo in fp32: 64 MiB


def _peak_rss(*args) -> int:
    """Peak RSS of ``pixart-ms ARGS`` in a fresh process, as the OS counts it (its waited child's ru_maxrss)."""
    cli = [sys.executable, str(REPO_ROOT / "pixart_ms.py"), *map(str, args)]
    done = subprocess.run([sys.executable, "-c", PEAK, *cli], capture_output=True, text=True, cwd=REPO_ROOT,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "GLOG_v": "3"}, timeout=600)
    return int(done.stdout.strip().splitlines()[-1])


def test_streamed_peak_memory_does_not_grow_with_depth(tmp_path):
    peaks = {}
    for layers in (2, 6):
        src = _save_t5(tmp_path / f"src{layers}", num_layers=layers, **WIDE)
        out = tmp_path / f"ms{layers}"
        assert run_cli("convert", src, "-o", out, "--component", "text_encoder").exit_code == 0
        peaks[layers] = _peak_rss("parity", src, out, "--max-length", "64")
        peaks[f"whole{layers}"] = _peak_rss("parity", src, out, "--max-length", "64", "--whole") if layers == 6 else 0
    # four more 64 MiB blocks: streamed within a fraction of one block; whole mode holds them all (three copies)
    assert abs(peaks[6] - peaks[2]) < BLOCK_BYTES / 2, peaks
    assert peaks["whole6"] - peaks[6] > 4 * BLOCK_BYTES, peaks


@pytest.mark.parametrize("args, phrase", [
    (("--max-memory", "lots"), "--max-memory 'lots': expected a size"),
    (("--max-memory", "0%"), "must lie in (0, 100]%"),
    (("--max-memory", "150%"), "must lie in (0, 100]%"),
    (("--max-memory", "-3G"), "expected a size"),
    (("--max-memory", "1M"), "over --max-memory"),
    (("--whole", "--max-memory", "1G"), "drop --whole"),
    (("--component", "vae_decoder", "--max-memory", "1M"), "the VAE is compared whole: smaller --height/--width fit"),
])
def test_bad_memory_options_exit_2_before_loading(args, phrase, tiny_pipeline, tmp_path):
    src, out, _ = tiny_pipeline
    report_dir = tmp_path / "report"
    component = [] if "--component" in args else ["--component", "text_encoder"]
    result = run_cli("parity", src, out, *component, "--report", report_dir, *args)
    assert_clean_failure(result, report_dir, phrase)


def test_blocks_give_the_same_numbers_compiled_and_eager(t5_four_blocks):
    """Large activations run the blocks eagerly (PYNATIVE hooks), small ones compiled: the taps agree."""
    import mindspore as ms

    from parity.cases import build_cases
    from parity.streamed import run_streamed
    from pixart_core.manifests import read_manifest

    ms.set_context(mode=ms.PYNATIVE_MODE)
    src, out = t5_four_blocks
    cases = build_cases("text_encoder", read_manifest(out, "converted")["config"], max_length=32)
    compiled = run_streamed("text_encoder", out, src, "fp32", 1e-5, cases, jit=True)
    eager = run_streamed("text_encoder", out, src, "fp32", 1e-5, cases, jit=False)
    assert [t["tap"] for t in compiled["taps"]] == [t["tap"] for t in eager["taps"]]
    for a, b in zip(compiled["taps"] + compiled["local"], eager["taps"] + eager["local"]):
        assert abs(a["rel_l2"] - b["rel_l2"]) <= 1e-9, (a["tap"], a["rel_l2"], b["rel_l2"])


def test_vae_estimate_admits_the_full_size_decoder_at_1024_and_refuses_2048_on_a_24_gib_host():
    """The full-size SDXL decoder compared whole at 1024^2 peaked at 5.68 GiB (torch's taps spilled to disk, our fast
    kernels' large outputs in host buffers; BENCHMARKS.md): its estimate must cover that and fit the default share of
    a 24 GiB host; at 2048^2 (four times the feature maps) parity refuses with exit 2 instead of starting."""
    from parity.memory import BASELINE, DEFAULT_SHARE, GIB, activation_bytes

    sdxl = {"block_out_channels": [128, 256, 512, 512]}
    weights = 3 * 335 * 2**20  # the full VAE's fp32 weights, three copies while the reference is built
    need = {side: activation_bytes("vae_decoder", sdxl, {"latent": (1, 4, side, side)}, None) + weights + BASELINE
            for side in (128, 256)}
    assert 5.68 * GIB < need[128] <= DEFAULT_SHARE * 24 * GIB, need[128] / GIB
    assert need[256] > DEFAULT_SHARE * 24 * GIB, need[256] / GIB