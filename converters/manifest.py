"""``manifest.json``: one row per written tensor (source keys, op, shapes and dtypes on both sides, sha256 of the
written bytes), the files with their sizes and hashes, the source files, versions and the config used.
``verify_folder`` re-checks all of it against what is on disk."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .writers import hash_weights_file

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def file_sha256(path: Path, chunk: int = 16 * 2**20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_entry(path: Path) -> dict:
    return {"size": path.stat().st_size, "sha256": file_sha256(path)}


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("pixart-mindspore", "mindspore", "torch", "safetensors"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def tensor_rows(plan, digests: dict) -> list[dict]:
    rows = []
    for t in plan.targets:
        rows.append({
            "name": t.name,
            "sources": list(t.group.sources),
            "op": t.group.op,
            "source_dtype": t.source_dtype,
            "shape": list(t.shape),
            "dtype": t.dtype,
            "sha256": digests[t.name],
            **({"extra": True} if t.extra else {}),
        })
    return rows


def write_manifest(folder: Path, manifest: dict) -> None:
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


def verify_folder(folder) -> list[str]:
    """Problems found in one converted component folder (empty when it is intact). The weights file is read once:
    its whole-file hash and every tensor's hash come from the same pass."""
    folder = Path(folder)
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return [f"{path}: unreadable manifest ({exc})"]
    problems = []
    weights_name = manifest["weights_file"]
    weights = folder / weights_name
    for name, entry in manifest.get("files", {}).items():
        f = folder / name
        if not f.is_file():
            problems.append(f"{f}: missing")
        elif f.stat().st_size != entry["size"]:
            problems.append(f"{f}: size {f.stat().st_size} != manifest {entry['size']}")
        elif name != weights_name and file_sha256(f) != entry["sha256"]:
            problems.append(f"{f}: sha256 differs from the manifest")
    if not weights.is_file():
        return problems
    try:
        file_hash, _, tensors = hash_weights_file(weights)
    except Exception as exc:  # a damaged file: report it rather than crash
        return problems + [f"{weights}: unreadable ({exc})"]
    if file_hash != manifest["files"][weights_name]["sha256"]:
        problems.append(f"{weights}: sha256 differs from the manifest")
    expected = {row["name"]: row for row in manifest["tensors"]}
    seen = set()
    for name, dtype, shape, sha in tensors:
        seen.add(name)
        row = expected.get(name)
        if row is None:
            problems.append(f"{weights.name}: tensor {name} is not in the manifest")
        elif (dtype, list(shape), sha) != (row["dtype"], row["shape"], row["sha256"]):
            problems.append(f"{weights.name}: tensor {name} differs from the manifest "
                            f"({dtype} {list(shape)} vs {row['dtype']} {row['shape']}"
                            f"{', bytes differ' if sha != row['sha256'] else ''})")
    for name in sorted(set(expected) - seen):
        problems.append(f"{weights.name}: tensor {name} listed in the manifest is missing")
    return problems
