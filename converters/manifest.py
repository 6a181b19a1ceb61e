"""``manifest.json``: one row per written tensor (source keys, op, shapes and dtypes on both sides, sha256 of the
written bytes), the files with their sizes and hashes, the source files, versions and the config used.
``verify_folder`` re-checks all of it against what is on disk."""
from __future__ import annotations

import json
from pathlib import Path

from pixart_core.errors import SourceError
from pixart_core.manifests import MANIFEST, file_problems, read_manifest

from .writers import hash_weights_file

FORMAT_VERSION = 2  # 2: the weights file's entry holds framing_sha256, not the whole file's sha256 (verify reads both)


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


def component_manifest(job, plan, digests: dict, folder: Path, weights_name: str, writer, config: dict,
                       notes: list[str], dtype_policy: str, *, layout: str, target: str, dropped, **more) -> dict:
    """The manifest of one converted component folder (either direction)."""
    from pixart_core.manifests import file_entry
    from pixart_core.stamps import versions

    from .staging import known_file_entry  # hashed beside the stream when it could be

    return {
        "format_version": FORMAT_VERSION,
        "component": job.component,
        "layout": layout,
        "target": target,
        **more,
        "versions": versions("mindspore", "torch", "safetensors"),
        "source": {"path": str(job.path), "description": plan.source,
                   "files": [{"name": str(p), **(known_file_entry(p) or file_entry(p))} for p in job.source.files]},
        "dtype_policy": dtype_policy,
        "weights_format": Path(weights_name).suffix.lstrip("."),
        "weights_file": weights_name,
        "config": config,
        "files": {"config.json": file_entry(Path(folder) / "config.json"),
                  weights_name: {"size": writer.size, "framing_sha256": writer.framing_sha256}},
        "tensors": tensor_rows(plan, digests),
        "dropped": [{"key": k, "reason": r} for k, r in dropped],
        "notes": notes,
    }


def write_manifest(folder: Path, manifest: dict) -> None:
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


def verify_folder(folder) -> list[str]:
    """Problems found in one converted component folder (empty when it is intact). The weights file is read once:
    every tensor's hash and the hash of the bytes outside them (or, for a manifest written before the framing hash,
    the whole file's) come from the same pass."""
    folder = Path(folder)
    try:
        manifest = read_manifest(folder, "converted")
    except SourceError as exc:
        return [str(exc)]
    weights_name = manifest["weights_file"]
    weights = folder / weights_name
    files = manifest.get("files", {})
    # the weights file is hashed below, in the same pass as its tensors
    problems = file_problems(folder, files, [n for n in files if n != weights_name])
    if not weights.is_file():
        return problems + [f"{weights}: missing"]
    if weights_name in files and weights.stat().st_size != files[weights_name]["size"]:
        problems.append(f"{weights}: {weights.stat().st_size} bytes, the manifest says {files[weights_name]['size']}")
    recorded = files.get(weights_name, {})
    kind = "framing_sha256" if "framing_sha256" in recorded else "sha256"
    try:
        file_hashes, _, tensors = hash_weights_file(weights, whole_file=kind == "sha256")
    except (OSError, ValueError, SourceError, KeyError, TypeError) as exc:  # a damaged file: report, not crash
        detail = str(exc).removeprefix(f"{weights}: ")
        return problems + [f"{weights}: unreadable ({detail})"]
    if file_hashes.get(kind) is None:
        problems.append(f"{weights}: its layout cannot be read without torch, so the bytes outside its tensors "
                        "were not checked")
    elif file_hashes[kind] != recorded.get(kind):
        what = "the bytes outside its tensors (headers, framing) differ" if kind == "framing_sha256" else \
            "sha256 differs"
        problems.append(f"{weights}: {what} from the manifest")
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
