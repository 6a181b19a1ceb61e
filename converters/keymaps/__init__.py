"""One spec per (source layout, component). ``spec_for(layout, **options)`` builds it."""
from __future__ import annotations

from .pixart import pixart_diffusers, pixart_original

# layout -> (component, spec factory)
LAYOUTS = {
    "pixart_original": ("transformer", pixart_original),
    "pixart_diffusers": ("transformer", pixart_diffusers),
}


def spec_for(layout: str, **options):
    component, factory = LAYOUTS[layout]
    return factory(**options) if layout == "pixart_original" else factory()
