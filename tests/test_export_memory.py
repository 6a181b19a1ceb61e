"""The export's memory rule at small scale: a full-width T5 encoder cut to one block (d_model 4096, d_ff 10240, 64
heads; a small vocabulary), whose ~0.75 GiB of fp32 weights dominate the import baseline, exported by
``pixart-ms export`` in its own process; the peak RSS the kernel reports for that whole process (``/usr/bin/time
-v``) must stay within 1.3 x the weights of the largest graph + 1 GiB, validation included."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import REPO_ROOT, run_cli

TIME = Path("/usr/bin/time")
WIDE_T5 = dict(vocab_size=1024, d_model=4096, d_kv=64, d_ff=10240, num_layers=1, num_heads=64,
               relative_attention_num_buckets=32, relative_attention_max_distance=128,
               feed_forward_proj="gated-gelu", is_gated_act=True, dense_act_fn="gelu_new")


@pytest.fixture(scope="module")
def wide_t5(tmp_path_factory):
    import torch
    from transformers import T5Config, T5EncoderModel

    root = tmp_path_factory.mktemp("wide_t5")
    torch.manual_seed(0)
    with torch.no_grad():
        model = T5EncoderModel(T5Config(**WIDE_T5)).eval()
        for p in model.parameters():
            p.mul_(0.05 if p.ndim > 1 else 1.0)  # keep activations moderate
    model.save_pretrained(root / "src")
    del model
    result = run_cli("convert", root / "src", "-o", root / "converted", "--component", "text_encoder")
    assert result.exit_code == 0, result.output
    return root


def run_sampled(cmd, env):
    """(completed process, peak RSS of its process tree sampled every 50 ms)."""
    import time

    import psutil

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT)
    root, peak = psutil.Process(proc.pid), 0
    import threading

    out = {}
    reader = threading.Thread(target=lambda: out.update(zip(("stdout", "stderr"), proc.communicate())))
    reader.start()
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.05)
    reader.join()
    return subprocess.CompletedProcess(cmd, proc.returncode, out["stdout"], out["stderr"]), peak


@pytest.mark.skipif(not TIME.is_file(), reason="needs /usr/bin/time")
def test_export_peak_rss_within_rule(wide_t5):
    out = wide_t5 / "export"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "GLOG_v": "3"}
    cmd = [str(TIME), "-v", sys.executable, "-c", "from pixart_ms import main; main()", "export",
           str(wide_t5 / "converted"), "-o", str(out), "--max-length", "32", "--json"]
    proc, tree_peak = run_sampled(cmd, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the kernel's peak of the largest single process, and the sampled peak of the whole tree (the torch reference
    # runs in a child process)
    peak = max(int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1)) * 1024,
               tree_peak)
    manifest = json.loads(proc.stdout)
    (graph,) = manifest["components"]["text_encoder"]["graphs"]
    weights = graph["memory"]["weights_bytes"]
    assert weights > 0.7 * 2**30 and graph["split"]  # weights dominate; the split layout
    assert graph["validation_mode"] in ("full", "proxy") and graph["validation"][0]["vs_eager"]["ok"]
    assert peak <= 1.3 * weights + 2**30, (peak / 2**30, weights / 2**30, graph["validation_why"])
    for phase in manifest["components"]["text_encoder"]["phases"].values():  # each phase within the rule too
        assert phase["peak_rss_bytes"] <= 1.3 * weights + 2**30


def test_eager_estimate_counts_one_block_of_activations(tmp_path):
    """The whole-or-block-by-block decisions count one block's activations: the XL/2 at 1024^2 in fp32 (2.28 GiB of
    weights) then no longer fits its 3.96 GiB budget as a whole eager network or as a whole torch reference, which it
    did on weights alone (and then peaked at 4.94 and 4.07 GiB)."""
    from types import SimpleNamespace

    from mindir_export import budget
    from mindir_export.mindir import MindIRExporter
    from mindspore_nets.config import PixArtConfig
    from pixart_core import registry

    config = PixArtConfig(sample_size=128, interpolation_scale=2.0)
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    inputs, _ = registry.view("transformer").interface(config.to_dict(), 1, 300, (128, 128), "float32")
    result = SimpleNamespace(golden=SimpleNamespace(case=SimpleNamespace(inputs=inputs)))
    activations = MindIRExporter.block_activations(SimpleNamespace(name="transformer"), tmp_path, [result])
    weights = int(2.28 * 2**30)
    assert 1 * 2**30 < activations < 3 * 2**30
    assert budget.fits(int(0.62 * 2**30), int(1.2 * weights), budget.budget(weights))  # what it decided before
    assert not budget.fits(int(0.62 * 2**30), int(1.2 * weights) + activations, budget.budget(weights))
    # the torch reference child: the whole fp32 model fit on weights alone and took the export to 4.07 GiB
    here, lean_need = int(0.62 * 2**30) + budget.TORCH_BASE, budget.torch_lean_bytes(weights, 2**25)
    assert budget.fits(here, lean_need, budget.budget(weights))
    assert not budget.fits(here + activations, lean_need, budget.budget(weights))


def test_budget_is_capped_by_the_host(monkeypatch):
    """The rule (1.3 x weights + 1 GiB) past 60% of physical RAM would let the export plan a whole fp32 T5-XXL
    (17.7 GiB) in one process on a 24 GiB host: the budget stops at that share, below it the rule stands."""
    import parity.memory

    from mindir_export import budget

    monkeypatch.setattr(parity.memory, "physical_ram", lambda: 24 * 2**30)
    t5_fp32 = int(17.74 * 2**30)
    assert budget.budget(t5_fp32) == int(0.6 * 24 * 2**30) < 1.3 * t5_fp32 + 2**30
    assert not budget.fits(int(0.6 * 2**30) + budget.TORCH_BASE, budget.torch_lean_bytes(t5_fp32, 2**28),
                           budget.budget(t5_fp32))
    assert budget.budget(2 * 2**30) == int(1.3 * 2 * 2**30 + 2**30)


def test_vae_views_load_their_own_half(tiny_pipeline):
    """The decoder's eager network and torch reference hold the decoder's weights only (the VAE's Cell wraps the
    whole AutoencoderKL); the decoder run equals the fully loaded network's, and the budget counts that half."""
    import numpy as np

    from mindir_export import lean
    from mindir_export.plan import component_weight_bytes
    from mindspore_nets.loading import load_network, run_cell
    from pixart_core import registry
    from pixart_core.manifests import read_manifest

    _, converted, _ = tiny_pipeline
    folder = converted / "vae"
    net, cell = lean.load_network("vae_decoder", folder, "fp32")
    halves = {"decoder": [], "encoder": []}
    for name, param in net.parameters_and_names():
        half = "encoder" if name.startswith(("encoder.", "quant_conv.")) else "decoder"
        halves[half].append(param.has_init)
    assert halves["encoder"] and all(halves["encoder"])  # declared, never loaded
    assert halves["decoder"] and not any(halves["decoder"])
    latent = np.random.default_rng(0).standard_normal((1, 4, 4, 4)).astype(np.float32)
    whole = run_cell(registry.view("vae_decoder").cell(load_network("vae_decoder", folder, "fp32")), [latent])
    assert np.array_equal(run_cell(cell, [latent]), whole)
    rows = read_manifest(folder, "converted")["tensors"]
    decoder_bytes = sum(4 * int(np.prod(r["shape"])) for r in rows
                        if r["name"].startswith(("decoder.", "post_quant_conv.")) and not r.get("extra"))
    assert component_weight_bytes(folder, "vae_decoder", "fp32") == decoder_bytes
    total = sum(4 * int(np.prod(r["shape"])) for r in rows if not r.get("extra"))
    assert component_weight_bytes(folder, "vae_encoder", "fp32") == total - decoder_bytes


def test_torch_reference_child_imports_no_mindspore(tiny_pipeline):
    """The torch reference child builds the VAE decoder's reference without importing MindSpore (it kept 0.3 GiB
    more beside the export process), holding the decoder's tensors only."""
    _, converted, _ = tiny_pipeline
    code = ("import sys; from pathlib import Path; from mindir_export.lean import torch_reference; "
            "from converters.references import torch_forward; import mindir_export.torch_worker; "
            f"m = torch_reference('vae_decoder', Path({str(converted / 'vae')!r})); "
            "meta = sorted({n.split('.')[0] for n, p in m.named_parameters() if p.is_meta}); "
            "real = sorted({n.split('.')[0] for n, p in m.named_parameters() if not p.is_meta}); "
            "print('mindspore' in sys.modules, meta, real)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[-2] == "False ['encoder', 'quant_conv'] ['decoder', 'post_quant_conv']"
