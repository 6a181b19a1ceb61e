"""Tiny random PixArt-Sigma components built with the torch references (diffusers / transformers), saved in the
real source layouts. Weights are redrawn from N(0, std) so that every parameter matters in a comparison (the
default initialization leaves several at zero or one)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_PIXART = dict(num_attention_heads=2, attention_head_dim=8, num_layers=2, in_channels=4, out_channels=8,
                   patch_size=2, sample_size=8, caption_channels=24, cross_attention_dim=16,
                   use_additional_conditions=False, interpolation_scale=1.0, norm_type="ada_norm_single",
                   norm_elementwise_affine=False, norm_eps=1e-6, attention_bias=True,
                   activation_fn="gelu-approximate", num_embeds_ada_norm=1000)


def randomize_(module: torch.nn.Module, seed: int, std: float) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return module.eval()


def tiny_pixart(seed: int = 0, std: float = 0.1, **overrides):
    """A diffusers ``PixArtTransformer2DModel`` with random weights."""
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(seed)
    model = PixArtTransformer2DModel(**{**TINY_PIXART, **overrides})
    return randomize_(model, seed, std)


def save_pixart_diffusers(model, folder: Path) -> Path:
    model.save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def original_state_dict(model, sample_size: int | None = None, y_tokens: int = 300, seed: int = 0) -> dict:
    """The original ``PixArtMS`` state dict of a diffusers model: our key map run backwards, plus the two
    buffers the released .pth files carry (``pos_embed`` for ``sample_size``, ``y_embedder.y_embedding``)."""
    from converters.engine import run_in_memory
    from converters.keymaps.pixart import pixart_original
    from mindspore_nets.pixart import sincos_pos_embed

    cfg = model.config
    state = run_in_memory(pixart_original().inverse(), {k: v.detach() for k, v in model.state_dict().items()})
    sample_size = sample_size or cfg.sample_size
    grid = sample_size // cfg.patch_size
    dim = cfg.num_attention_heads * cfg.attention_head_dim
    state["pos_embed"] = torch.from_numpy(
        sincos_pos_embed(dim, grid, grid, grid, sample_size / 64)).unsqueeze(0)
    gen = torch.Generator().manual_seed(seed + 1)
    state["y_embedder.y_embedding"] = torch.randn(y_tokens, cfg.caption_channels, generator=gen) * 0.1
    return state


def save_pixart_original(model, path: Path, **kw) -> Path:
    """An original-layout training checkpoint: ``{"state_dict": ...}`` as PixArt-sigma's save_checkpoint writes."""
    torch.save({"state_dict": original_state_dict(model, **kw)}, path)
    return Path(path)


def write_json(path: Path, data: dict) -> Path:
    Path(path).write_text(json.dumps(data, indent=2))
    return Path(path)
