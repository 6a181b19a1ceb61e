"""Version stamps written into every manifest."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

TOOL = "pixart-mindspore"


def versions(*packages: str) -> dict:
    """{package: installed version or None}, the tool's own first."""
    out = {}
    for name in (TOOL, *packages):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out
