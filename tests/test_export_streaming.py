"""The streaming MindIR writer against ``mindspore.export``, golden pairs, the validation plan (full / proxy by the
memory budget) and ``pixart-ms validate``."""
from __future__ import annotations

import json

import mindspore as ms
import numpy as np
import pytest
from click.testing import CliRunner

from mindir_export import lean, reload, streaming
from mindir_export.cli import export_command, validate_command
from mindir_export.export import export_pipeline
from mindir_export.mindir import execution_mode
from mindspore_nets.loading import load_network, run_cell
from pixart_core import registry
from pixart_core.inputs import sample_inputs

from .helpers import assert_clean_failure

FAST = ["--max-length", "16"]


def run(command, *args):
    return CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)


def test_mindir_field_numbers():
    """scan_graph walks mind_ir.proto by field number: they must be MindSpore's."""
    from mindspore.train.mind_ir_pb2 import GraphProto, ModelProto, TensorProto

    assert ModelProto.DESCRIPTOR.fields_by_name["graph"].number == reload.MODEL_GRAPH
    assert GraphProto.DESCRIPTOR.fields_by_name["parameter"].number == reload.GRAPH_PARAMETER
    assert TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number == reload.TENSOR_RAW_DATA


def test_scan_graph_refuses_other_bytes(tmp_path):
    bad = tmp_path / "x.mindir"
    bad.write_bytes(b"\x3a\xff\xff\xff\x7f garbage")
    with pytest.raises(ValueError, match="not a MindIR graph"):
        reload.scan_graph(bad)


@pytest.mark.parametrize("dtype,threshold", [("fp32", None), ("fp16", 1000)])
def test_stream_writer_equals_mindspore_export(tiny_pipeline, tmp_path, dtype, threshold):
    """The graph traced without weights and written from the converted file: the same parameter table and, split,
    byte-identical variables to ``mindspore.export`` of the loaded network; the same outputs after reload."""
    import mindspore.train.serialization as serialization

    _, converted, _ = tiny_pipeline
    folder = converted / "text_encoder"
    spec_inputs, _ = registry.view("text_encoder").interface(json.loads((folder / "config.json").read_text()), 1,
                                                             16, tmp_path / "absent", "float32")
    arrays = sample_inputs(spec_inputs, {"vocab_size": 64})
    # the old path: every weight in memory, mindspore.export
    old = tmp_path / "old"
    old.mkdir()
    cell = registry.view("text_encoder").cell(load_network("text_encoder", folder, dtype))
    saved = serialization.TOTAL_SAVE
    if threshold is not None:
        serialization.TOTAL_SAVE = threshold / 1024
    try:
        with execution_mode(graph=True):
            ms.export(cell, *[ms.Tensor(a) for a in arrays], file_name=str(old / "te"), file_format="MINDIR")
    finally:
        serialization.TOTAL_SAVE = saved
    # the new one
    new = tmp_path / "new"
    new.mkdir()
    net, skeleton = lean.skeleton("text_encoder", folder, dtype)
    assert all(p.has_init for p in net.get_parameters())  # nothing materialised
    model = streaming.trace(skeleton, spec_inputs)
    reader = streaming.WeightReader(lean.weights_file("text_encoder", folder))
    written = streaming.write_graph(model, new, "te", reader, lean.parameter_names(net), threshold)
    reader.close()
    assert all(p.has_init for p in net.get_parameters())
    assert written.split == (threshold is not None)
    old_file = old / ("te_graph.mindir" if written.split else "te.mindir")
    old_model, new_model = reload.read_proto(old_file), reload.read_proto(new / written.graph_file)
    table = lambda m: [(streaming.parameter_name(p), list(p.dims), p.data_type, p.external_data.offset,  # noqa: E731
                        p.external_data.length, p.raw_data) for p in m.graph.parameter]
    assert sorted(table(old_model)) == sorted(table(new_model))
    # read field by field: the same message without raw_data, and where each parameter's bytes are
    scanned, stored = reload.scan_graph(old_file)
    for p in old_model.graph.parameter:
        where = stored[streaming.parameter_name(p)]
        if written.split:
            assert (where.where.name, where.offset, where.length) == ("data_0", p.external_data.offset,
                                                                      p.external_data.length)
        else:
            with open(where.where, "rb") as f:
                f.seek(where.offset)
                assert where.where == old_file and f.read(where.length) == p.raw_data and p.raw_data
        p.ClearField("raw_data")
    assert scanned == old_model and len(stored) == len(old_model.graph.parameter)
    if written.split:
        assert (new / "te_variables" / "data_0").read_bytes() == (old / "te_variables" / "data_0").read_bytes()
        wo = [p for p in new_model.graph.parameter if p.name.endswith("DenseReluDense.wo.weight")]
        assert wo and all(p.data_type == 1 for p in wo)  # keep_fp32 in an fp16 graph
    with execution_mode(graph=True):
        got = run_cell(reload.open_graph_cell(new / written.graph_file), arrays)
        want = run_cell(ms.nn.GraphCell(ms.load(str(old_file))), arrays)
    assert np.array_equal(got, want)


@pytest.fixture(scope="module")
def exported(tiny_pipeline, tmp_path_factory):
    _, converted, _ = tiny_pipeline
    out = tmp_path_factory.mktemp("golden") / "export"
    result = run(export_command, converted, "-o", out, "--components", "transformer,text_encoder",
                 "--split-threshold", "1000", *FAST, "--json")
    assert result.exit_code == 0, result.output
    phases = [line for line in result.stderr.splitlines() if line.startswith("export: ")]
    for word in ("trace", "write", "torch reference", "eager MindSpore", "reload and run", "validate full"):
        assert any(word in line for line in phases), word
    return out, json.loads(result.stdout)


def test_golden_pairs_and_full_validation(exported):
    out, manifest = exported
    assert manifest["memory"]["budget_bytes"] > 2**30
    for name, entry in manifest["components"].items():
        assert set(entry["phases"]) == {"trace_write", "torch_reference", "eager", "reload_run"}
        for graph in entry["graphs"]:
            assert graph["validation_mode"] == "full" and "within the budget" in graph["validation_why"]
            gold = graph["golden"]
            assert gold["file"] in manifest["files"] and gold["tolerance"] == 1e-6
            assert "eager_vs_torch" in gold, (entry["torch_reference"], graph["validation"][0]["vs_torch"])
            assert gold["eager_vs_torch"]["ok"]
            (check,) = graph["validation"]
            assert check["vs_golden"]["ok"] and check["vs_golden"]["rel_l2"] <= 1e-6
            with np.load(out / gold["file"]) as data:
                assert [data[t["name"]].shape for t in gold["inputs"]] == [tuple(t["shape"]) for t in graph["inputs"]]
                assert data["output"].shape == tuple(graph["outputs"][0]["shape"])


def test_validate_command(exported, tmp_path):
    out, manifest = exported
    result = run(validate_command, out, "--backend", "mindspore")
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.stderr.splitlines() + result.stdout.splitlines() if ln.startswith("ok ")]
    assert len(lines) == 2 and "2 graph(s) matched" in result.stdout
    result = run(validate_command, out, "--backend", "mindspore", "--budget-gib", "0.001", "--json")
    assert result.exit_code == 0
    records = json.loads(result.stdout)
    assert [r["status"] for r in records] == ["skipped", "skipped"] and "> the budget" in records[0]["detail"]


def test_validate_catches_a_changed_golden_and_bad_input(exported, tmp_path):
    import shutil

    out, manifest = exported
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    graph = manifest["components"]["text_encoder"]["graphs"][0]
    path = copy / graph["golden"]["file"]
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["output"] = arrays["output"] * 1.01
    path.chmod(0o600)
    np.savez(open(path, "wb"), **arrays)
    result = run(validate_command, copy, "--backend", "mindspore")
    assert result.exit_code == 1 and "sha256 differs" in result.stderr
    # the manifest updated for the changed file: the comparison itself fails
    listing = json.loads((copy / "manifest.json").read_text())
    from pixart_core.manifests import file_entry

    listing["files"][graph["golden"]["file"]] = file_entry(path)
    (copy / "manifest.json").chmod(0o600)
    (copy / "manifest.json").write_text(json.dumps(listing))
    result = run(validate_command, copy, "--backend", "mindspore")
    assert result.exit_code == 1 and "vs the golden output" in result.stderr
    assert_clean_failure(run(validate_command, tmp_path / "nothing"), tmp_path / "absent", "no such file or folder")
    assert_clean_failure(run(validate_command, out, "--backend", "lite"), tmp_path / "absent",
                         "mindspore_lite does not import")
    assert_clean_failure(run(validate_command, out, "--budget-gib", "-1"), tmp_path / "absent", "must be positive")
    (copy / graph["golden"]["file"]).unlink()
    result = run(validate_command, copy, "--backend", "mindspore")
    assert result.exit_code == 1 and "missing" in result.stderr


def test_proxy_plans_and_golden_at_real_shape(tiny_pipeline, tmp_path):
    """Proxy validation (what ``auto`` picks when a real-shape run exceeds the budget): the transformer and the
    text encoder are run cut to their first blocks; golden pairs are still stored at the real shape, and
    ``validate`` runs the artifact on them where the budget allows."""
    _, converted, _ = tiny_pipeline
    out = tmp_path / "proxy"
    manifest = export_pipeline(converted, out, log=lambda line: None, components=["transformer", "text_encoder"],
                               max_length=16, validation="proxy")
    for name, entry in manifest["components"].items():
        (graph,) = entry["graphs"]
        assert graph["validation_mode"] == "proxy" and "asked" in graph["validation_why"]
        (check,) = graph["validation"]
        assert "first 2 blocks" in check["case"] and check["vs_eager"]["ok"], check
        assert graph["golden"]["file"] in manifest["files"]
    te = manifest["components"]["text_encoder"]["graphs"][0]
    assert te["validation"][0]["shape"] == te["outputs"][0]["shape"]  # the real shape, fewer blocks
    result = run(validate_command, out, "--backend", "mindspore")
    assert result.exit_code == 0 and "2 graph(s) matched" in result.stdout


def test_blockwise_eager_when_the_network_does_not_fit(tiny_pipeline, tmp_path, monkeypatch):
    """A budget the whole eager T5 does not fit: its golden output comes from the block-by-block run (one block's
    weights resident), equal to the whole network's; stored weights are checked against MindSpore's cast of the
    source; the artifact then matches that golden output in ``validate``."""
    import mindir_export.budget as budget
    from mindir_export import blockwise

    _, converted, _ = tiny_pipeline
    folder = converted / "text_encoder"
    arrays = [np.random.default_rng(1).integers(0, 64, (2, 16)).astype(np.int32), np.ones((2, 16), np.int32)]
    arrays[1][0, 10:] = 0
    for dtype in ("fp32", "fp16"):
        net = load_network("text_encoder", folder, dtype)
        with execution_mode(graph=False):
            whole = run_cell(registry.view("text_encoder").cell(net), arrays)
            assert np.array_equal(blockwise.forward("text_encoder", folder, dtype, arrays), whole), dtype
    config = json.loads((converted / "transformer" / "config.json").read_text())
    inputs, _ = registry.view("transformer").interface(config, 1, 16, (8, 8), "float32")
    latents = sample_inputs(inputs, config)
    assert latents[0].shape[0] == 2  # a CFG pair; the block runner takes the batch a sample at a time: still the same bits
    with execution_mode(graph=False):
        whole = run_cell(registry.view("transformer").cell(load_network("transformer", converted / "transformer",
                                                                         "fp16")), latents)
        assert np.array_equal(blockwise.forward("transformer", converted / "transformer", "fp16", latents), whole)
    monkeypatch.setattr(budget, "SMALL", 0)
    from mindir_export.mindir import QUERY_ROWS
    from mindspore_nets import layers

    rows_seen, forward = [], blockwise.forward  # the block-by-block run slices attention like the whole one
    monkeypatch.setattr(blockwise, "forward", lambda *args: rows_seen.append(layers._QUERY_BLOCK) or forward(*args))
    out = tmp_path / "blockwise"
    manifest = export_pipeline(converted, out, log=lambda line: None, components=["text_encoder"], max_length=16,
                               budget_bytes=1)
    assert rows_seen == [QUERY_ROWS]
    (graph,) = manifest["components"]["text_encoder"]["graphs"]
    assert graph["validation_mode"] == "proxy" and "block by block" in graph["golden"]["reference"]
    assert graph["weights"]["identical_to_network"] and "cast by MindSpore" in graph["weights"]["compared_with"]
    assert graph["validation"][0]["vs_eager"]["ok"] and "unavailable" in graph["validation"][0]["vs_torch"]
    result = run(validate_command, out, "--backend", "mindspore", "--budget-gib", "8")
    assert result.exit_code == 0 and "1 graph(s) matched" in result.stdout
    # one changed byte inside an inline graph's raw_data (found by scan_graph) is caught by both weight checks
    from mindir_export.validate import weight_problems

    path = out / graph["file"]
    assert not graph["split"]
    _, table = reload.scan_graph(path)
    name, stored = max(table.items(), key=lambda item: item[1].length)
    raw = bytearray(path.read_bytes())
    raw[stored.offset + stored.length // 2] ^= 0xFF
    path.chmod(0o600)
    path.write_bytes(bytes(raw))
    names = lean.parameter_names(lean.skeleton("text_encoder", folder, "fp32")[0])
    count, problems = blockwise.stored_weight_problems(path, folder, "text_encoder", names)
    assert count == len(table) and problems == [f"{path.name}: {name} differs from the source's weights cast by "
                                                "MindSpore"]
    count, problems = weight_problems(path, registry.view("text_encoder").cell(load_network("text_encoder", folder,
                                                                                          "fp32")))
    assert problems == [f"{path.name}: {name} differs from the network's weights"]


def test_vae_golden_pair_skipped_when_its_eager_run_does_not_fit(tiny_pipeline, tmp_path, monkeypatch):
    """The VAE has no block-by-block runner: when its eager decode at the real shape exceeds the budget, neither it
    nor torch's real-shape decode runs (at 1024^2 torch's alone passed 4.6 GiB); the proxy is still validated,
    the manifest says why the pair is missing, and ``validate`` names the graph as skipped, with that reason."""
    import mindir_export.budget as budget

    _, converted, _ = tiny_pipeline
    seen = []
    eager_bytes = budget.eager_bytes
    monkeypatch.setattr(budget, "eager_bytes", lambda *args: seen.append(args[2][0].shape) or eager_bytes(*args))
    monkeypatch.setattr(budget, "SMALL", 0)
    out = tmp_path / "vae"
    manifest = export_pipeline(converted, out, log=lambda line: None, components=["vae_decoder"], budget_bytes=1,
                               buckets="1.0")
    (graph,) = manifest["components"]["vae_decoder"]["graphs"]
    assert seen == [tuple(graph["inputs"][0]["shape"])]  # estimated at the real shape
    assert graph["validation_mode"] == "proxy" and graph["golden"] is None
    assert graph["golden_skipped"].startswith("the eager network at the real shape needs about")
    assert "eager_forward_seconds" not in graph and not list(out.rglob("*golden*"))
    (check,) = graph["validation"]
    assert check["vs_eager"]["ok"] and check["vs_torch"].startswith("unavailable"), check  # a 1-byte budget
    result = run(validate_command, out, "--backend", "mindspore")
    assert result.exit_code == 0, result.output
    assert "skipped vae_decoder/vae_decoder_1.0: no golden pair: the eager network at the real shape" in result.stdout
    assert "0 graph(s) matched their golden outputs; skipped: vae_decoder/vae_decoder_1.0" in result.stdout


def test_vae_golden_pair_from_fast_kernels_when_only_they_fit(tiny_pipeline, tmp_path, monkeypatch):
    """When the plain ops' eager decode at the real shape exceeds the budget but the fast CPU kernels' fits (the
    SDXL decoder at 1024^2: 18.7 against about 7 GiB), the golden pair comes from the fast-kernel network, held to
    the fp32 parity tolerance, and the shipped graph matches it at the real shape. The decode runs in a child process
    (MindSpore's pool would keep its pages in the export's)."""
    import mindir_export.budget as budget
    import mindir_export.mindir as mindir
    from mindir_export import golden
    from mindspore_nets.layers import fast_kernels
    from mindspore_nets.metrics import TOLERANCES, rel_l2

    _, converted, _ = tiny_pipeline
    monkeypatch.setattr(budget, "SMALL", 0)
    monkeypatch.setattr(budget, "eager_bytes", lambda *args: 2**50)  # the plain ops never fit
    monkeypatch.setattr(budget, "graph_run_bytes", lambda *args: 2**50)  # the graph is validated through its proxy
    monkeypatch.setattr(mindir, "fast_golden_outputs", lambda *a: pytest.fail("decoded in the export process"))
    out = tmp_path / "vae"
    manifest = export_pipeline(converted, out, log=lambda line: None, components=["vae_decoder"],
                               budget_bytes=2**40, buckets="1.0,0.57")
    graphs = manifest["components"]["vae_decoder"]["graphs"]
    net, cell = lean.load_network("vae_decoder", converted / "vae", "fp32")
    with fast_kernels():
        fast = lean.load_network("vae_decoder", converted / "vae", "fp32")[1]
    assert len(graphs) == 2  # two sizes: one child run computes both pairs
    for graph in graphs:
        assert graph["validation_mode"] == "proxy" and graph["golden_kernels"].startswith("fast CPU kernels")
        pair = graph["golden"]
        assert pair["reference"].endswith("fast CPU kernels (layers.fast_kernels)")
        assert pair["tolerance"] == TOLERANCES["fp32"] and pair["eager_vs_torch"]["ok"]
        arrays, output = golden.load(out / pair["file"], [t["name"] for t in pair["inputs"]])
        assert arrays[0].shape == tuple(graph["inputs"][0]["shape"])  # the real shape
        with execution_mode(graph=False):
            np.testing.assert_array_equal(run_cell(fast, arrays), output)
            assert 0 < rel_l2(output, run_cell(cell, arrays)) < TOLERANCES["fp32"]
    monkeypatch.undo()  # where the graph fits (here, tiny): validate runs it at the real shape against the pair
    result = run(validate_command, out, "--backend", "mindspore")
    assert result.exit_code == 0, result.output
    assert "2 graph(s) matched their golden outputs" in result.stdout


def test_vae_fp16_check_on_proxy_inputs_when_the_real_shape_does_not_fit(tiny_pipeline, tmp_path, monkeypatch):
    """The VAE goes fp16 only after its fp16 eager decode is finite; where that decode at the real shape exceeds the
    budget, the proxy inputs are checked and the manifest's note says so (with ``--validation full``, the real
    shape whatever it costs)."""
    import mindir_export.budget as budget
    import mindir_export.eager_worker as eager_worker
    from mindir_export.mindir import fp16_finite

    _, converted, _ = tiny_pipeline
    monkeypatch.setattr(budget, "SMALL", 0)
    monkeypatch.setattr(budget, "budget", lambda weights: 1)
    monkeypatch.setattr(eager_worker, "fp16_finite_in_child", fp16_finite)  # in this process, where the budget is 1
    notes = {}
    for validation in ("auto", "full"):
        manifest = export_pipeline(converted, tmp_path / validation, log=lambda line: None,
                                   components=["vae_decoder"], dtype="fp16", validation=validation)
        assert manifest["components"]["vae_decoder"]["dtype"] == "fp16"
        (notes[validation],) = [n for n in manifest["notes"] if n.startswith("vae_decoder: fp16 NaN check passed")]
    assert "checked on smaller inputs: vae_decoder_1.0 (" in notes["auto"] and "> the budget" in notes["auto"]
    assert notes["full"].endswith("(finite in fp16 on the real-shape inputs)")


def test_vae_fp16_check_runs_in_a_child_process(tiny_pipeline, tmp_path, monkeypatch):
    """The check's fp16 decode runs in a child process (MindSpore's pool would keep its pages in the export's), and
    gives the export the verdict the same check gives in this process."""
    import mindir_export.eager_worker as eager_worker
    import mindir_export.mindir as mindir

    _, converted, _ = tiny_pipeline
    here = mindir.fp16_finite

    def notes(name):
        manifest = export_pipeline(converted, tmp_path / name, log=lambda line: None, components=["vae_decoder"],
                                   dtype="fp16")
        return [n for n in manifest["notes"] if n.startswith("vae_decoder: fp16 NaN check")]

    with monkeypatch.context() as patch:
        patch.setattr(mindir, "fp16_finite", lambda *a, **k: pytest.fail("checked in the export process"))
        in_child = notes("child")
    monkeypatch.setattr(eager_worker, "fp16_finite_in_child", here)
    assert in_child == notes("here") and in_child[0].startswith("vae_decoder: fp16 NaN check passed (finite")


def test_streamed_torch_reference_equals_whole(tiny_pipeline):
    """The torch reference with only the running block's weights resident gives the whole model's numbers."""
    torch = pytest.importorskip("torch")
    from converters.references import torch_forward

    _, converted, _ = tiny_pipeline
    folder = converted / "text_encoder"
    arrays = {"input_ids": np.arange(32).reshape(2, 16).astype(np.int32) % 64, "attention_mask": np.ones((2, 16),
                                                                                                           np.int32)}
    arrays["attention_mask"][1, 9:] = 0
    streamed = lean.torch_streamed_reference("text_encoder", folder)
    assert all(p.is_meta for p in streamed.encoder.block.parameters())  # nothing resident between runs
    whole = lean.torch_reference("text_encoder", folder)
    assert np.array_equal(torch_forward("text_encoder", streamed, arrays), torch_forward("text_encoder", whole, arrays))
    assert all(p.is_meta for p in streamed.encoder.block.parameters())
    # the transformer's position table is computed at construction, not stored: recomputed for the meta-built model
    folder = converted / "transformer"
    config = json.loads((folder / "config.json").read_text())
    inputs, _ = registry.view("transformer").interface(config, 1, 16, (8, 8), "float32")
    latents = dict(zip(registry.view("transformer").inputs, sample_inputs(inputs, config)))
    streamed = lean.torch_streamed_reference("transformer", folder)
    assert streamed is not None and all(p.is_meta for p in streamed.transformer_blocks.parameters())
    from pixart_core.components.transformer import torch_model

    built = torch_model(config)  # constructed for real: its own table
    assert torch.equal(streamed.pos_embed.pos_embed, built.pos_embed.pos_embed)
    whole = lean.torch_reference("transformer", folder)
    assert not whole.pos_embed.pos_embed.is_meta
    assert np.array_equal(torch_forward("transformer", streamed, latents), torch_forward("transformer", whole, latents))
    # the export's child runs the streamed reference a sample at a time: the whole batch's numbers
    from mindir_export.torch_worker import run_reference

    outputs, _, note = run_reference(folder, "transformer", "streamed", {"pair": list(latents.values())},
                                     list(latents))
    assert note is None and len(latents["hidden_states"]) == 2
    np.testing.assert_allclose(outputs["pair"], torch_forward("transformer", whole, latents), rtol=0, atol=1e-6)
