"""Find what a source path is: its layout, its component, its weight files and its config.

A folder is recognized by its ``config.json`` (each layout's ``config_match`` in the registry) and its weight
files, or, when this tool wrote it for MindSpore, by its ``manifest.json``; a single file by sentinel keys in its
header, the way timm sniffs formats, trusted only in the source kinds its layout lists (the original PixArt names
in a MindSpore checkpoint are mindone's training layout). A ``.ckpt`` is a torch zip or a MindSpore protobuf: the
first bytes tell.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pixart_core import registry
from pixart_core.errors import SourceError
from pixart_core.manifests import MANIFEST, kind_of, read_manifest

from .ckpt_source import CkptSource, is_zip
from .sources import SafetensorsSource, Source, TorchSource, read_safetensors_header, shard_files

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


@dataclass
class Job:
    """One component to convert."""

    path: Path
    layout: str
    source: Source
    source_config: dict | None

    @property
    def component(self) -> str:
        return registry.LAYOUT_COMPONENT[self.layout]


def read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise SourceError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except ValueError as exc:
        raise SourceError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise SourceError(f"{path}: expected a JSON object")
    return data


def open_weights(path: Path, ema: bool = False) -> Source:
    """A reader for one weights file or a ``*.index.json`` of shards."""
    path = Path(path)
    if path.name.endswith(".index.json"):
        shards = sorted(set(shard_files(path).values()))
        if path.name.endswith(".safetensors.index.json"):
            return SafetensorsSource(shards, index=path)
        return TorchSource(shards, index=path, ema=ema)
    if path.suffix == ".safetensors":
        return SafetensorsSource([path])
    if path.suffix == ".ckpt" and path.is_file() and not is_zip(path):
        return CkptSource(path)
    if path.suffix in TORCH_SUFFIXES:
        return TorchSource([path], ema=ema)
    raise SourceError(f"{path}: unknown weights format (expected .safetensors, .ckpt, .pth, .pt, .bin or "
                      "*.index.json)")


def config_component(config: dict) -> tuple[str, str] | None:
    """(component, the class the config names) of a config.json one of our layouts recognises, else None."""
    for layout in registry.LAYOUTS.values():
        if layout.config_match is not None and layout.config_match(config):
            named = config.get("_class_name") or next(iter(config.get("architectures") or []), None)
            return registry.LAYOUT_COMPONENT[layout.name], named or config.get("model_type", "?")
    return None


def mindspore_output(path) -> str | None:
    """What ``path`` is when pixart-ms wrote it for MindSpore (a converted folder, pipeline or weights file, an
    export folder), else None: converting it to MindSpore again would be a no-op or a mistake (``--to diffusers`` /
    ``--to original`` convert back). Folders ``--to diffusers`` wrote are torch folders and pass. Cheap: a
    manifest, or the safetensors metadata our writer stamps."""
    path = Path(path)
    if path.is_dir():
        for folder in [path, *(path / name for name in registry.COMPONENTS)]:
            try:
                kind = kind_of(json.loads((folder / MANIFEST).read_text()))
            except (OSError, ValueError):
                continue
            if kind == "export":
                return "a MindIR export folder of pixart-ms"
            if kind == "converted" and is_mindspore_folder(folder):
                return ("a MindSpore pipeline folder converted by pixart-ms" if folder != path
                        else "a MindSpore folder converted by pixart-ms")
        return None
    if path.suffix == ".safetensors" and path.is_file():
        try:
            metadata = read_safetensors_header(path)[0].get("__metadata__") or {}
        except SourceError:
            return None
        if (isinstance(metadata, dict) and metadata.get("producer") == "pixart-mindspore"
                and metadata.get("format") != "pt"):
            return "a MindSpore weights file written by pixart-ms"
    return None


def refuse_mindspore_output(path) -> None:
    """For conversions to MindSpore (``convert``'s argument check): a pixart-ms output is not a PyTorch source."""
    what = mindspore_output(path)
    if what is not None:
        raise SourceError(f"{path}: already {what}, not a PyTorch source; to convert it back to PyTorch use "
                          "--to diffusers or --to original")


def layout_of_config(config: dict, path: Path) -> str:
    for layout in registry.LAYOUTS.values():
        if layout.config_match is not None and layout.config_match(config):
            return layout.name
    cls = config.get("_class_name", "")
    raise SourceError(f"{path}: unknown layout: config.json describes {cls or config.get('model_type') or 'nothing'}"
                      " (expected PixArtTransformer2DModel, AutoencoderKL or a T5 model)")


def layout_of_keys(source: Source) -> str:
    keys = set(source.infos)
    for layout in registry.LAYOUTS.values():
        if layout.sentinels and source.kind in layout.kinds and all(k in keys for k in layout.sentinels):
            return layout.name
    sample = ", ".join(sorted(keys)[:5]) or "no tensors"
    raise SourceError(f"{source.description}: unknown layout: no PixArt, T5 or VAE sentinel keys (found {sample})")


def folder_weights(folder: Path, layout: str) -> Path:
    names = registry.layout(layout).folder_weights
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise SourceError(f"{folder}: no weights file ({', '.join(names)})")


def detect(path, component: str = "auto", ema: bool = False) -> Job:
    path = Path(path)
    if not path.exists():
        raise SourceError(f"{path}: no such file or folder")
    if path.is_dir():
        if (path / "model_index.json").is_file():
            raise SourceError(f"{path}: a pipeline folder; convert it with --component pipeline (or auto)")
        if is_mindspore_folder(path):
            job = _native_job(path)
        elif not (path / "config.json").is_file():
            raise SourceError(f"{path}: unknown layout: a folder without config.json or model_index.json")
        else:
            config = read_json(path / "config.json")
            layout = layout_of_config(config, path / "config.json")
            job = Job(path, layout, open_weights(folder_weights(path, layout), ema=ema), config)
    else:
        source = open_weights(path, ema=ema)
        job = Job(path, layout_of_keys(source), source, None)
    if component not in ("auto", job.component):
        raise SourceError(f"{path}: holds a {job.component} ({job.layout}), not a {component}")
    return job


def is_pipeline(path) -> bool:
    return Path(path).is_dir() and (Path(path) / "model_index.json").is_file()


def is_mindspore_folder(path) -> bool:
    """A component folder this tool converted for MindSpore (its manifest says so; older manifests have no
    ``target`` and were all MindSpore). A folder ``convert --to diffusers`` wrote is a diffusers folder."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        return False
    try:
        manifest = read_manifest(path, "converted")
    except SourceError:
        return False
    return manifest.get("target", "mindspore") == "mindspore"


def _native_job(path: Path) -> Job:
    manifest = read_manifest(path, "converted")
    component = manifest["component"]
    if component not in registry.COMPONENTS:
        raise SourceError(f"{path / MANIFEST}: unknown component {component!r}")
    weights = path / str(manifest["weights_file"])
    if not weights.is_file():
        raise SourceError(f"{path}: the weights file {weights.name} its manifest names is missing")
    config = read_json(path / "config.json")
    return Job(path, registry.native_layout(component).name, open_weights(weights), config)
