"""``verify``: a converted component folder, every component folder of a converted pipeline, or an export folder,
against its manifest. A manifest.json this tool did not write is bad input (exit 2), not a failed check."""
from __future__ import annotations

from pathlib import Path

from pixart_core.errors import SourceError
from pixart_core.manifests import MANIFEST, file_problems, kind_of, read_manifest

from .manifest import verify_folder


def verify(folder) -> dict:
    folder = Path(folder)
    if not folder.exists():
        raise SourceError(f"{folder}: no such file or folder")
    if (folder / MANIFEST).is_file():
        manifest = read_manifest(folder)  # SourceError for a foreign or unreadable manifest
        if kind_of(manifest) == "export":  # an export folder: every file's size and sha256
            report = {"export": file_problems(folder, manifest["files"])}
            return {"folder": str(folder), "kind": "export", "ok": not any(report.values()), "components": report}
        parts = {".": folder}
    else:
        parts = {p.name: p for p in sorted(folder.iterdir()) if (p / MANIFEST).is_file()} if folder.is_dir() else {}
    if not parts:
        raise SourceError(f"{folder}: no {MANIFEST} here or in its sub-folders; not a folder pixart-ms wrote")
    for path in parts.values():
        read_manifest(path, "converted")  # a foreign manifest is bad input, named before anything is hashed
    report = {name: verify_folder(path) for name, path in parts.items()}
    return {"folder": str(folder), "kind": "converted", "ok": not any(report.values()), "components": report}
