"""The tiny-model runner every network test uses (mlx-lm's ``model_test_runner``).

``TINY`` gives each registered component its tiny torch reference (the ``pixart_demo.tiny`` builders) and the
sizes its views are checked at; ``test_networks.py`` runs the standard checks on every registered view and fails
when a component has no entry here (optimum's ``test_all_models_tested``). The component tests call the same
checks on their variants and converted folders. Everything about a view comes from the registry: the graph
interface (``view.interface``), the MindSpore Cell (``view.cell``), the torch forward (``view.torch_call``), the
tied and fp32-kept parameters; inputs come from the one sample-input generator (``pixart_core.inputs``).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import mindspore as ms
import numpy as np
from mindspore.nn.utils import no_init_parameters

from converters.keymaps.rules import match
from converters.references import torch_forward
from mindspore_nets.layers import to_ms_dtype
from mindspore_nets.loading import load_into, parameter_table, run_cell
from mindspore_nets.metrics import TOLERANCES, rel_l2
from pixart_core import registry
from pixart_core.components.vae import scale_factor
from pixart_core.inputs import sample_inputs
from pixart_demo.tiny import tiny_pixart, tiny_t5, tiny_vae


@dataclass(frozen=True)
class Tiny:
    """A component's tiny torch model and the sizes its views are checked at."""

    build: Callable  # (seed=0, **config overrides) -> torch module with random weights
    length: int = 12  # tokens per caption
    latent_hw: tuple[int, int] = (6, 10)  # a non-square latent grid (spatial views)


TINY = {"transformer": Tiny(tiny_pixart), "text_encoder": Tiny(tiny_t5), "vae": Tiny(tiny_vae)}
BATCH = 2  # interface batch: B = 4 rows for the CFG-paired views, 2 for the VAE

# released full-size configs, for name / shape tests without weights (meta device, no_init_parameters)
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu")
SDXL_VAE = dict(in_channels=3, out_channels=3, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
                norm_num_groups=32, latent_channels=4, down_block_types=["DownEncoderBlock2D"] * 4,
                up_block_types=["UpDecoderBlock2D"] * 4, sample_size=1024, scaling_factor=0.13025, force_upcast=True)


def config_of(model) -> dict:
    """The config dict of a diffusers (a dict already) or transformers (``to_dict``) model."""
    config = model.config
    return dict(config) if isinstance(config, dict) else config.to_dict()


def torch_state(component: str, model) -> dict[str, np.ndarray]:
    """The torch state dict as numpy, without the tied copies the network holds once."""
    tied = registry.component(component).tied_in_torch
    return {k: v.detach().numpy() for k, v in model.state_dict().items() if k not in tied}


def ms_network(component: str, model, dtype: str = "fp32"):
    """The component's MindSpore network computing in ``dtype``, with the torch model's weights (strict load)."""
    entry = registry.component(component)
    config = entry.config_type().from_dict(config_of(model))
    with no_init_parameters():
        net = entry.network_class()(config, dtype=to_ms_dtype(dtype))
    load_into(net, torch_state(component, model))
    net.set_train(False)
    return net


def interface(view: str, model, batch: int = BATCH):
    """(input specs, output specs) of the view's graph at the component's tiny sizes."""
    entry = registry.view(view)
    tiny = TINY[entry.component]
    return entry.interface(config_of(model), batch, tiny.length, tiny.latent_hw if entry.spatial else None,
                           "float32")


def view_inputs(view: str, model, batch: int = BATCH, seed: int = 0) -> dict:
    specs, _ = interface(view, model, batch)
    return dict(zip(registry.view(view).inputs, sample_inputs(specs, config_of(model), seed)))


def ms_output(view: str, net, arrays: dict, cell=None) -> np.ndarray:
    """The view's Cell on ``arrays`` in the current mode, in the network's own output dtype."""
    entry = registry.view(view)
    return run_cell(cell or entry.cell(net), [arrays[n] for n in entry.inputs])


def check_parameter_table(component: str, model) -> dict:
    """The network's parameter table, built without weights, has the torch state dict's names and shapes (tied
    copies aside), all fp32. ``model`` may live on the meta device. Returns the table."""
    entry = registry.component(component)
    ours = parameter_table(entry.network_class(), entry.config_type().from_dict(config_of(model)))
    theirs = {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in entry.tied_in_torch}
    assert sorted(ours) == sorted(theirs), (sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours)))
    bad = {k: (ours[k][0], theirs[k]) for k in theirs if ours[k][0] != theirs[k]}
    assert not bad, bad
    assert all(dtype == ms.float32 for _, dtype in ours.values())
    assert not set(entry.tied_in_torch) & set(ours)
    return ours


def check_fp16_parameters(component: str, net) -> list[str]:
    """Every parameter of an fp16 network is fp16, except the registry's ``keep_fp32`` ones, which are fp32 and
    exist. Returns the fp32 names."""
    keep = registry.component(component).keep_fp32
    dtypes = {name: p.dtype for name, p in net.parameters_and_names()}
    kept = [name for name in dtypes if any(match(p, name) is not None for p in keep)]
    assert bool(kept) == bool(keep), (keep, kept)
    assert all(dtypes[k] == ms.float32 for k in kept)
    assert all(d == ms.float16 for k, d in dtypes.items() if k not in kept)
    return kept


def check_against_torch(view: str, net, model, arrays: dict, dtype: str = "fp32", cell=None):
    """The MindSpore view against the fp32 torch reference on the same inputs: same shape, the compute dtype out,
    finite, relative L2 within the dtype's tolerance (fp32: every row too, so a padded row cannot hide; fp16: and
    not equal, so it really ran in fp16). Returns (ours as float32, reference)."""
    out = ms_output(view, net, arrays, cell)
    ref = torch_forward(view, model, arrays)
    assert out.shape == ref.shape, (view, out.shape, ref.shape)
    assert out.dtype == {"fp32": np.float32, "fp16": np.float16}[dtype], (view, out.dtype)
    out = out.astype(np.float32)
    assert np.isfinite(out).all(), view
    tol = TOLERANCES[dtype]
    err = rel_l2(out, ref)
    assert err <= tol, (view, dtype, err)
    if dtype == "fp32":
        rows = [rel_l2(out[i], ref[i]) for i in range(len(out))]
        assert max(rows) <= tol, (view, rows)
    else:
        assert err > 0, view
    return out, ref


def check_view(view: str, model, dtype: str = "fp32", net=None):
    """The standard checks of one view on a tiny model, in the current execution mode: the network (built from the
    model's weights unless given) against torch on a batch of ``BATCH`` (rows with different caption lengths and
    timesteps), the output shape the graph interface declares, and (PYNATIVE) the first row run alone (batch 1)
    giving its batch row; every row of the batch is held to the torch bound already."""
    component = registry.view(view).component
    net = net if net is not None else ms_network(component, model, dtype)
    if dtype == "fp16":
        check_fp16_parameters(component, net)
    arrays = view_inputs(view, model)
    cell = registry.view(view).cell(net)  # one Cell: GRAPH mode compiles once per input shape
    out, _ = check_against_torch(view, net, model, arrays, dtype, cell)
    _, (spec,) = interface(view, model)
    assert out.shape == spec.shape, (view, out.shape, spec.shape)
    assert len(out) > 1
    if ms.get_context("mode") == ms.PYNATIVE_MODE:  # in GRAPH mode a second shape is a second compile
        alone = ms_output(view, net, {k: v[:1] for k, v in arrays.items()}, cell).astype(np.float32)
        assert rel_l2(alone[0], out[0]) <= TOLERANCES[dtype], (view, dtype)  # batch 1 computes the same row
    return out


# ------------------------------------------------------------------- fixed inputs of the component tests

def transformer_cases(seed: int = 1) -> list[tuple[str, dict]]:
    """(name, arrays) on a square and a non-square grid, with a short caption (3 of 12 tokens) in the second batch
    row, at timesteps 999 and 1."""
    rng = np.random.default_rng(seed)
    cases = []
    for h, w in ((8, 8), (6, 10)):
        x = rng.standard_normal((2, 4, h, w)).astype(np.float32)
        y = rng.standard_normal((2, 12, 24)).astype(np.float32)
        mask = np.ones((2, 12), np.float32)
        mask[1, 3:] = 0
        cases.append((f"{h * 8}x{w * 8}px", {"hidden_states": x, "timestep": np.array([999.0, 1.0], np.float32),
                                             "encoder_hidden_states": y, "encoder_attention_mask": mask}))
    return cases


def t5_inputs(vocab_size: int, batch: int = 2, length: int = 12, short: int = 5, seed: int = 2) -> dict:
    """Token ids with EOS (1) and padding (0) after ``short`` tokens in the second row, and its mask."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab_size, size=(batch, length)).astype(np.int32)
    mask = np.ones((batch, length), np.int32)
    ids[1, short - 1] = 1
    ids[1, short:] = 0
    mask[1, short:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def vae_inputs(config: dict, size: int = 32, seed: int = 3) -> dict:
    """An image in [-1, 1] and a latent of the matching size (the inputs of both VAE views)."""
    rng = np.random.default_rng(seed)
    image = np.clip(rng.standard_normal((1, config["in_channels"], size, size)), -1, 1).astype(np.float32)
    down = scale_factor(config)
    latent = rng.standard_normal((1, config["latent_channels"], size // down, size // down)).astype(np.float32)
    return {"image": image, "latent": latent}
