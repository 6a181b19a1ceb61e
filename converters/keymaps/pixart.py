"""Key maps of the PixArt-Sigma transformer.

Target names are diffusers' ``PixArtTransformer2DModel`` names (our MindSpore network uses them). The original
``PixArtMS`` layout needs renames, the fused ``qkv`` / ``kv_linear`` splits (row order q,k,v and k,v: the
original reshapes to (B, N, 3, C) and (B, N, 2, C)), one dropped buffer and one kept extra. Names diffusers has
no word for are ours: ``attn1.sr`` / ``attn1.sr_norm`` (KV compression) and ``attn1.q_norm`` / ``attn1.k_norm``
(qk_norm over all channels, as the original computes it; diffusers' ``norm_q`` is per head and not the same).
"""
from __future__ import annotations

import numpy as np

from .rules import Drop, Generated, Rename, Spec, Split, identity

Y_EMBEDDING = "caption_projection.y_embedding"

KV_NOTE = "KV compression: only with kv_compress_layers in the config (--config)"
QK_NOTE = "qk_norm: only with qk_norm=true in the config (--config)"


def pixart_original(keep_y_embedding: bool = True) -> Spec:
    b = "transformer_blocks.{n}"
    y_rule = (Rename("y_embedder.y_embedding", Y_EMBEDDING, "caption-dropout embedding, kept for training",
                     extra=True)
              if keep_y_embedding else
              Drop("y_embedder.y_embedding", "caption-dropout embedding dropped by --drop-y-embedding"))
    rules = (
        Drop("pos_embed", "fixed sin-cos buffer; recomputed for every token grid"),
        y_rule,
        Rename("x_embedder.proj.{p}", "pos_embed.proj.{p}"),
        Rename("t_embedder.mlp.0.{p}", "adaln_single.emb.timestep_embedder.linear_1.{p}"),
        Rename("t_embedder.mlp.2.{p}", "adaln_single.emb.timestep_embedder.linear_2.{p}"),
        Rename("t_block.1.{p}", "adaln_single.linear.{p}"),
        Rename("y_embedder.y_proj.fc1.{p}", "caption_projection.linear_1.{p}"),
        Rename("y_embedder.y_proj.fc2.{p}", "caption_projection.linear_2.{p}"),
        Rename("blocks.{n}.scale_shift_table", f"{b}.scale_shift_table"),
        Split("blocks.{n}.attn.qkv.{p}", (f"{b}.attn1.to_q.{{p}}", f"{b}.attn1.to_k.{{p}}", f"{b}.attn1.to_v.{{p}}")),
        Rename("blocks.{n}.attn.proj.{p}", f"{b}.attn1.to_out.0.{{p}}"),
        Rename("blocks.{n}.attn.q_norm.{p}", f"{b}.attn1.q_norm.{{p}}", QK_NOTE),
        Rename("blocks.{n}.attn.k_norm.{p}", f"{b}.attn1.k_norm.{{p}}", QK_NOTE),
        Rename("blocks.{n}.attn.sr.{p}", f"{b}.attn1.sr.{{p}}", KV_NOTE),
        Rename("blocks.{n}.attn.norm.{p}", f"{b}.attn1.sr_norm.{{p}}", KV_NOTE),
        Rename("blocks.{n}.cross_attn.q_linear.{p}", f"{b}.attn2.to_q.{{p}}"),
        Split("blocks.{n}.cross_attn.kv_linear.{p}", (f"{b}.attn2.to_k.{{p}}", f"{b}.attn2.to_v.{{p}}")),
        Rename("blocks.{n}.cross_attn.proj.{p}", f"{b}.attn2.to_out.0.{{p}}"),
        Rename("blocks.{n}.mlp.fc1.{p}", f"{b}.ff.net.0.proj.{{p}}"),
        Rename("blocks.{n}.mlp.fc2.{p}", f"{b}.ff.net.2.{{p}}"),
        Rename("final_layer.linear.{p}", "proj_out.{p}"),
        Rename("final_layer.scale_shift_table", "scale_shift_table"),
    )
    return Spec("pixart_original", "transformer", rules)


def pixart_diffusers() -> Spec:
    """diffusers names are our names; anything the network does not have is reported by the plan."""
    return Spec("pixart_diffusers", "transformer", (identity(),))


def pixart_mindspore() -> Spec:
    """Our MindSpore folders: diffusers' names, plus the extra the original route keeps."""
    return Spec("pixart_mindspore", "transformer", (
        Rename(Y_EMBEDDING, Y_EMBEDDING, "caption-dropout embedding, kept for training", extra=True),
        identity(),
    ))


def original_pos_embed(config: dict) -> np.ndarray:
    """The original ``PixArtMS``'s ``pos_embed`` buffer, (1, tokens, hidden) fp32, for the model's sample size and
    interpolation scale (what its constructor computes; the one implementation the demo and tests use too)."""
    from mindspore_nets.config import PixArtConfig
    from mindspore_nets.pixart import sincos_pos_embed

    cfg = PixArtConfig.from_dict(config)
    grid = cfg.sample_size // cfg.patch_size
    return sincos_pos_embed(cfg.hidden_size, grid, grid, cfg.base_size, cfg.pos_interpolation_scale)[None]


ORIGINAL_Y = "y_embedder.y_embedding"


def complete_original(plan, config: dict) -> None:
    """What an original ``PixArtMS`` state dict holds beyond the weights (it loads with ``strict=True``): the
    ``pos_embed`` buffer, recomputed by a named rule; ``y_embedder.y_embedding``, which cannot be recomputed (it is
    the unconditional caption at inference), so a source without it is refused."""
    pos = original_pos_embed(config)
    plan.add_generated(Generated("pos_embed", pos.shape, "float32", lambda: original_pos_embed(config),
                                 f"sin-cos table for sample_size {config['sample_size']}, interpolation_scale "
                                 f"{config.get('interpolation_scale')}"))
    y = next((t for t in plan.targets if t.name == ORIGINAL_Y), None)
    if y is None:
        plan.problems.append(
            f"the original layout needs {ORIGINAL_Y} (the caption-dropout embedding, used as the unconditional "
            f"caption) and the source has no {Y_EMBEDDING}: a checkpoint of the trainable parameters only; pass "
            "--y-embedding-from with the checkpoint training started from, or use --to diffusers")
    elif len(y.shape) != 2 or y.shape[1] != config["caption_channels"]:
        plan.problems.append(f"{ORIGINAL_Y}: {y.shape} from {', '.join(y.group.sources)}, expected (tokens, "
                             f"{config['caption_channels']})")
