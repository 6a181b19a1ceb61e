"""``verify``: a component folder, or every component folder of a pipeline, against its manifest."""
from __future__ import annotations

from pathlib import Path

from pixart_core.errors import SourceError
from pixart_core.manifests import MANIFEST

from .manifest import verify_folder


def verify(folder) -> dict:
    folder = Path(folder)
    if (folder / MANIFEST).is_file():
        parts = {".": folder}
    else:
        parts = {p.name: p for p in sorted(folder.iterdir()) if (p / MANIFEST).is_file()} if folder.is_dir() else {}
    if not parts:
        raise SourceError(f"{folder}: no {MANIFEST} here or in its sub-folders; not a converted folder")
    report = {name: verify_folder(path) for name, path in parts.items()}
    return {"folder": str(folder), "ok": not any(report.values()), "components": report}
