"""One spec per (source layout, component). ``spec_for(layout, **options)`` builds it."""
from __future__ import annotations

from .pixart import pixart_diffusers, pixart_original
from .t5 import t5_transformers
from .vae import vae_diffusers

# layout -> spec factory; options a factory does not take are not passed to it
LAYOUTS = {
    "pixart_original": pixart_original,
    "pixart_diffusers": pixart_diffusers,
    "t5_transformers": t5_transformers,
    "vae_diffusers": vae_diffusers,
}


def spec_for(layout: str, keep_y_embedding: bool = True):
    if layout == "pixart_original":
        return pixart_original(keep_y_embedding=keep_y_embedding)
    return LAYOUTS[layout]()
