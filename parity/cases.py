"""Seeded inputs of a parity run and one forward pass on each side (torch reference, MindSpore network) per view.

``build_cases`` makes the realistic inputs of a parity run: the view's graph interface at an aspect-ratio bucket
(or a given size), 300 caption tokens, several timesteps, filled by the one sample-input generator
(``pixart_core.inputs``) that export validation uses too.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mindspore_nets.buckets import bucket_table
from pixart_core import registry
from pixart_core.components.vae import scale_factor
from pixart_core.inputs import sample_inputs


@dataclass
class Case:
    name: str
    arrays: dict


def latent_size(config: dict, height=None, width=None, bucket: str = "1.0", vae_scale: int = 8):
    """(h, w) latent of the requested pixel size, or of ``bucket`` in the model's resolution table; models whose
    sample size has no table (tiny test models) use their square native size."""
    if height and width:
        return height // vae_scale, width // vae_scale
    sample_size = config["sample_size"]
    try:
        h, w = bucket_table(sample_size)[bucket]
    except (KeyError, ValueError):
        return sample_size, sample_size
    return h // vae_scale, w // vae_scale


def build_cases(view: str, config: dict, *, height=None, width=None, bucket: str = "1.0", latent_hw=None,
                max_length: int = 300, timesteps=(999.0, 500.0, 1.0), seed: int = 0) -> list[Case]:
    """One case per timestep for the transformer, one case otherwise; batch 1 (B = 2 for the CFG pair).
    ``latent_hw``: the latent grid of every spatial view (the CLI's resolved ``--bucket``), before any other size."""
    entry = registry.view(view)
    inputs, hw = _interface(view, config, height, width, bucket, latent_hw, max_length)

    def case(name, timestep=None):
        arrays = sample_inputs(inputs, config, seed, timestep=timestep)
        return Case(name, dict(zip(entry.inputs, arrays)))

    if view == "transformer":
        return [case(f"{hw[0] * 8}x{hw[1] * 8}px t={t:g}", t) for t in timesteps]
    if view == "text_encoder":
        return [case(f"2x{max_length} tokens")]
    first = inputs[0].shape
    if view == "vae_encoder":
        return [case(f"{first[2]}x{first[3]}px image")]
    return [case(f"{first[2]}x{first[3]} latent")]


def case_shapes(view: str, config: dict, *, height=None, width=None, bucket: str = "1.0", latent_hw=None,
                max_length: int = 300, **_) -> dict[str, tuple]:
    """Input name -> shape of ``build_cases``' cases, without making them (memory estimates)."""
    inputs, _ = _interface(view, config, height, width, bucket, latent_hw, max_length)
    return {spec.name: tuple(spec.shape) for spec in inputs}


def _interface(view, config, height, width, bucket, latent_hw, max_length):
    entry = registry.view(view)
    if latent_hw is not None and entry.spatial:
        hw = tuple(latent_hw)
    elif entry.component == "vae":
        scale = scale_factor(config)
        hw = ((height or config["sample_size"]) // scale, (width or config["sample_size"]) // scale)
    else:
        hw = latent_size(config, height, width, bucket) if entry.spatial else None
    inputs, _ = entry.interface(config, 1, max_length, hw, "float32")
    return inputs, hw


def ms_forward(view: str, net, arrays: dict) -> np.ndarray:
    """The MindSpore side of one case, as float32 numpy (the view's Cell, in the current execution mode)."""
    from mindspore_nets.loading import run_cell

    entry = registry.view(view)
    return run_cell(entry.cell(net), [arrays[n] for n in entry.inputs]).astype(np.float32)
