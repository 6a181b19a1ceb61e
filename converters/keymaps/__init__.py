"""One spec per (source layout, component); the registry (``pixart_core.components``) says which layouts each
component has. ``spec_for(layout, **options)`` builds one."""
from __future__ import annotations

from pixart_core import registry


def spec_for(layout: str, **options):
    """The key-map Spec of ``layout``; options its factory does not take (``keep_y_embedding``) are ignored."""
    return registry.layout(layout).make_spec(**options)
