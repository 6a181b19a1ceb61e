"""``export``: a converted MindSpore folder -> validated MindIR graphs, Lite converter configs and a manifest.

Everything that can be checked before a graph is traced is checked first (the output location, the folder, the
components, the buckets). The export folder is written under a temporary name beside the target and renamed into
place only when every graph has been reloaded and validated: a failed validation (exit 1) leaves nothing behind.

Validation of each graph: its declared inputs equal the spec; every weight it stores equals the network's, byte
for byte; and it runs (``GraphCell``) against the in-process MindSpore network (<= 1e-6) and the torch reference
(parity tolerance), at every exported shape (``--validation full``) or, on hosts that cannot run it at its size,
through a proxy at a 16x16 latent (``--validation proxy``, see ``GraphSpec.validation_cases``).

Layout (one folder per component, like diffusers and optimum)::

    EXPORT_DIR/manifest.json          everything infer needs, every file with size and sha256, every check's numbers
    EXPORT_DIR/convert_lite.sh        the converter_lite commands for Ascend
    EXPORT_DIR/transformer/           transformer_<bucket>.mindir (or _graph.mindir + _variables/), .cfg, config.json
    EXPORT_DIR/text_encoder/          text_encoder.mindir, text_encoder.cfg, config.json
    EXPORT_DIR/vae_decoder/, vae_encoder/   one graph per bucket, .cfg, the VAE's config.json
    EXPORT_DIR/tokenizer/, scheduler/, model_index.json   copied from the converted pipeline
"""
from __future__ import annotations

import contextlib
import gc
import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from converters.detect import read_json
from mindspore_nets.metrics import TOLERANCES
from pixart_core import dtypes, registry
from pixart_core.components import PIPELINE_COPIED
from pixart_core.errors import CheckFailed, OutputError, SourceError
from pixart_core.inputs import sample_inputs
from pixart_core.manifests import EXPORT_KIND, MANIFEST, file_entry, file_sha256, read_manifest, stored_dtype
from pixart_core.outputs import atomic_folder, human_bytes
from pixart_core.stamps import versions

from . import lite
from .plan import ExportOptions, check_export, planned_export_bytes

if TYPE_CHECKING:  # MindSpore is imported only once the arguments have been checked
    from .specs import ComponentSpec, GraphSpec

FORMAT_VERSION = 1
DISK_NEARLY_FULL = 64 * 2**20  # a MindSpore write error with less free than this is taken for a full disk
# ----------------------------------------------------------------------------------------------------------------
# MindSpore plumbing

@contextlib.contextmanager
def execution_mode(graph: bool):
    """MindSpore's GRAPH (``graph=True``) or PYNATIVE mode for the block, restored afterwards."""
    import mindspore as ms

    previous = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE if graph else ms.PYNATIVE_MODE)
    try:
        yield
    finally:
        ms.set_context(mode=previous)


REFERENCE_KIND = {"fp32": "eager network (PyNative)", "fp16": "network compiled in-process (GRAPH mode)"}


def reference_mode(dtype: str):
    """Where the in-process MindSpore reference runs: PyNative (eager) for fp32; for fp16 the same Cell compiled
    in GRAPH mode in this process. MindSpore's CPU fp16 kernels round differently in PyNative and graph mode
    (about 5e-4 relative on the tiny transformer, with or without export); the graph-mode run isolates what
    the export itself changes, which must be nothing (<= 1e-6)."""
    return execution_mode(graph=dtype != "fp32")


@contextlib.contextmanager
def split_threshold(nbytes: int | None):
    """Lower MindSpore's 1 GiB split-save threshold (``serialization.TOTAL_SAVE``, in KiB) for one export."""
    import mindspore.train.serialization as serialization

    if nbytes is None:
        yield
        return
    saved = serialization.TOTAL_SAVE
    serialization.TOTAL_SAVE = max(nbytes, 0) / 1024
    try:
        yield
    finally:
        serialization.TOTAL_SAVE = saved


@contextlib.contextmanager
def dynamic_position_embedding(net):
    """Swap the transformer's patch embedding for the in-graph one while a gears graph is traced."""
    from .specs import DynamicPatchEmbed

    static = net.pos_embed
    net.pos_embed = DynamicPatchEmbed(static)
    try:
        yield
    finally:
        net.pos_embed = static


def written_files(folder: Path, stem: str) -> tuple[str, list[Path], bool]:
    """(graph file to load, every file of the graph, split) after ``mindspore.export`` wrote ``stem``."""
    single, graph, variables = folder / f"{stem}.mindir", folder / f"{stem}_graph.mindir", folder / f"{stem}_variables"
    if graph.is_file() and variables.is_dir():
        return graph.name, [graph, *sorted(p for p in variables.rglob("*") if p.is_file())], True
    if single.is_file():
        return single.name, [single], False
    raise CheckFailed(f"{folder}: mindspore.export wrote neither {single.name} nor {graph.name} + {variables.name}/")


# ----------------------------------------------------------------------------------------------------------------
# one component

def fp16_finite(component: str, folder: Path, spec: ComponentSpec, mode: str) -> tuple[bool, str]:
    """Run the fp16 eager network on every graph's validation inputs: the VAE is exported in fp16 only if all of
    its outputs are finite."""
    from mindspore_nets.loading import load_network, run_cell

    net = load_network(component, folder, "fp16")
    cell = registry.view(component).cell(net)
    with execution_mode(graph=False):
        for graph in spec.graphs:
            for case in graph.validation_cases(mode, spec.vae_scale):
                out = run_cell(cell, sample_inputs(case.inputs, spec.config))
                bad = int((~np.isfinite(out.astype(np.float64))).sum())
                if bad:
                    return False, f"{graph.stem} ({case.label}): {bad} non-finite values in fp16"
    return True, "finite in fp16 on the validation inputs"


def export_component(spec: ComponentSpec, folder: Path, target: Path, opts: ExportOptions, log,
                     tolerance_dtype: str | None = None) -> dict:
    """Export, reload and validate every graph of one component into ``target``; returns its manifest entry.
    ``tolerance_dtype``: whose parity tolerance applies against the torch reference (default the export dtype)."""
    from mindspore_nets.loading import load_network, run_cell

    from . import validate

    target.mkdir(parents=True)
    net = load_network(spec.name, folder, spec.dtype)
    cell = registry.view(spec.name).cell(net)
    entries = []
    for graph in spec.graphs:
        cases = graph.validation_cases(opts.validation, spec.vae_scale)
        with dynamic_position_embedding(net) if graph.gears else contextlib.nullcontext():
            with reference_mode(spec.dtype):  # the in-process MindSpore reference of every case
                references = []
                for case in cases:
                    arrays = sample_inputs(case.inputs, spec.config)
                    references.append((arrays, run_cell(cell, arrays)))
            started = time.time()
            export_graph(cell, graph.inputs, target / graph.stem, opts.split_threshold)
            export_s = time.time() - started
            graph_file, files, split = written_files(target, graph.stem)
            problems = validate.interface_problems(target / graph_file, graph.inputs)
            n_weights, weight_problems = validate.weight_problems(target / graph_file, cell)
            problems += weight_problems
            proxies = {}
            for i, case in enumerate(cases):
                if not case.runs_artifact:  # the same Cell at the proxy size, outside the export folder
                    where = target.parent / f".proxy-{graph.stem}-{i}"  # removed once it has run
                    shutil.rmtree(where, ignore_errors=True)
                    where.mkdir()
                    export_graph(cell, case.inputs, where / graph.stem, opts.split_threshold)
                    proxies[i] = where
        entries.append({"graph": graph, "graph_file": graph_file, "files": files, "split": split,
                        "export_seconds": round(export_s, 2), "cases": cases, "references": references,
                        "proxies": proxies, "problems": problems,
                        "weights": {"stored": n_weights, "identical_to_network": not weight_problems}})
    del cell, net
    gc.collect()

    reference, reference_note = None, None
    if opts.torch_reference:
        reference, reference_note = _torch_reference(folder)
    problems = []
    for entry in entries:
        graph: GraphSpec = entry["graph"]
        problems += [f"{graph.stem}: {p}" for p in entry.pop("problems")]
        started = time.time()
        checks = []
        for i, case in enumerate(entry["cases"]):
            where = entry["proxies"].get(i)
            path = target / entry["graph_file"] if where is None else written_path(where, graph.stem)
            arrays, eager = entry["references"][i]
            with execution_mode(graph=True):
                out = run_cell(_graph_cell(path), arrays)
            gc.collect()
            if where is not None:
                shutil.rmtree(where, ignore_errors=True)
            ref = validate.torch_output(spec.name, reference, arrays) if reference is not None else None
            record, found = validate.check_output(out, case.outputs[0], eager, ref, tolerance_dtype or spec.dtype)
            record["vs_eager"]["reference"] = REFERENCE_KIND[spec.dtype]
            record["case"] = case.label
            record["ran"] = "the exported graph" if where is None else "proxy: the same Cell exported at this size"
            record["inputs"] = [t.to_dict() for t in case.inputs]
            if reference is None:
                record["vs_torch"] = f"unavailable ({reference_note})"
            checks.append(record)
            problems += [f"{graph.stem} ({case.label}): {p}" for p in found]
        entry["validation"] = checks
        entry["validate_seconds"] = round(time.time() - started, 2)
        log(_summary_line(spec, entry))
    if problems:
        raise CheckFailed(f"{spec.name}: validation failed: " + "; ".join(problems))
    return _component_entry(spec, entries, target, folder, reference_note)


def export_graph(cell, inputs, file_stem: Path, threshold: int | None) -> None:
    """``mindspore.export`` in GRAPH mode; -1 dims become ``None`` (a dynamic-shape input for Lite gears)."""
    import mindspore as ms

    with execution_mode(graph=True), split_threshold(threshold):
        dummies = [ms.Tensor(shape=[None if d == -1 else d for d in t.shape], dtype=dtypes.ms_dtype(t.dtype))
                   if -1 in t.shape else ms.Tensor(np.zeros(t.shape, dtypes.numpy_dtype(t.dtype))) for t in inputs]
        try:
            ms.export(cell, *dummies, file_name=str(file_stem), file_format="MINDIR")
        except RuntimeError as exc:  # MindSpore reports a full disk as a RuntimeError of its own
            free = shutil.disk_usage(file_stem.parent).free
            if free < DISK_NEARLY_FULL:
                raise OutputError(f"{file_stem.parent}: no space left while MindSpore wrote {file_stem.name} "
                                  f"({human_bytes(free)} free); nothing was kept") from exc
            raise


def written_path(folder: Path, stem: str) -> Path:
    return folder / written_files(folder, stem)[0]


def _graph_cell(path: Path):
    import mindspore as ms
    from mindspore import nn

    return nn.GraphCell(ms.load(str(path)))


def _torch_reference(folder: Path):
    try:
        from converters.references import load_reference
    except ImportError as exc:  # torch or diffusers not installed
        return None, f"torch reference needs torch and diffusers/transformers: {exc}"
    try:
        return load_reference(folder), None
    except SourceError as exc:  # ReferenceUnavailable, or a source that no longer reads
        return None, str(exc)
    except ImportError as exc:
        return None, f"torch reference needs torch and diffusers/transformers: {exc}"


def _summary_line(spec: ComponentSpec, entry: dict) -> str:
    size = sum(p.stat().st_size for p in entry["files"])
    eager = max(r["vs_eager"]["rel_l2"] for r in entry["validation"])
    torch_values = [r["vs_torch"]["rel_l2"] for r in entry["validation"] if isinstance(r["vs_torch"], dict)]
    torch_text = f"{max(torch_values):.2e}" if torch_values else "unavailable"
    return (f"{entry['graph'].stem}: {spec.dtype}, {size / 2**20:.1f} MiB{' (split)' if entry['split'] else ''}, "
            f"exported in {entry['export_seconds']:.1f} s; GraphCell vs MindSpore rel_l2 {eager:.2e}, "
            f"vs torch {torch_text}")


def _component_entry(spec: ComponentSpec, records: list[dict], target: Path, folder: Path,
                     reference_note: str | None) -> dict:
    graphs = []
    for entry in records:
        graph: GraphSpec = entry["graph"]
        graphs.append({
            "stem": graph.stem,
            "file": f"{spec.name}/{entry['graph_file']}",
            "split": entry["split"],
            "files": [f"{spec.name}/{p.relative_to(target)}" for p in entry["files"]],
            "buckets": graph.buckets,
            "latent_hw": list(graph.latent_hw) if graph.latent_hw else None,
            "gears": [list(g) for g in graph.gears] if graph.gears else None,
            "inputs": [t.to_dict() for t in graph.inputs],
            "outputs": [t.to_dict() for t in graph.outputs],
            "lite_config": f"{spec.name}/{graph.stem}.cfg",
            "export_seconds": entry["export_seconds"],
            "validate_seconds": entry["validate_seconds"],
            "weights": entry["weights"],
            "validation": entry["validation"],
        })
    return {"dtype": spec.dtype, "precision_mode": spec.precision_mode, "source": str(folder),
            "torch_reference": "used" if reference_note is None else f"unavailable ({reference_note})",
            "graphs": graphs}


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
            ok, why = fp16_finite(name, found[name], spec, opts.validation)
            if not ok:
                notes.append(f"{name}: fp16 refused ({why}); exported in fp32")
                log(f"{name}: fp16 produced NaN/Inf ({why}); exporting in fp32")
                spec = build_component(name, configs[name], "fp32", opts.batch, opts.max_length, buckets,
                                       vae_scale, False, precision_mode=opts.precision_modes.get(name))
            else:
                notes.append(f"{name}: fp16 NaN check passed ({why})")
        specs.append(spec)
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
    with atomic_folder(export_dir, planned_export_bytes(found, specs, out), log) as tmp:
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
        lite.write_convert_script(tmp / lite.SCRIPT, specs)
        manifest = {
            "format_version": FORMAT_VERSION,
            "kind": EXPORT_KIND,
            "versions": versions("mindspore", "numpy"),
            "source": {"path": str(out.resolve()), "manifests": _source_manifests(out, found, components)},
            "options": {"components": components, "buckets": opts.buckets, "batch": opts.batch, "dtype": opts.dtype,
                        "text_encoder_dtype": opts.text_encoder_dtype, "gears": opts.gears,
                        "max_length": opts.max_length, "torch_reference": opts.torch_reference,
                        "validation": opts.validation,
                        "split_threshold": opts.split_threshold},
            "pipeline": _pipeline_section(opts, buckets, vae_scale, bucket_source, found, tmp, copied),
            "components": manifest_components,
            "lite": {"script": lite.SCRIPT, "flags": lite.CONVERTER_FLAGS},
            "notes": notes,
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
