"""``export``: every component of the tiny pipeline exported to MindIR, reloaded with ``GraphCell`` and compared
here, independently of the exporter's own validation, with the eager MindSpore networks (1e-6) and the torch
models the pipeline was built from (parity tolerances); the split-file path, gears, Lite configs and the failures."""
from __future__ import annotations

import configparser
import json

import mindspore as ms
import numpy as np
import pytest
from click.testing import CliRunner
from mindspore import nn

from pixart_core.manifests import file_sha256
from mindir_export.cli import export_command
from mindir_export.lite import read_config
from mindir_export.specs import TensorSpec
from mindspore_nets.buckets import model_buckets as export_buckets, select_buckets
from pixart_core import registry
from pixart_core.inputs import sample_inputs
from mindir_export.validate import graph_interface, torch_output
from mindspore_nets import AutoencoderKL, PixArtTransformer2D, T5Encoder
from mindspore_nets.buckets import bucket_table
from mindspore_nets.metrics import TOLERANCES, rel_l2

from .helpers import assert_clean_failure

FAST = ["--max-length", "16"]
TINY_CONFIG = {"vocab_size": 64, "scaling_factor": 0.13025}


def export(*args):
    return CliRunner().invoke(export_command, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def exported(tiny_pipeline, tmp_path_factory):
    _, converted, models = tiny_pipeline
    folder = tmp_path_factory.mktemp("export") / "export"
    result = export(converted, "-o", folder, "--buckets", "1.0,0.57", *FAST, "--json")
    assert result.exit_code == 0, result.output
    return folder, json.loads(result.stdout), models


def _ms(arrays):
    return [ms.Tensor(a) for a in arrays]


def test_graphs_match_eager_and_torch(exported, tiny_pipeline):
    folder, manifest, models = exported
    _, converted, _ = tiny_pipeline
    assert set(manifest["components"]) == {"transformer", "text_encoder", "vae_decoder", "vae_encoder"}
    nets = {"transformer": PixArtTransformer2D.from_pretrained(converted / "transformer"),
            "text_encoder": T5Encoder.from_pretrained(converted / "text_encoder")}
    vae = AutoencoderKL.from_pretrained(converted / "vae")
    eager = {"transformer": lambda *a: nets["transformer"](*_ms(a)),
             "text_encoder": lambda *a: nets["text_encoder"](*_ms(a)),
             "vae_decoder": lambda z: vae.decode(ms.Tensor(z)), "vae_encoder": lambda x: vae.encode(ms.Tensor(x))}
    stems = {name: [g["stem"] for g in entry["graphs"]] for name, entry in manifest["components"].items()}
    assert stems == {"transformer": ["transformer_1.0", "transformer_0.57"], "text_encoder": ["text_encoder"],
                     "vae_decoder": ["vae_decoder_1.0", "vae_decoder_0.57"],
                     "vae_encoder": ["vae_encoder_1.0", "vae_encoder_0.57"]}
    for name, entry in manifest["components"].items():
        for graph in entry["graphs"]:
            path = folder / graph["file"]
            assert not graph["split"] and path.suffix == ".mindir"
            shapes = [tuple(t["shape"]) for t in graph["inputs"]]
            specs = [TensorSpec(t["name"], tuple(t["shape"]), t["dtype"]) for t in graph["inputs"]]
            arrays = sample_inputs(specs, TINY_CONFIG, seed=7)  # not the exporter's seed
            assert [a.shape for a in arrays] == shapes
            out = nn.GraphCell(ms.load(str(path)))(*_ms(arrays)).asnumpy()
            assert out.shape == tuple(graph["outputs"][0]["shape"]) and str(out.dtype) == "float32"
            assert rel_l2(out, eager[name](*arrays).asnumpy()) <= 1e-6, graph["stem"]
            reference = torch_output(name, models[registry.view(name).component], arrays)
            assert rel_l2(out, reference) <= TOLERANCES["fp32"], graph["stem"]
            # the exporter's own numbers, in the manifest
            (check,) = graph["validation"]
            assert check["vs_eager"]["ok"] and check["vs_eager"]["rel_l2"] <= 1e-6
            assert check["vs_torch"]["ok"] and check["vs_torch"]["rel_l2"] <= 1e-5


def test_manifest_and_lite_files(exported):
    folder, manifest, _ = exported
    p = manifest["pipeline"]
    assert p["max_length"] == 16 and p["vae_scale_factor"] == 2 and p["vocab_size"] == 64
    assert p["buckets"] == {"1.0": {"height": 16, "width": 16, "latent_hw": [8, 8]},
                            "0.57": {"height": 12, "width": 20, "latent_hw": [6, 10]}}
    assert manifest["versions"]["mindspore"] == ms.__version__
    assert set(manifest["source"]["manifests"]) >= {"transformer", "text_encoder", "vae", "model_index.json"}
    for rel, entry in manifest["files"].items():
        assert (folder / rel).stat().st_size == entry["size"] and file_sha256(folder / rel) == entry["sha256"], rel
    for name in ("tokenizer/spiece.model", "scheduler/scheduler_config.json", "convert_lite.sh"):
        assert name in manifest["files"]
    script = (folder / "convert_lite.sh").read_text()
    for name, entry in manifest["components"].items():
        for graph in entry["graphs"]:
            cfg_path = folder / graph["lite_config"]
            parser = configparser.ConfigParser()
            parser.read(cfg_path)  # parses as INI
            context = read_config(cfg_path)
            declared = {t.name: list(t.shape) for t in graph_interface(folder / graph["file"])}
            assert context["input_shape"] == declared == {t["name"]: t["shape"] for t in graph["inputs"]}
            expected_mode = "preferred_fp32"
            assert context["precision_mode"] == expected_mode and "dynamic_dims" not in context
            line = next(ln for ln in script.splitlines() if f"--modelFile={graph['file']}" in ln)
            for flag in ("--fmk=MINDIR", "--saveType=MINDIR", "--optimize=ascend_oriented",
                         f"--configFile={graph['lite_config']}"):
                assert flag in line


def test_split_files_fp16_gears(tiny_pipeline, tmp_path):
    """A lowered split threshold takes the same path as weights over 1 GiB: _graph.mindir + _variables/; a gears
    graph serves both buckets; fp16 graphs against fp16 MindSpore and the fp32 torch reference."""
    import mindspore.train.serialization as serialization

    _, converted, models = tiny_pipeline
    out = tmp_path / "gears"
    threshold = serialization.TOTAL_SAVE
    result = export(converted, "-o", out, "--components", "transformer", "--buckets", "1.0,0.57", "--gears",
                    "--dtype", "fp16", "--split-threshold", "1000", *FAST, "--json")
    assert result.exit_code == 0, result.output
    assert serialization.TOTAL_SAVE == threshold  # restored
    manifest = json.loads(result.stdout)
    (graph,) = manifest["components"]["transformer"]["graphs"]
    assert graph["split"] and graph["file"] == "transformer/transformer_gears_graph.mindir"
    assert "transformer/transformer_gears_variables/data_0" in graph["files"]
    assert graph["gears"] == [[8, 8], [6, 10]] and graph["inputs"][0]["shape"] == [2, 4, -1, -1]
    context = read_config(out / graph["lite_config"])
    assert context["dynamic_dims"] == "[8,8],[6,10]" and context["input_format"] == "NCHW"
    assert context["precision_mode"] == "enforce_origin"
    assert "--modelFile=transformer/transformer_gears_graph.mindir" in (out / "convert_lite.sh").read_text()
    assert [c["shape"] for c in graph["validation"]] == [[2, 8, 8, 8], [2, 8, 6, 10]]
    for check in graph["validation"]:
        assert check["dtype"] == "float16" and check["vs_eager"]["rel_l2"] <= 1e-6
        assert check["vs_torch"]["rel_l2"] <= TOLERANCES["fp16"]
    assert graph["weights"] == {"stored": 57, "identical_to_network": True}
    cell = nn.GraphCell(ms.load(str(out / graph["file"])))  # finds the variables folder beside it
    rng = np.random.default_rng(0)
    for h, w in graph["gears"]:
        args = [rng.standard_normal((2, 4, h, w)).astype(np.float32), np.array([999, 1], np.float32),
                (rng.standard_normal((2, 16, 24)) * 0.2).astype(np.float32), np.ones((2, 16), np.float32)]
        got = cell(*_ms(args)).asnumpy().astype(np.float32)
        assert rel_l2(got, torch_output("transformer", models["transformer"], args)) <= TOLERANCES["fp16"]


def test_proxy_validation_and_weight_check(tiny_pipeline, tmp_path, monkeypatch):
    """``--validation proxy`` (hosts that cannot run a graph at its size) runs the same Cell exported at a small
    latent and still checks the artifact's stored weights byte for byte; a changed byte is caught."""
    import mindir_export.specs as specs
    from mindir_export.validate import weight_problems

    _, converted, _ = tiny_pipeline
    monkeypatch.setattr(specs, "PROXY_LATENT", 4)
    out = tmp_path / "proxy"
    result = export(converted / "transformer", "-o", out, "--validation", "proxy", "--split-threshold", "1000",
                    *FAST, "--json")
    assert result.exit_code == 0, result.output
    (graph,) = json.loads(result.stdout)["components"]["transformer"]["graphs"]
    (check,) = graph["validation"]
    assert check["ran"].startswith("proxy") and check["shape"] == [2, 8, 4, 4] and check["vs_eager"]["ok"]
    assert graph["inputs"][0]["shape"] == [2, 4, 8, 8] and graph["weights"]["identical_to_network"]
    assert not [p for p in out.rglob(".proxy-*")]
    net = registry.view("transformer").cell(PixArtTransformer2D.from_pretrained(converted / "transformer"))
    from mindspore.train.mind_ir_pb2 import ModelProto

    proto = ModelProto()
    proto.ParseFromString((out / graph["file"]).read_bytes())
    stored = proto.graph.parameter[0].external_data
    data = out / "transformer" / stored.location
    data.chmod(0o600)
    raw = bytearray(data.read_bytes())
    raw[stored.offset + 1] ^= 0xFF  # one byte of one stored tensor
    data.write_bytes(bytes(raw))
    count, problems = weight_problems(out / graph["file"], net)
    assert count == 57 and len(problems) == 1 and "differs from the network's weights" in problems[0]


def test_bucket_tables():
    for sample in (32, 64, 128, 256):
        table, how = export_buckets({"sample_size": sample, "patch_size": 2}, 8)
        assert table == bucket_table(sample) and "BIN" in how
    tiny, how = export_buckets({"sample_size": 8, "patch_size": 2}, 2)
    assert tiny["1.0"] == (16, 16) and tiny["0.57"] == (12, 20) and "scaled" in how
    assert all(h % 4 == 0 and w % 4 == 0 for h, w in tiny.values())
    assert select_buckets("square", tiny) == ["1.0"] and len(select_buckets("all", tiny)) == 33
    with pytest.raises(ValueError, match="unknown bucket"):
        select_buckets("1.0,1", tiny)


def test_bad_input_exit_2(tiny_pipeline, tmp_path):
    src, converted, _ = tiny_pipeline
    out = tmp_path / "x"
    assert_clean_failure(export(converted, "-o", out, "--buckets", "1.0,0.3"), out, "unknown bucket(s) 0.3")
    assert_clean_failure(export(converted / "transformer", "-o", out, "--components", "vae_decoder"), out,
                         "no converted folder for vae_decoder")
    assert_clean_failure(export(src, "-o", out), out, "run `pixart-ms convert` first")
    out.mkdir()
    result = export(converted, "-o", out)
    assert result.exit_code == 2 and "already exists" in result.stderr


def test_validation_miss_fails_export(tiny_pipeline, tmp_path, monkeypatch):
    import mindir_export.validate as validate

    _, converted, _ = tiny_pipeline
    monkeypatch.setattr(validate, "EAGER_TOLERANCE", -1.0)
    out = tmp_path / "strict"
    result = export(converted / "transformer", "-o", out, *FAST)
    assert_clean_failure(result, out, "validation failed", "GraphCell vs eager", code=1)


def test_vae_proxy_latent_is_smaller(tiny_pipeline):
    """The VAE's proxy latent is smaller than the transformer's 16x16 (MindSpore's CPU Conv2D and GRAPH-mode memory
    at 16x16 made the 1024^2 export's proxy take 375 s and 3.1 GiB); both at the same 1024^2 bucket."""
    from mindir_export.specs import PROXY_LATENT, VAE_PROXY_LATENT, build_component

    assert VAE_PROXY_LATENT < PROXY_LATENT
    side = VAE_PROXY_LATENT
    _, converted, _ = tiny_pipeline
    labels = {}
    for name in ("vae_decoder", "vae_encoder", "transformer"):
        config = json.loads((converted / ("transformer" if name == "transformer" else "vae") / "config.json")
                            .read_text())
        spec = build_component(name, config, "fp32", 1, 16, {"1.0": (1024, 1024)}, 8, False)
        (graph,) = spec.graphs
        (case,) = graph.validation_cases("proxy", 8)
        labels[name] = case.label
        if name == "vae_decoder":
            assert case.inputs[0].shape[-2:] == (side, side)
    assert labels["vae_decoder"] == labels["vae_encoder"] == f"proxy {side}x{side} latent (same Cell exported at that size)"
    assert labels["transformer"] == "proxy 16x16 latent (same Cell exported at that size)"
