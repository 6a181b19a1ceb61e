"""One export spec per component: the graph's pinned inputs and outputs (names, shapes, dtypes) generated from the
component's config and a bucket, its tolerance, its Lite precision mode, and the thin Cell that is exported.

Like optimum's ``OnnxConfig``: the spec, not the network, decides the interface of the artifact, so the runtime
and the Lite converter config can be written from the spec alone and the exported graph is checked against it.

Shapes (B = 2 x batch: classifier-free guidance runs the negative and the positive prompt in one call; N = batch):

- ``transformer``: hidden_states (B, C, h, w) f32, timestep (B,) f32, encoder_hidden_states (B, L, caption_channels)
  f32, encoder_attention_mask (B, L) f32 -> sample (B, out_channels, h, w); one graph per bucket latent size, or
  one graph with h, w dynamic ("gears").
- ``text_encoder``: input_ids (B, L) int32, attention_mask (B, L) int32 -> last_hidden_state (B, L, d_model).
- ``vae_decoder``: latent (N, latent_channels, h, w) f32 -> sample (N, out_channels, H, W), one graph per bucket.
- ``vae_encoder``: image (N, in_channels, H, W) f32 -> moments (N, 2 * latent_channels, h, w), one per bucket.

Inputs are fp32 (int32 for token ids and the T5 mask) whatever the compute dtype: the networks cast inside, and the
runtime feeds numpy fp32. Outputs come in the compute dtype.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from pixart_core import dtypes, registry
from pixart_core.registry import TensorSpec

EAGER_TOLERANCE = 1e-6  # GraphCell vs the eager MindSpore network of the same dtype (relative L2)


@dataclass
class GraphSpec:
    """One exported MindIR: its file stem, interface, the buckets it serves and (gears only) its shape profiles."""

    component: str
    stem: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    buckets: list[str]
    gears: list[tuple[int, ...]] | None = None  # values of the -1 dims, one tuple per gear, in input order
    latent_hw: tuple[int, int] | None = None

    def concrete_inputs(self, gear: tuple[int, ...] | None = None) -> list[TensorSpec]:
        """The inputs with the -1 dims filled from one gear."""
        return _fill(self.inputs, gear)

    def concrete_outputs(self, gear: tuple[int, ...] | None = None) -> list[TensorSpec]:
        return _fill(self.outputs, gear)

    def shapes_to_check(self) -> list[tuple[int, ...] | None]:
        return list(self.gears) if self.gears else [None]

    def validation_cases(self, mode: str, vae_scale: int) -> list["Case"]:
        """What validation runs. ``full``: the artifact at every exported shape (each gear). ``proxy``, for hosts
        that cannot run the graph at its size (MindSpore's CPU graph runtime keeps every intermediate tensor:
        about 1.2 GB per XL/2 block at 512x512 already): a gears graph runs at a small latent size, a static one
        is exported once more at that size from the same Cell and that copy runs; the artifact's interface and
        stored weights are still checked byte for byte."""
        if mode == "full" or (self.latent_hw is None and not self.gears):
            return [Case(f"gear {list(g)}" if g else "exported shape", self.concrete_inputs(g),
                         self.concrete_outputs(g), True) for g in self.shapes_to_check()]
        if mode != "proxy":
            raise ValueError(f"unknown validation mode {mode!r}")
        if self.gears:
            small = min(self.gears, key=lambda g: g[0] * g[1])
            small = tuple(min(d, PROXY_LATENT) for d in small)
            return [Case(f"proxy {small[0]}x{small[1]} latent (gears graph)", self.concrete_inputs(small),
                         self.concrete_outputs(small), True)]
        h, w = self.latent_hw
        side = min(PROXY_LATENT, VAE_PROXY_LATENT) if self.component.startswith("vae") else PROXY_LATENT
        small = (min(h, side), min(w, side))
        if small == (h, w):
            return self.validation_cases("full", vae_scale)
        resize = _resizer(self.latent_hw, small, vae_scale)
        return [Case(f"proxy {small[0]}x{small[1]} latent (same Cell exported at that size)",
                     [resize(t) for t in self.inputs], [resize(t) for t in self.outputs], False)]


PROXY_LATENT = 16  # latent side of proxy validation (a multiple of every patch size in use)
# the VAE's: MindSpore's CPU Conv2D (kept in exported graphs for Ascend) takes about 100x torch's time, and its GRAPH
# mode holds the intermediates: running the SDXL decoder's proxy graph added 2.2 GiB at a 16x16 latent, 0.55 GiB
# (32 s) at 8x8, 0.15 GiB (8 s) at 4x4 (research/s20/reload_probe.py); 4x4 still runs every op (32^2 pixels)
VAE_PROXY_LATENT = 4


@dataclass
class Case:
    label: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    runs_artifact: bool  # False: a proxy graph exported from the same Cell at a smaller size (or depth)
    num_layers: int | None = None  # a depth proxy: the network cut to its first blocks


def _resizer(latent_from: tuple[int, int], latent_to: tuple[int, int], scale: int):
    """Replace the spatial dims of 4-D specs: latent-sized ones by ``latent_to``, pixel-sized ones by it x scale."""
    pixel_from = (latent_from[0] * scale, latent_from[1] * scale)

    def resize(spec: TensorSpec) -> TensorSpec:
        if len(spec.shape) != 4:
            return spec
        if tuple(spec.shape[2:]) == tuple(latent_from):
            return TensorSpec(spec.name, (*spec.shape[:2], *latent_to), spec.dtype)
        if tuple(spec.shape[2:]) == pixel_from:
            return TensorSpec(spec.name, (*spec.shape[:2], latent_to[0] * scale, latent_to[1] * scale), spec.dtype)
        return spec

    return resize


def _fill(specs: list[TensorSpec], gear) -> list[TensorSpec]:
    if gear is None:
        return list(specs)
    values = iter(gear)
    out = []
    for spec in specs:
        shape = tuple(next(values) if d == -1 else d for d in spec.shape)
        out.append(TensorSpec(spec.name, shape, spec.dtype))
    return out


# ----------------------------------------------------------------------------------------------------------------
# buckets

# ----------------------------------------------------------------------------------------------------------------
# the in-graph position embedding of a gears graph

class DynamicPatchEmbed(nn.Cell):
    """The transformer's patch embedding with the sin-cos position embedding computed in the graph from the
    token grid's (dynamic) size, for a single graph serving every gear.

    The static network computes the table in float64 numpy at trace time, which a dynamic shape cannot do; here it
    is fp32 ops (same formula: w first, each axis normalised to ``base_size`` and divided by the interpolation
    scale). The difference is a few fp32 ulps of the angles; validation measures it against the static network.
    """

    def __init__(self, patch_embed):
        super().__init__(auto_prefix=False)
        self.proj = patch_embed.proj
        self.dim = patch_embed.dim
        self.base_size = float(patch_embed.base_size)
        self.interpolation_scale = float(patch_embed.interpolation_scale)
        quarter = self.dim // 4
        omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / (self.dim / 4.0))
        self.omega = ms.Tensor(omega.astype(np.float32)).reshape(1, -1)

    def _axis(self, positions):
        angles = positions.reshape(-1, 1) * self.omega
        return ops.concat((ops.sin(angles), ops.cos(angles)), axis=1)

    def construct(self, x):
        x = self.proj(x)
        b, c, h, w = ops.shape(x)
        tokens = x.reshape(b, c, -1).swapaxes(1, 2)
        hf = ops.cast(ops.scalar_to_tensor(h), ms.float32)
        wf = ops.cast(ops.scalar_to_tensor(w), ms.float32)
        pos_h = ops.arange(0, h, dtype=ms.float32) * (self.base_size / self.interpolation_scale) / hf
        pos_w = ops.arange(0, w, dtype=ms.float32) * (self.base_size / self.interpolation_scale) / wf
        grid_h = pos_h.reshape(-1, 1) * ops.ones_like(pos_w).reshape(1, -1)
        grid_w = ops.ones_like(pos_h).reshape(-1, 1) * pos_w.reshape(1, -1)
        pos = ops.concat((self._axis(grid_w), self._axis(grid_h)), axis=1)
        return (tokens.astype(ms.float32) + pos).astype(x.dtype)


# ----------------------------------------------------------------------------------------------------------------
# component specs

@dataclass
class ComponentSpec:
    name: str  # the view
    config: dict  # the converted folder's config.json
    dtype: str  # "fp32" | "fp16": compute dtype of the exported graph
    precision_mode: str  # Lite [ascend_context] precision_mode
    batch: int
    max_length: int
    vae_scale: int = 8
    graphs: list[GraphSpec] = field(default_factory=list)

    @property
    def out_dtype(self) -> str:
        return dtypes.canonical(self.dtype)


def default_precision_mode(view: str, dtype: str) -> str:
    """Lite's default ``enforce_fp16`` is never left implicit: each view says its mode per dtype in the registry
    (T5, which overflows in fp16, and every fp32 graph get ``preferred_fp32``; an fp16 graph gets
    ``enforce_origin``, which keeps its exported fp32 islands: softmax, norms, T5's ``wo``)."""
    return registry.view(view).lite_precision[dtype]


def build_component(name: str, config: dict, dtype: str, batch: int, max_length: int,
                    buckets: dict[str, tuple[int, int]] | None, vae_scale: int, gears: bool,
                    precision_mode: str | None = None) -> ComponentSpec:
    """The spec of one view with its graphs; ``buckets`` maps the chosen ratios to pixel sizes."""
    view = registry.view(name)
    spec = ComponentSpec(name, config, dtype, precision_mode or default_precision_mode(name, dtype), batch,
                         max_length, vae_scale)

    def io(hw):
        return view.interface(config, batch, max_length, hw, spec.out_dtype)

    if not view.spatial:
        ins, outs = io(None)
        spec.graphs.append(GraphSpec(name, name, ins, outs, []))
        return spec
    groups = group_by_size(buckets or {}, vae_scale)
    if gears:
        ins, outs = io((-1, -1))
        spec.graphs.append(GraphSpec(name, f"{name}_gears", ins, outs, [k for ks in groups.values() for k in ks],
                                     gears=[hw for hw in groups]))
        return spec
    for (h, w), keys in groups.items():
        ins, outs = io((h, w))
        spec.graphs.append(GraphSpec(name, f"{name}_{keys[0]}", ins, outs, keys, latent_hw=(h, w)))
    return spec


def group_by_size(buckets: dict[str, tuple[int, int]], vae_scale: int) -> dict[tuple[int, int], list[str]]:
    """Latent (h, w) -> the bucket keys of that size (ratios that round to one size share a graph)."""
    groups: dict[tuple[int, int], list[str]] = {}
    for key, (h, w) in buckets.items():
        groups.setdefault((h // vae_scale, w // vae_scale), []).append(key)
    return groups
