"""``export``: a converted MindSpore folder -> validated graphs (MindIR, ONNX or both), Lite converter configs and
one manifest.

Everything that can be checked before a graph is traced is checked first (the output location, the folder, the
components, the buckets, the formats). The export folder is written under a temporary name beside the target and
renamed into place only when every graph has been reloaded and validated: a failed validation (exit 1) leaves
nothing behind.

Each format is an exporter behind the same orchestration (``exporter(fmt).export_component``): MindIR traces the
view's MindSpore Cell (``mindir``), ONNX the torch reference class holding the converted weights
(``onnx_export``). Both run in phases that come and go in turn and fill a typed result per graph (``results``);
both formats' graphs of a component are judged before it fails or passes.

Layout (one folder per component, like diffusers and optimum)::

    EXPORT_DIR/manifest.json          everything infer needs, every file with size and sha256, every check's numbers
    EXPORT_DIR/convert_lite.sh        the converter_lite commands for Ascend
    EXPORT_DIR/transformer/           transformer_<bucket>.mindir (or _graph.mindir + _variables/) and/or
                                      transformer_<bucket>.onnx (+ .onnx.data), .cfg, config.json
    EXPORT_DIR/text_encoder/          text_encoder.mindir / .onnx, text_encoder.cfg, config.json
    EXPORT_DIR/vae_decoder/, vae_encoder/   one graph per bucket, .cfg, the VAE's config.json
    EXPORT_DIR/tokenizer/, scheduler/, model_index.json   copied from the converted pipeline
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from converters.detect import read_json
from mindspore_nets.metrics import TOLERANCES
from pixart_core import registry
from pixart_core.components import PIPELINE_COPIED
from pixart_core.errors import CheckFailed
from pixart_core.manifests import EXPORT_KIND, MANIFEST, file_entry, file_sha256, read_manifest, stored_dtype
from pixart_core.outputs import atomic_folder
from pixart_core.stamps import versions

from . import lite
from .plan import ExportOptions, check_export, planned_export_bytes
from .results import GraphResult, all_problems

if TYPE_CHECKING:  # MindSpore is imported only once the arguments have been checked
    from .specs import ComponentSpec

FORMAT_VERSION = 1
# ----------------------------------------------------------------------------------------------------------------
# one component, every format

def exporter(fmt: str):
    """The exporter of a format: MindIR (the MindSpore Cell) or ONNX (the torch reference class)."""
    if fmt == "mindir":
        from .mindir import MindIRExporter

        return MindIRExporter()
    from .onnx_export import OnnxExporter

    return OnnxExporter()


def export_component(spec: ComponentSpec, folder: Path, target: Path, opts: ExportOptions, log,
                     tolerance_dtype: str | None = None) -> dict:
    """Export, reload and validate every graph of one component into ``target`` in every format asked for;
    returns its manifest entry. ``tolerance_dtype``: whose parity tolerance applies against the torch reference
    (default the export dtype). Every problem of every graph and format is collected before ``CheckFailed``."""
    target.mkdir(parents=True)
    by_format: dict[str, list[GraphResult]] = {}
    reference_note, phases = None, {}
    for fmt in opts.formats:  # MindIR first: each ONNX graph is compared with its MindIR twin's outputs
        twins = {r.stem: r for r in by_format.get("mindir", [])}
        fmt_exporter = exporter(fmt)
        by_format[fmt], note = fmt_exporter.export_component(spec, folder, target, opts, log,
                                                             tolerance_dtype or spec.dtype, twins)
        reference_note = reference_note or note
        if getattr(fmt_exporter, "phases", None):
            phases[fmt] = fmt_exporter.phases
    problems = [p for results in by_format.values() for p in all_problems(results)]
    if problems:
        raise CheckFailed(f"{spec.name}: validation failed: " + "; ".join(problems))
    return component_entry(spec, by_format, target, folder, reference_note, phases)


def component_entry(spec: ComponentSpec, by_format: dict[str, list[GraphResult]], target: Path, folder: Path,
                    reference_note: str | None, phases: dict | None = None) -> dict:
    """The manifest entry of a component: per graph the common facts, the MindIR graph's fields (as before the
    ONNX route existed) and, when exported, an ``onnx`` section."""
    from .mindir import MindIRExporter
    from .onnx_export import OnnxExporter

    graphs = []
    for i, graph in enumerate(spec.graphs):
        entry, tail = {"stem": graph.stem}, {}
        if "mindir" in by_format:
            head, tail = MindIRExporter.graph_entry(spec, by_format["mindir"][i], target)
            entry.update(head)
        entry.update({
            "buckets": graph.buckets,
            "latent_hw": list(graph.latent_hw) if graph.latent_hw else None,
            "gears": [list(g) for g in graph.gears] if graph.gears else None,
            "inputs": [t.to_dict() for t in graph.inputs],
            "outputs": [t.to_dict() for t in graph.outputs],
            "lite_config": f"{spec.name}/{graph.stem}.cfg",
        })
        entry.update(tail)
        if "onnx" in by_format:
            entry["onnx"] = OnnxExporter.graph_entry(spec, by_format["onnx"][i], target)
        graphs.append(entry)
    entry = {"dtype": spec.dtype, "precision_mode": spec.precision_mode, "source": str(folder),
             "torch_reference": "used" if reference_note is None else f"unavailable ({reference_note})",
             "graphs": graphs}
    if "mindir" in (phases or {}):
        entry["phases"] = phases["mindir"]
    if "onnx" in (phases or {}):
        entry["onnx"] = {"phases": phases["onnx"]}
    return entry


# ----------------------------------------------------------------------------------------------------------------
# the whole export

def export_pipeline(out_dir, export_dir, log=print, **options) -> dict:
    """Export a converted pipeline (or one converted component) to ``export_dir``; returns the manifest.

    Options are ``ExportOptions`` fields. Raises ``SourceError``/``OutputError`` (exit 2) on bad input and
    ``CheckFailed`` (exit 1) when a graph fails validation; nothing is left at ``export_dir`` then.
    """
    opts = ExportOptions(**options)
    out, export_dir = Path(out_dir), Path(export_dir)
    started = time.time()
    found, components, buckets, vae_scale, bucket_source, configs = check_export(out, export_dir, opts)
    from .specs import build_component  # MindSpore: only now that every argument is known to be good

    notes = []
    specs = []
    for name in components:
        dtype = opts.text_encoder_dtype if name == "text_encoder" else opts.dtype
        spec = build_component(name, configs[name], dtype, opts.batch, opts.max_length, buckets, vae_scale,
                               opts.gears and name == "transformer", precision_mode=opts.precision_modes.get(name))
        if registry.view(name).fp16_needs_check and dtype == "fp16":
            from .eager_worker import fp16_finite_in_child

            ok, why = fp16_finite_in_child(name, found[name], spec, opts.validation)
            if not ok:
                notes.append(f"{name}: fp16 refused ({why}); exported in fp32")
                log(f"{name}: fp16 produced NaN/Inf ({why}); exporting in fp32")
                spec = build_component(name, configs[name], "fp32", opts.batch, opts.max_length, buckets,
                                       vae_scale, False, precision_mode=opts.precision_modes.get(name))
            else:
                notes.append(f"{name}: fp16 NaN check passed ({why})")
        specs.append(spec)
    from . import budget
    from .plan import component_weight_bytes

    largest = max((component_weight_bytes(found[s.name], s.name, s.dtype) for s in specs), default=0)
    opts.budget_bytes = opts.budget_bytes or budget.budget(largest)
    tolerance_dtypes = {}
    for spec in specs:
        stored = stored_dtype(read_manifest(found[spec.name], "converted"))
        tolerance_dtypes[spec.name] = max((spec.dtype, stored), key=TOLERANCES.get)
        if tolerance_dtypes[spec.name] != spec.dtype:
            line = (f"{spec.name}: {found[spec.name]} stores {stored} weights (manifest); the graph is compared with "
                    f"the torch reference at the {stored} tolerance {TOLERANCES[stored]:g}")
            notes.append(line)
            log(f"note: {line}")

    manifest_components = {}
    with atomic_folder(export_dir, planned_export_bytes(found, specs, out, len(opts.formats)), log) as tmp:
        tmp.mkdir()
        for spec in specs:
            manifest_components[spec.name] = export_component(spec, found[spec.name], tmp / spec.name, opts, log,
                                                              tolerance_dtypes[spec.name])
            (tmp / spec.name / "config.json").write_bytes((found[spec.name] / "config.json").read_bytes())
            for graph in spec.graphs:
                lite.write_config(tmp / spec.name / f"{graph.stem}.cfg", graph, spec.precision_mode)
        copied = []
        for name in PIPELINE_COPIED:
            if (out / name).is_dir():
                shutil.copytree(out / name, tmp / name)
                copied.append(name)
        if (out / "model_index.json").is_file():
            shutil.copyfile(out / "model_index.json", tmp / "model_index.json")
        lite.write_convert_script(tmp / lite.SCRIPT, specs, opts.formats)
        manifest = {
            "format_version": FORMAT_VERSION,
            "kind": EXPORT_KIND,
            "versions": versions("mindspore", "numpy"),
            "source": {"path": str(out.resolve()), "manifests": _source_manifests(out, found, components)},
            "options": {"components": components, "buckets": opts.buckets, "batch": opts.batch, "dtype": opts.dtype,
                        "text_encoder_dtype": opts.text_encoder_dtype, "gears": opts.gears,
                        "max_length": opts.max_length, "torch_reference": opts.torch_reference,
                        "validation": opts.validation,
                        "split_threshold": opts.split_threshold, "formats": list(opts.formats)},
            "pipeline": _pipeline_section(opts, buckets, vae_scale, bucket_source, found, tmp, copied),
            "components": manifest_components,
            "lite": lite.manifest_section(opts.formats),
            "notes": notes,
            "memory": {"rule": f"peak RSS <= {budget.RATIO} x the largest graph's weights + "
                               f"{budget.CONSTANT // budget.GIB} GiB", "largest_weights_bytes": largest,
                       "budget_bytes": opts.budget_bytes},
        }
        manifest["files"] = {str(p.relative_to(tmp)): file_entry(p) for p in sorted(tmp.rglob("*"))
                             if p.is_file() and p.name != MANIFEST}
        manifest["seconds"] = round(time.time() - started, 2)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _source_manifests(out: Path, found: dict[str, Path], components: list[str]) -> dict:
    hashes = {}
    for name in sorted({registry.view(c).component for c in components}):
        folder = found[next(c for c in components if registry.view(c).component == name)]
        path = folder / MANIFEST
        hashes[name] = {"manifest_sha256": file_sha256(path) if path.is_file() else None}
    if (out / "model_index.json").is_file():
        hashes["model_index.json"] = {"sha256": file_sha256(out / "model_index.json")}
    return hashes


def _pipeline_section(opts: ExportOptions, buckets: dict, vae_scale: int, bucket_source: str,
                      found: dict[str, Path], tmp: Path, copied: list[str]) -> dict:
    """What ``infer`` needs besides the graphs: sizes, scaling factor, vocabulary, tokenizer and scheduler."""
    section = {"batch": opts.batch, "cfg_batch": 2 * opts.batch, "max_length": opts.max_length,
               "vae_scale_factor": vae_scale, "bucket_table": bucket_source,
               "buckets": {k: {"height": h, "width": w, "latent_hw": [h // vae_scale, w // vae_scale]}
                           for k, (h, w) in buckets.items()},
               "text_preprocessing": "lower().strip() (diffusers PixArtSigmaPipeline, clean_caption=False)",
               "tokenizer": "tokenizer/spiece.model" if (tmp / "tokenizer" / "spiece.model").is_file() else None,
               "scheduler": ("scheduler/scheduler_config.json"
                             if (tmp / "scheduler" / "scheduler_config.json").is_file() else None),
               "copied": copied}
    if "transformer" in found:
        t = read_json(found["transformer"] / "config.json")
        section.update(latent_channels=t["in_channels"], transformer_out_channels=t.get("out_channels"),
                       caption_channels=t["caption_channels"], sample_size=t["sample_size"],
                       patch_size=t["patch_size"])
    if "text_encoder" in found:
        section["vocab_size"] = read_json(found["text_encoder"] / "config.json")["vocab_size"]
    if "vae_decoder" in found:
        v = read_json(found["vae_decoder"] / "config.json")
        section.update(scaling_factor=v["scaling_factor"], shift_factor=v.get("shift_factor"))
    return section


def export_and_infer(converted_dir, work_dir, prompt: str = "a small red fox in the snow", steps: int = 10,
                     buckets: str = "1.0,0.57", log=print) -> dict:
    """The demo's last act: export a converted pipeline (fp32, default 300 tokens), generate one image from the
    export folder alone, and compare it with the same loop on the eager MindSpore networks.

    Returns {"export_dir", "image", "bucket", "psnr_vs_eager", "backend"}; raises like ``export_pipeline``.
    """
    from .pipeline import Request, eager_pipeline, infer, psnr

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    export_dir, image = work_dir / "export", work_dir / "offline.png"
    export_pipeline(converted_dir, export_dir, log=log, buckets=buckets, overwrite=True)
    result = infer(export_dir, prompt, image, steps=steps, progress=False, overwrite=True)
    from PIL import Image

    offline = np.asarray(Image.open(image))
    eager = eager_pipeline(export_dir, converted_dir)(Request(prompt, steps=steps), progress=False)[0]
    return {"export_dir": str(export_dir), "image": str(image), "bucket": result["bucket"],
            "psnr_vs_eager": psnr(offline, eager), "backend": result["backend"]}
