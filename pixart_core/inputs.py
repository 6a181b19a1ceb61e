"""The one generator of sample inputs, shared by parity cases and export validation: seeded arrays for a graph's
tensors, with realistic ranges (T5-like caption embeddings, padded masks, latents as the pipeline decodes them).
"""
from __future__ import annotations

import math

import numpy as np

from . import dtypes
from .registry import TensorSpec

EOS = 1


def sample_inputs(specs: list[TensorSpec], config: dict, seed: int = 0, timestep: float | None = None):
    """One array per spec, by name. ``timestep``: every row at that timestep (a parity case); by default the rows
    spread over 999..1."""
    rng = np.random.default_rng(seed)
    arrays = []
    for t in specs:
        dtype = dtypes.numpy_dtype(t.dtype)
        if t.name in ("encoder_attention_mask", "attention_mask"):
            arrays.append(padding_mask(t.shape, dtype))
        elif t.name == "input_ids":
            ids = rng.integers(3, config["vocab_size"], size=t.shape)
            mask = padding_mask(t.shape, np.int32)
            ids = np.where(mask > 0, ids, 0)
            for row, length in enumerate(mask.sum(axis=1)):
                ids[row, length - 1] = config.get("eos_token_id", EOS)
            arrays.append(ids.astype(np.int32))
        elif t.name == "timestep":
            values = (np.full(t.shape[0], timestep) if timestep is not None
                      else np.linspace(999, 1, t.shape[0]).round())
            arrays.append(values.astype(np.float32))
        elif t.name == "latent":  # what the pipeline decodes: latents / scaling_factor
            scale = config.get("scaling_factor") or 1.0
            arrays.append((rng.standard_normal(t.shape) / scale).astype(np.float32))
        elif t.name == "image":
            arrays.append(rng.uniform(-1, 1, size=t.shape).astype(np.float32))
        elif t.name == "encoder_hidden_states":
            arrays.append((rng.standard_normal(t.shape) * 0.2).astype(np.float32))
        else:
            arrays.append(rng.standard_normal(t.shape).astype(np.float32))
    return arrays


def padding_mask(shape, dtype) -> np.ndarray:
    """Row i keeps a different number of leading tokens: the first row 1 (an empty prompt's EOS), the last all."""
    rows, length = shape
    mask = np.zeros(shape, dtype)
    for i in range(rows):
        keep = length if i == rows - 1 else max(1, math.ceil(length * i / max(rows - 1, 1)) // 2 or 1)
        mask[i, :keep] = 1
    return mask
