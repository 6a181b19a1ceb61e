"""The component registry: each view's declared interface matches its cell and its torch call, and a new export
view is a change in the registry alone (here: a transformer graph returning only the 4 noise channels that the
offline loop uses, added at test time and exported and validated through the unchanged exporter)."""
from __future__ import annotations

import dataclasses
import inspect
import json

import numpy as np
import pytest

from pixart_core import registry
from pixart_core.components import transformer as transformer_entry
from pixart_core.registry import TensorSpec

from .helpers import run_cli


@pytest.mark.parametrize("name", list(registry.VIEWS))
def test_view_interface_names_its_inputs(name):
    view = registry.view(name)
    component = registry.component(view.component)
    assert name in component.views
    config = {"in_channels": 4, "out_channels": 3 if view.component == "vae" else 8, "caption_channels": 24,
              "d_model": 24, "latent_channels": 4, "block_out_channels": [8, 16]}
    inputs, outputs = view.interface(config, 1, 12, (8, 8) if view.spatial else None, "float32")
    assert tuple(t.name for t in inputs) == view.inputs and [t.name for t in outputs] == [view.output]


def test_every_layout_builds_its_spec_and_every_component_its_config():
    for name, layout in registry.LAYOUTS.items():
        spec = layout.make_spec(keep_y_embedding=True)
        assert spec.name == name and spec.component == registry.LAYOUT_COMPONENT[name]
    for component in registry.COMPONENTS.values():
        assert component.config_type().from_dict({}) is not None
        assert component.network_class().component == component.name


def noise_interface(config, batch, length, latent_hw, out_dtype):
    inputs, (sample,) = transformer_entry.interface(config, batch, length, latent_hw, out_dtype)
    return inputs, [TensorSpec("noise", (sample.shape[0], config["in_channels"], *sample.shape[2:]), out_dtype)]


def noise_cell(net):
    from mindspore import nn

    class TransformerNoiseGraph(nn.Cell):
        def __init__(self, net):
            super().__init__(auto_prefix=False)
            self.net = net
            self.channels = net.config.in_channels

        def construct(self, hidden_states, timestep, encoder_hidden_states, encoder_attention_mask):
            out = self.net(hidden_states, timestep, encoder_hidden_states, encoder_attention_mask)
            return out[:, :self.channels]

    return TransformerNoiseGraph(net)


def noise_torch_call(model, arrays):
    return transformer_entry.torch_call(model, arrays)[:, :model.config.in_channels]


@pytest.fixture
def noise_view(monkeypatch):
    monkeypatch.setattr(registry, "VIEWS", dict(registry.VIEWS))
    monkeypatch.setattr(registry, "COMPONENTS", dict(registry.COMPONENTS))
    base = registry.view("transformer")
    view = dataclasses.replace(base, name="transformer_noise", output="noise", interface=noise_interface,
                               cell=noise_cell, torch_call=noise_torch_call)
    return registry.add_view(view)


def test_cell_construct_takes_the_view_inputs(noise_view):
    class Net:  # the cells only keep a reference to the network until they are called
        config = type("C", (), {"in_channels": 4})()

        def encoder_cell(self):
            return None

        decoder_cell = encoder_cell

    for view in registry.VIEWS.values():
        cell = view.cell(Net())
        assert tuple(inspect.signature(cell.construct).parameters) == view.inputs, view.name


def test_a_new_view_exports_through_the_registry_alone(noise_view, tiny_pipeline, tmp_path):
    _, out, _ = tiny_pipeline
    export = tmp_path / "noise"
    result = run_cli("export", out / "transformer", "-o", export, "--component", "transformer_noise", "--json")
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    (graph,) = manifest["components"]["transformer_noise"]["graphs"]
    assert graph["outputs"] == [{"name": "noise", "shape": [2, 4, 8, 8], "dtype": "float32"}]
    (check,) = graph["validation"]
    assert check["ran"] == "the exported graph" and check["shape"] == [2, 4, 8, 8]
    assert check["vs_eager"]["rel_l2"] <= 1e-6 and check["vs_torch"]["rel_l2"] <= 1e-5
    assert np.isfinite(check["vs_torch"]["max_abs"])


@pytest.mark.parametrize("component,config", [
    ("transformer", {}),
    ("transformer", {"num_layers": 3, "kv_compress_layers": [1, 2], "kv_compress_scale_factor": 2, "qk_norm": True,
                     "num_attention_heads": 2, "attention_head_dim": 8, "cross_attention_dim": 16, "caption_channels": 24,
                     "out_channels": None}),
    ("text_encoder", {}),
    ("text_encoder", {"num_layers": 2, "feed_forward_proj": "relu", "d_model": 24, "d_ff": 48, "num_heads": 3,
                      "d_kv": 8, "vocab_size": 64, "relative_attention_num_buckets": 8}),
    ("vae", {}),
    ("vae", {"block_out_channels": [8, 16], "down_block_types": ["DownEncoderBlock2D"] * 2,
             "up_block_types": ["UpDecoderBlock2D"] * 2, "layers_per_block": 1, "norm_num_groups": 4,
             "use_quant_conv": False, "use_post_quant_conv": False, "mid_block_add_attention": False}),
])
def test_parameter_shapes_equal_the_mindspore_network(component, config):
    """The plan checks against the registry's table, which needs no MindSpore: it must equal the network's own."""
    from mindspore_nets.loading import parameter_table

    entry = registry.component(component)
    cfg = entry.config_type().from_dict(config)
    ours = {name: shape for name, (shape, _) in parameter_table(entry.network_class(), cfg).items()}
    assert entry.parameter_shapes(cfg) == ours
