"""``export --format onnx``: the tiny pipeline's four views as ONNX graphs, checked here independently of the
exporter's own validation: ``onnx.checker`` in full mode, onnxruntime against the torch models the pipeline was
built from (1e-5 in fp32), against the MindIR twins, and the interface the MindIR graphs have; the external-data
path through a lowered threshold, fp16 graphs with dynamic h, w, the fp32 reference read module by module, the Lite
commands, and the failures."""
from __future__ import annotations

import json
import shutil

import mindspore as ms
import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch

from mindir_export.onnx_export import onnx_interface
from mindir_export.runtime import OrtRunner
from mindir_export.specs import TensorSpec
from mindir_export.validate import graph_interface, torch_output
from mindspore_nets.metrics import TOLERANCES, rel_l2
from pixart_core import registry
from pixart_core.inputs import sample_inputs

from .helpers import assert_clean_failure, run_cli
from .test_bad_input import Case, Material, check
from .test_export import FAST, TINY_CONFIG, export


@pytest.fixture(scope="module")
def exported(tiny_pipeline, tmp_path_factory):
    """Both formats of every view of the tiny pipeline in one export folder."""
    _, converted, models = tiny_pipeline
    folder = tmp_path_factory.mktemp("onnx") / "export"
    result = export(converted, "-o", folder, "--format", "mindir,onnx", "--buckets", "1.0,0.57", *FAST, "--json")
    assert result.exit_code == 0, result.output
    return folder, json.loads(result.stdout), models


def _specs(tensors) -> list[TensorSpec]:
    return [TensorSpec(t["name"], tuple(t["shape"]), t["dtype"]) for t in tensors]


def test_onnx_graphs_check_and_match_torch_and_mindir(exported):
    folder, manifest, models = exported
    assert manifest["options"]["formats"] == ["mindir", "onnx"]
    assert set(manifest["components"]) == {"transformer", "text_encoder", "vae_decoder", "vae_encoder"}
    for name, entry in manifest["components"].items():
        for graph in entry["graphs"]:
            path = folder / graph["onnx"]["file"]
            assert path.suffix == ".onnx" and graph["onnx"]["files"] == [graph["onnx"]["file"]]
            onnx.checker.check_model(str(path), full_check=True)
            inputs, outputs = onnx_interface(path)
            assert inputs == graph_interface(folder / graph["file"]) == _specs(graph["inputs"])
            assert outputs == _specs(graph["outputs"])
            arrays = sample_inputs(inputs, TINY_CONFIG, seed=7)  # not the exporter's seed
            out = OrtRunner(path).run(*arrays)[0]
            assert out.shape == tuple(graph["outputs"][0]["shape"]) and out.dtype == np.float32
            reference = torch_output(name, models[registry.view(name).component], arrays)
            assert rel_l2(out, reference) <= TOLERANCES["fp32"], graph["stem"]
            twin = ms.nn.GraphCell(ms.load(str(folder / graph["file"])))(*[ms.Tensor(a) for a in arrays])
            assert rel_l2(out, twin.asnumpy()) <= TOLERANCES["fp32"], graph["stem"]
            # the exporter's own numbers, in the manifest
            (check,) = graph["onnx"]["validation"]
            assert check["vs_torch"]["ok"] and check["vs_torch"]["rel_l2"] <= 1e-5
            assert check["vs_mindir"]["ok"] and check["vs_mindir"]["rel_l2"] <= 1e-5
            assert check["ran"].startswith("onnxruntime") and check["shape"] == graph["outputs"][0]["shape"]
        assert set(entry["onnx"]["phases"]) == {"trace_write", "torch_reference", "onnxruntime"}


def test_lite_commands_for_both_formats(exported):
    folder, manifest, _ = exported
    lines = (folder / "convert_lite.sh").read_text().splitlines()
    for name, entry in manifest["components"].items():
        for graph in entry["graphs"]:
            mindir = next(ln for ln in lines if f"--modelFile={graph['file']}" in ln)
            onnx_line = next(ln for ln in lines if f"--modelFile={graph['onnx']['file']}" in ln)
            assert "--fmk=MINDIR" in mindir and "--fmk=ONNX" in onnx_line
            for line in (mindir, onnx_line):
                assert f"--configFile={graph['lite_config']}" in line and "--optimize=ascend_oriented" in line
            assert mindir.split("--inputShape=")[1] == onnx_line.split("--inputShape=")[1]
            assert f"--outputFile=lite/onnx/{name}/{graph['stem']}" in onnx_line
    assert manifest["lite"]["onnx_flags"][0] == "--fmk=ONNX" and manifest["lite"]["onnx_output"] == "lite/onnx"


def test_infer_onnxruntime_without_torch_or_mindspore(exported, tmp_path):
    from mindir_export.pipeline import OfflinePipeline, Request, psnr
    from PIL import Image

    from .helpers import run_python

    folder, _, _ = exported
    image = tmp_path / "ort.png"
    proc = run_python("from pixart_ms import main; main()", "infer", folder, "--prompt", "a red fox", "-o", image,
                      "--height", "12", "--width", "20", "--steps", "5", "--seed", "3", "--backend", "onnxruntime",
                      blocked=("torch", "mindspore"))
    assert proc.returncode == 0, proc.stderr
    assert "backend: onnxruntime (CPU)" in proc.stderr and "backend used: onnxruntime" in proc.stdout
    offline = np.asarray(Image.open(image))
    assert offline.shape == (12, 20, 3) and offline.std() > 1
    mindir = OfflinePipeline(folder, backend="mindspore")
    same = mindir(Request("a red fox", height=12, width=20, steps=5, seed=3), progress=False)[0]
    assert mindir.backends() == ["mindspore (GraphCell)"]
    assert psnr(offline, same) >= 60
    other = mindir(Request("a red fox", height=12, width=20, steps=5, seed=4), progress=False)[0]
    assert psnr(offline, other) < 40  # the check can fail


def test_external_data_fp16_gears(tiny_pipeline, tmp_path):
    """A lowered threshold takes the path of weights over 1 GiB: <stem>.onnx + <stem>.onnx.data, checked and run
    from another folder; fp16 graphs with dynamic h, w against the fp32 torch model at every gear."""
    _, converted, models = tiny_pipeline
    out = tmp_path / "gears"
    result = export(converted, "-o", out, "--format", "onnx", "--component", "transformer", "--buckets", "1.0,0.57",
                    "--gears", "--dtype", "fp16", "--split-threshold", "1000", *FAST, "--json")
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    (graph,) = manifest["components"]["transformer"]["graphs"]
    assert "file" not in graph and graph["gears"] == [[8, 8], [6, 10]]
    onnx_entry = graph["onnx"]
    assert onnx_entry["external_data"] and onnx_entry["files"] == ["transformer/transformer_gears.onnx",
                                                                  "transformer/transformer_gears.onnx.data"]
    model = onnx.load(str(out / onnx_entry["file"]), load_external_data=False)
    external = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    inline = [t for t in model.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL]
    assert all({e.key: e.value for e in t.external_data}["location"] == "transformer_gears.onnx.data"
               for t in external)
    # onnx_ir keeps tensors of <= 256 bytes inline; every weight above that is in the data file, which holds
    # nothing else
    assert len(external) >= 20 and all(onnx.numpy_helper.to_array(t).nbytes <= 256 for t in inline)
    lengths = [int({e.key: e.value for e in t.external_data}["length"]) for t in external]
    assert min(lengths) > 256 and sum(lengths) <= (out / onnx_entry["files"][1]).stat().st_size
    moved = tmp_path / "moved"
    moved.mkdir()
    for rel in onnx_entry["files"]:
        shutil.copy(out / rel, moved)
    path = moved / "transformer_gears.onnx"
    onnx.checker.check_model(str(path), full_check=True)
    inputs, outputs = onnx_interface(path)
    assert inputs[0].shape == (2, 4, -1, -1) and outputs[0].dtype == "float16"
    runner = OrtRunner(path, fp16=True)
    rng = np.random.default_rng(0)
    for h, w in graph["gears"]:
        args = [rng.standard_normal((2, 4, h, w)).astype(np.float32), np.array([999, 1], np.float32),
                (rng.standard_normal((2, 16, 24)) * 0.2).astype(np.float32), np.ones((2, 16), np.float32)]
        got = runner.run(*args)[0]
        assert got.dtype == np.float16 and got.shape == (2, 8, h, w)
        assert rel_l2(got.astype(np.float32), torch_output("transformer", models["transformer"], args)) <= 5e-3
    checks = onnx_entry["validation"]
    assert [c["shape"] for c in checks] == [[2, 8, 8, 8], [2, 8, 6, 10]]
    assert all(c["vs_torch"]["rel_l2"] <= TOLERANCES["fp16"] and c["vs_mindir"] == "MindIR not exported"
               for c in checks)
    phases = manifest["components"]["transformer"]["onnx"]["phases"]
    assert set(phases) == {"trace_write", "torch_reference", "onnxruntime"}
    assert all(p["seconds"] > 0 and p["peak_rss_bytes"] > 2**20 for p in phases.values())
    assert "--fmk=ONNX" in (out / "convert_lite.sh").read_text() and "lite/onnx" not in (out / "convert_lite.sh").read_text()


@pytest.mark.parametrize("component", ["text_encoder", "transformer", "vae"])
def test_module_by_module_reference_equals_the_loaded_module(tiny_pipeline, component):
    """The fp32 reference of an fp16 export reads each module's weights just before it runs: the same numbers as
    the module with every weight loaded, and the same as the torch model the pipeline was built from."""
    from mindir_export.onnx_export import graph_module
    from mindir_export.torch_source import LazyWeights, torch_module

    _, converted, models = tiny_pipeline
    folder = converted / component
    view = registry.view(registry.component(component).views[0])
    spec_inputs, _ = view.interface(json.loads((folder / "config.json").read_text()) | TINY_CONFIG, 1, 16, (8, 8),
                                    "float32")
    arrays = [torch.from_numpy(a) for a in sample_inputs(spec_inputs, TINY_CONFIG, seed=5)]
    loaded = torch_module(folder, "fp32")
    lazy = LazyWeights(folder)
    with torch.no_grad():
        expected = graph_module(view, loaded, "float32")(*arrays)
        got = graph_module(view, lazy.model, "float32")(*arrays)
        original = graph_module(view, models[component], "float32")(*arrays)
    lazy.close()
    assert torch.equal(got, expected) and torch.equal(expected, original)
    assert all(p.is_meta for p in lazy.model.parameters())  # nothing stays loaded


# ----------------------------------------------------------------------------------------------------------------
# bad input for the new options: rows in the style of test_bad_input (exit 2, one line, nothing written or changed)

@pytest.fixture(scope="module")
def single_format(tiny_pipeline, tmp_path_factory):
    """One export per format of what infer needs: {"mindir": folder, "onnx": folder}."""
    _, converted, _ = tiny_pipeline
    folders = {}
    for fmt in ("mindir", "onnx"):
        folders[fmt] = tmp_path_factory.mktemp(f"only-{fmt}") / "export"
        result = export(converted, "-o", folders[fmt], "--format", fmt, "--component",
                        "transformer,text_encoder,vae_decoder", *FAST, "--no-torch-reference")
        assert result.exit_code == 0, result.output
    return folders


def _export_row(*extra, phrases):
    def build(m):
        out = m.tmp / "export"
        return Case(["export", m.tiny_pipeline[1], "-o", out, *extra], target=out, sources=[m.tiny_pipeline[1]],
                    phrases=phrases)
    return build


def _infer_row(fmt, *extra, damage=None, phrases):
    def build(m):
        folder = m.single_format[fmt]
        if damage:
            folder = m.copy(folder, "export")
            damage(next((folder / "transformer").glob("*.onnx")))
        image = m.tmp / "fox.png"
        return Case(["infer", folder, "--prompt", "a fox", "-o", image, *extra], target=image, sources=[folder],
                    phrases=phrases)
    return build


def _truncate(path):
    path.write_bytes(path.read_bytes()[:1000])


def _flip_byte(path):
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


ROWS = {
    "export-format-unknown": _export_row("--format", "nonsense",
                                         phrases=("--format nonsense: choose mindir, onnx or mindir,onnx",)),
    "export-format-empty-item": _export_row("--format", "onnx,", phrases=("--format onnx,: choose",)),
    "export-format-twice": _export_row("--format", "onnx,onnx", phrases=("--format onnx,onnx: choose",)),
    "infer-onnxruntime-on-mindir-only-export": _infer_row("mindir", "--backend", "onnxruntime",
                                                          phrases=("has no ONNX graphs", "--format onnx")),
    "infer-mindspore-on-onnx-only-export": _infer_row("onnx", "--backend", "mindspore",
                                                      phrases=("has no MINDIR graphs", "--format mindir")),
    "infer-truncated-onnx": _infer_row("onnx", "--backend", "onnxruntime", damage=_truncate,
                                       phrases=(".onnx", "the manifest says")),
    "infer-changed-onnx": _infer_row("onnx", "--backend", "onnxruntime", damage=_flip_byte,
                                     phrases=(".onnx", "sha256")),
}


@pytest.mark.parametrize("row", list(ROWS))
def test_bad_input(row, request, tmp_path):
    check(ROWS[row](Material(request, tmp_path)))


def _assert_clean_exit(proc, target, *phrases):
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert all(p in lines[0] for p in phrases), lines[0]
    assert not target.exists() and not [p for p in target.parent.iterdir() if p.name.startswith(f".{target.name}.")]


def test_missing_onnx_packages_exit_2(tiny_pipeline, single_format, tmp_path):
    """Without onnxscript, --format onnx stops before any work; without onnxruntime, infer --backend onnxruntime
    does (each in a fresh interpreter where that import fails)."""
    from .helpers import run_python

    _, converted, _ = tiny_pipeline
    out = tmp_path / "export"
    proc = run_python("from pixart_ms import main; main()", "export", converted, "-o", out, "--format", "onnx",
                      blocked=("onnxscript",))
    _assert_clean_exit(proc, out, "--format onnx needs onnxscript")
    image = tmp_path / "fox.png"
    proc = run_python("from pixart_ms import main; main()", "infer", single_format["onnx"], "--prompt", "a fox", "-o",
                      image, "--backend", "onnxruntime", blocked=("onnxruntime", "torch", "mindspore"))
    _assert_clean_exit(proc, image, "onnxruntime does not import")


def test_auto_backend_runs_an_onnx_only_export_and_says_so(single_format, tmp_path):
    image = tmp_path / "auto.png"
    result = run_cli("infer", single_format["onnx"], "--prompt", "a fox", "-o", image, "--steps", "2", "--json")
    assert result.exit_code == 0, result.output
    assert "backend: onnxruntime (CPU)" in result.stderr
    backends = json.loads(result.stdout)["backend"]
    assert len(backends) == 1 and backends[0].startswith("onnxruntime")


def test_onnx_needs_a_torch_class_that_expresses_the_variant(workdir, tmp_path):
    """The ONNX graph is traced from the torch reference class: a KV-compression transformer (which diffusers'
    class cannot express) is refused before any work, exit 2."""
    from pixart_demo.tiny import randomize_

    from .original_pixart import OriginalPixArtMS

    torch.manual_seed(3)
    ref = randomize_(OriginalPixArtMS(kv_compress_layers=(1,), scale_factor=2), seed=3, std=0.1)
    pth = tmp_path / "kv.pth"
    torch.save({"state_dict": ref.state_dict()}, pth)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(dict(num_attention_heads=2, attention_head_dim=8, num_layers=2, sample_size=8,
                                      patch_size=2, caption_channels=24, cross_attention_dim=16,
                                      interpolation_scale=1.0, out_channels=8, kv_compress_layers=[1],
                                      kv_compress_scale_factor=2)))
    folder = tmp_path / "ms-kv"
    assert run_cli("convert", pth, "-o", folder, "--config", config).exit_code == 0
    out = tmp_path / "kv-onnx"
    assert_clean_failure(export(folder, "-o", out, "--format", "onnx", *FAST), out, "no ONNX graph",
                         "KV compression")


def test_onnx_validation_miss_fails_export(tiny_pipeline, tmp_path, monkeypatch):
    import mindir_export.onnx_export as onnx_export

    _, converted, _ = tiny_pipeline
    monkeypatch.setattr(onnx_export, "TOLERANCES", {"fp32": 1e-12, "fp16": 1e-12})
    out = tmp_path / "strict"
    result = export(converted / "vae", "-o", out, "--format", "onnx", "--component", "vae_decoder", *FAST)
    assert_clean_failure(result, out, "validation failed", "onnxruntime vs torch reference", code=1)


def test_group_norm_traced_with_chunked_statistics(tmp_path):
    """GroupNorm over large groups is traced as means of chunk means: onnxruntime's InstanceNormalization loses
    accuracy with the group size (1.6e-6 relative at 262,144 values per group, 1.2e-5 at 1M: the SDXL VAE decoder
    at 1024 px was 1.5e-4 from torch). The traced formula is torch's GroupNorm to rounding, and onnxruntime runs it
    within 5e-7 of fp64."""
    from mindir_export.onnx_export import accurate_group_norm, quiet_exporter

    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(8, 32, eps=1e-6).eval()
    with torch.no_grad():
        norm.weight.normal_(1, 0.1)
        norm.bias.normal_(0, 0.1)
    x = (np.random.default_rng(0).standard_normal((1, 32, 256, 256)) * 3 + 1.5).astype(np.float32)
    with torch.no_grad():
        exact = norm.double()(torch.from_numpy(x).double()).numpy()
        norm.float()
        native = norm(torch.from_numpy(x)).numpy()
        with accurate_group_norm():
            chunked = norm(torch.from_numpy(x)).numpy()
            with quiet_exporter():
                torch.onnx.export(norm, (torch.from_numpy(x),), input_names=["x"], output_names=["y"],
                                  dynamo=True).save(str(tmp_path / "norm.onnx"))
        assert torch.nn.GroupNorm.forward is not None and norm(torch.from_numpy(x)).numpy().tobytes() == \
            native.tobytes()  # restored
    assert rel_l2(chunked, native) <= 1e-6
    ops = {n.op_type for n in onnx.load(str(tmp_path / "norm.onnx")).graph.node}
    assert "InstanceNormalization" not in ops and "ReduceMean" in ops
    out = OrtRunner(tmp_path / "norm.onnx").run(x)[0]
    assert np.linalg.norm(out.astype(np.float64) - exact) / np.linalg.norm(exact) <= 5e-7
