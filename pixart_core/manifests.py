"""``manifest.json`` of a converted folder and of an export folder: reading with the kind checked, and the file
hashes both record. Writing and re-checking stay with their producers (``converters.manifest``,
``mindir_export``)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .errors import SourceError, WeightsError

MANIFEST = "manifest.json"
WEIGHT_SUFFIXES = (".safetensors", ".ckpt")  # a converted folder's weights file
EXPORT_KIND = "pixart-mindspore MindIR export"
# keys a manifest of each kind must have; anything else is a foreign manifest.json
REQUIRED = {"converted": ("format_version", "component", "layout", "weights_file", "files", "tensors", "config"),
            "export": ("format_version", "kind", "components", "files", "pipeline")}


def kind_of(manifest: dict) -> str | None:
    """``converted``, ``export`` or None (a manifest.json this tool did not write)."""
    if not isinstance(manifest, dict):
        return None
    if manifest.get("kind") == EXPORT_KIND and all(k in manifest for k in REQUIRED["export"]):
        return "export"
    if "kind" not in manifest and all(k in manifest for k in REQUIRED["converted"]):
        return "converted"
    return None


def read_manifest(folder, kind: str | None = None) -> dict:
    """The manifest of ``folder``; raises SourceError when it is missing, unreadable, foreign, or not ``kind``."""
    path = Path(folder) / MANIFEST
    what = {"converted": "a converted folder", "export": "an export folder", None: "a folder"}
    try:
        manifest = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):
        if not Path(folder).exists():
            raise SourceError(f"{folder}: no such file or folder") from None
        raise SourceError(f"{folder}: no {MANIFEST}; not {what[kind]} written by pixart-ms") from None
    except (OSError, ValueError) as exc:
        raise SourceError(f"{path}: unreadable manifest ({exc})") from exc
    found = kind_of(manifest)
    if found is None:
        raise SourceError(f"{path}: not a pixart-ms manifest (a foreign manifest.json)")
    if kind is not None and found != kind:
        raise SourceError(f"{folder}: {what[found]}, not {what[kind]}")
    return manifest


def is_ours(folder) -> bool:
    """True when ``folder`` holds a manifest this tool wrote (of either kind), or is a pipeline folder it converted:
    ``model_index.json``, components holding our manifests, the copied tokenizer and scheduler, and nothing else (a
    user's diffusers pipeline, or ours with a file of the user's beside it, is never ours)."""
    folder = Path(folder)
    return _has_our_manifest(folder) or _is_our_pipeline(folder)


def _has_our_manifest(folder: Path) -> bool:
    try:
        return kind_of(json.loads((folder / MANIFEST).read_text())) is not None
    except (OSError, ValueError):
        return False


def _is_our_pipeline(folder: Path) -> bool:
    from .components import PIPELINE_COPIED

    if not (folder / "model_index.json").is_file():
        return False
    converted = 0
    for entry in folder.iterdir():
        if entry.name == "model_index.json" or (entry.name in PIPELINE_COPIED and entry.is_dir()
                                                and not entry.is_symlink()):
            continue
        if entry.is_symlink() or not entry.is_dir() or not _has_our_manifest(entry):
            return False
        converted += 1
    return converted > 0


def file_sha256(path: Path, chunk: int = 16 * 2**20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_entry(path: Path) -> dict:
    return {"size": Path(path).stat().st_size, "sha256": file_sha256(path)}


def file_problems(folder, files: dict, names=None, hashes: bool = True) -> list[str]:
    """Problems of the files a manifest lists (``name -> {"size", "sha256"}``), or of ``names`` among them:
    missing, another size, other bytes (``hashes``). Sizes are compared first: a truncated file costs no hashing."""
    folder = Path(folder)
    problems = []
    for name in (files if names is None else names):
        entry, path = files[name], folder / name
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.stat().st_size != entry["size"]:
            problems.append(f"{path}: {path.stat().st_size} bytes, the manifest says {entry['size']}")
        elif hashes and file_sha256(path) != entry["sha256"]:
            problems.append(f"{path}: sha256 differs from the manifest (the file was changed or damaged)")
    return problems


def stored_dtype(manifest: dict) -> str:
    """The dtype most of a converted folder's float tensors are stored in, by the manifest's tensor rows, as the
    CLI spells it (fp32 / fp16 / bf16). T5's fp32 ``wo`` beside fp16 weights leaves it fp16."""
    from .dtypes import DTYPES, short

    counts: dict[str, int] = {}
    for row in manifest.get("tensors", []):
        if not row.get("extra") and row["dtype"] in DTYPES and DTYPES[row["dtype"]].is_float:
            counts[row["dtype"]] = counts.get(row["dtype"], 0) + 1
    return short(max(counts, key=counts.get)) if counts else "fp32"


def find_weights(folder: Path, stem: str) -> Path:
    """A converted folder's one weights file, ``<stem>.safetensors`` or ``<stem>.ckpt`` (importing neither MindSpore
    nor torch: the torch reference's child process reads it too)."""
    found = [folder / f"{stem}{suffix}" for suffix in WEIGHT_SUFFIXES if (folder / f"{stem}{suffix}").is_file()]
    if len(found) != 1:
        what = "no" if not found else "more than one"
        raise WeightsError(f"{folder}: {what} weights file named {stem}.safetensors or {stem}.ckpt")
    return found[0]
