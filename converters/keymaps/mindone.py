"""Key map of PixArt-Sigma checkpoints written by mindone's training (``examples/pixart_sigma``, removed from mindone
in October 2025; read at zhtmike/mindone 1e0c5b3c).

What those files hold, and the rule for each:

- the transformer under the original ``PixArtMS`` names (``blocks.N.attn.qkv.weight``, ``t_block.1.weight``):
  ``ms.save_checkpoint(network.trainable_params())`` writes them unprefixed, without ``pos_embed`` and without the
  frozen ``y_embedder.y_embedding``; the original layout's rules convert them;
- a whole training network (``NetworkWithLoss(auto_prefix=False)``) also holds the frozen VAE and T5 unprefixed:
  dropped by name when converting the transformer (VAE and T5 both have ``encoder.*`` names; the sub-name tells
  them apart);
- resume checkpoints of mindone's trainers add optimizer, loss-scale and step entries; EMA copies are ``ema.*``
  (``--ema`` converts those instead), EMA files of the pre-merge callback carry the plain names;
- KV compression: mindone's ``sr`` conv has no bias and its LayerNorm is not affine (eps 1e-7), so the original
  layout's ``attn.sr`` / ``attn.norm`` tensors cannot be filled faithfully: refused. Its ``qk_norm`` LayerNorms are
  not affine either and leave no tensor: such a checkpoint cannot be told from one without qk_norm.

Anything else stops the plan as an unknown entry.
"""
from __future__ import annotations

from dataclasses import replace

from .pixart import Y_EMBEDDING, pixart_original
from .rules import Alias, Drop, Refuse, Rename, Spec, Split

OPTIMIZER = "optimizer state"
NOT_WEIGHTS = (
    Drop("adam_m.{path}", f"AdamW first moment ({OPTIMIZER})"),
    Drop("adam_v.{path}", f"AdamW second moment ({OPTIMIZER})"),
    Drop("moment1.{path}", f"Adam first moment ({OPTIMIZER})"),
    Drop("moment2.{path}", f"Adam second moment ({OPTIMIZER})"),
    Drop("exp_avg.{path}", f"AdamW first moment ({OPTIMIZER})"),
    Drop("exp_avg_sq.{path}", f"AdamW second moment ({OPTIMIZER})"),
    Drop("max_exp_avg_sq.{path}", f"AMSGrad moment ({OPTIMIZER})"),
    Drop("master.{path}", f"fp32 master copy of a bf16 weight ({OPTIMIZER})"),
    Drop("grad_accumulated_.{path}", "gradient-accumulation buffer"),
    Drop("swap.{path}", "EMA swap buffer"),
    *(Drop(f"{{path}}_{suffix}", f"CAME factored moment ({OPTIMIZER})")
      for suffix in ("v_row", "v_col", "v_res_row", "v_res_col", "v", "m")),
    *(Drop(name, "training step / learning-rate / loss-scale state")
      for name in ("global_step", "learning_rate", "beta1_power", "beta2_power", "scale_sense", "loss_scale",
                   "epoch_num", "step_num", "cur_step", "accum_step", "updates", "current_iterator_step",
                   "last_overflow_iterator_step")),
)
VAE_REASON = "frozen VAE weight saved with the training network (convert the VAE from its own folder)"
T5_REASON = "frozen T5 weight saved with the training network (convert the text encoder from its own folder)"
FROZEN = (
    *(Drop(p, VAE_REASON) for p in ("encoder.conv_in.{p}", "encoder.down_blocks.{path}", "encoder.mid_block.{path}",
                                    "encoder.conv_norm_out.{p}", "encoder.conv_out.{p}", "decoder.{path}",
                                    "quant_conv.{p}", "post_quant_conv.{p}")),
    *(Drop(p, T5_REASON) for p in ("shared.weight", "encoder.embed_tokens.weight", "encoder.block.{path}",
                                   "encoder.final_layer_norm.weight")),
)
KV_REASON = ("mindone's KV compression (a conv without bias, a LayerNorm without weights, eps 1e-7) has no "
             "faithful equivalent in PixArt's layout; not converted")


def pixart_mindone_train(keep_y_embedding: bool = True, ema: bool = False) -> Spec:
    weights = list(pixart_original(keep_y_embedding).rules)
    if not ema:
        rules = (*NOT_WEIGHTS, *FROZEN, Drop("ema.{path}", "EMA copy (--ema converts it instead)"), *_kv(""),
                 *weights)
        return Spec("pixart_mindone_train", "transformer", rules)
    # --ema: the ema.* copies are the weights; the trained ones are dropped. The frozen caption-dropout embedding
    # has no EMA copy unless the EMA covered every parameter, in which case both must be equal.
    y_rule = next(r for r in weights if r.sources == ("y_embedder.y_embedding",))
    trained = [r for r in weights if r is not y_rule]
    y_ema = (Alias("ema.y_embedder.y_embedding", "y_embedder.y_embedding", Y_EMBEDDING,
                   "EMA copy of the frozen caption-dropout embedding", extra=True) if keep_y_embedding else
             Drop("ema.y_embedder.y_embedding", "caption-dropout embedding dropped by --drop-y-embedding"))
    rules = (*NOT_WEIGHTS, *FROZEN, *_kv("ema."), y_ema, y_rule, *(_prefixed(r, "ema.") for r in trained),
             *(Drop(s, "trained (non-EMA) weight; --ema converts the ema.* copy") for r in trained
               for s in r.sources))
    return Spec("pixart_mindone_train", "transformer", rules)


def _kv(prefix: str):
    return (Refuse(f"{prefix}blocks.{{n}}.attn.sr.{{p}}", KV_REASON),
            Refuse(f"{prefix}blocks.{{n}}.attn.norm.{{p}}", KV_REASON))


def _prefixed(rule, prefix: str):
    if isinstance(rule, (Rename, Split, Drop)):
        return replace(rule, source=prefix + rule.source)
    raise TypeError(f"no EMA form for {type(rule).__name__}")
