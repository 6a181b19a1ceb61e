"""Key map of the AutoencoderKL from diffusers layouts: identity on current names, plus the older attention
naming generation (``query/key/value/proj_attn``) of diffusers < 0.14 checkpoints."""
from __future__ import annotations

from .rules import Rename, Spec, identity

OLD = "older diffusers attention naming"


def vae_diffusers() -> Spec:
    att = "{part}.mid_block.attentions.{n}"
    rules = (
        Rename(f"{att}.query.{{p}}", f"{att}.to_q.{{p}}", OLD, read_only=True),
        Rename(f"{att}.key.{{p}}", f"{att}.to_k.{{p}}", OLD, read_only=True),
        Rename(f"{att}.value.{{p}}", f"{att}.to_v.{{p}}", OLD, read_only=True),
        Rename(f"{att}.proj_attn.{{p}}", f"{att}.to_out.0.{{p}}", OLD, read_only=True),
        identity(),
    )
    return Spec("vae_diffusers", "vae", rules)


def vae_mindspore() -> Spec:
    """Our MindSpore folders: diffusers' current names."""
    return Spec("vae_mindspore", "vae", (identity(),))
