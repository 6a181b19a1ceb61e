"""What an export is asked to do, checked before MindSpore is imported: the options, the output location, the
converted folders (their manifests and weights-file sizes), the components, the buckets; and about how much it will
write. ``export.export_pipeline`` runs this first."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from converters.detect import read_json
from mindspore_nets.buckets import model_buckets, select_buckets
from pixart_core import dtypes, registry
from pixart_core.components import PIPELINE_COPIED
from pixart_core.components.vae import scale_factor
from pixart_core.errors import SourceError, UsageError
from pixart_core.manifests import MANIFEST, file_problems, read_manifest
from pixart_core.outputs import check_output

from . import lite

if TYPE_CHECKING:
    from .specs import ComponentSpec

EXPORT_DTYPES = ("fp32", "fp16")  # bf16 has no kernels on 910A/310P
DEFAULT_MAX_LENGTH = 300


@dataclass
class ExportOptions:
    components: list[str] | None = None  # default: every component present
    buckets: str = "square"
    batch: int = 1
    dtype: str = "fp32"  # transformer and VAE; the VAE keeps fp32 if fp16 gives NaN/Inf
    text_encoder_dtype: str = "fp32"  # T5 overflows in fp16: only on request
    gears: bool = False
    max_length: int = DEFAULT_MAX_LENGTH
    overwrite: bool = False
    torch_reference: bool = True
    precision_modes: dict = field(default_factory=dict)  # component -> Lite precision_mode override
    split_threshold: int | None = None  # bytes; MindSpore's is 1 GiB (lowered only to exercise the split path)
    validation: str = "auto"  # "auto" (full where it fits the memory budget) | "full" | "proxy"
    formats: tuple[str, ...] = ("mindir",)  # graph formats written into the one export folder
    budget_bytes: int | None = None  # the memory budget (default: budget.budget of the largest graph's weights)


VALIDATION_MODES = ("auto", "full", "proxy")
FORMATS = ("mindir", "onnx")  # in the order they are exported (ONNX graphs are compared with their MindIR twins)


def parse_formats(value) -> tuple[str, ...]:
    """``mindir``, ``onnx`` or ``mindir,onnx`` (either order) -> the formats in export order."""
    names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value)]
    if not names or any(n not in FORMATS for n in names) or len(set(names)) != len(names):
        raise UsageError(f"--format {','.join(names)}: choose mindir, onnx or mindir,onnx")
    return tuple(f for f in FORMATS if f in names)


# ----------------------------------------------------------------------------------------------------------------
# what is there to export

def source_folders(out: Path) -> dict[str, Path]:
    """Exportable component -> converted folder, for a converted pipeline or a single-component folder."""
    out = Path(out)
    if not out.is_dir():
        raise SourceError(f"{out}: not a folder")
    if (out / "model_index.json").is_file():
        found = {v.name: out / v.component for v in registry.VIEWS.values()
                 if (out / v.component / "config.json").is_file()}
        unconverted = sorted({f.name for f in found.values() if not (f / MANIFEST).is_file()})
        if unconverted:
            raise SourceError(f"{out}: {', '.join(unconverted)} not converted (no {MANIFEST}); run "
                              "`pixart-ms convert` first")
    elif (out / MANIFEST).is_file():
        component = read_manifest(out, "converted")["component"]
        found = {v.name: out for v in registry.VIEWS.values() if v.component == component}
    else:
        raise SourceError(f"{out}: neither a converted pipeline (model_index.json) nor a converted component "
                          f"({MANIFEST}); run `pixart-ms convert` first")
    if not found:
        raise SourceError(f"{out}: no exportable component found")
    return found


def choose_components(found: dict[str, Path], requested: list[str] | None, out: Path) -> list[str]:
    if not requested:
        return [c for c in registry.VIEWS if c in found]
    requested = registry.views_of(requested)
    missing = [c for c in requested if c not in found]
    if missing:
        raise SourceError(f"{out}: no converted folder for {', '.join(missing)} "
                          f"(looked for {', '.join(sorted({registry.view(c).component + '/' for c in missing}))})")
    return requested


def bucket_plan(found: dict[str, Path], spec: str) -> tuple[dict[str, tuple[int, int]], int, str]:
    """(chosen bucket -> pixel size, VAE scale factor, how the table was chosen)."""
    vae_config = read_json(found["vae_decoder"] / "config.json") if "vae_decoder" in found else None
    scale = scale_factor(vae_config)
    if "transformer" in found:
        tconfig = read_json(found["transformer"] / "config.json")
    elif vae_config:  # a lone VAE: its pixel sample_size, whole latents
        tconfig = {"sample_size": vae_config.get("sample_size", 1024) // scale, "patch_size": 1}
    else:
        return {}, scale, "none (no transformer or VAE)"
    table, how = model_buckets(tconfig, scale)
    try:
        keys = select_buckets(spec, table)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return {k: table[k] for k in keys}, scale, how


def check_export(out: Path, export_dir: Path, opts: ExportOptions):
    """Every check that needs no MindSpore: the output location, the options, the converted folders, the
    components and buckets. Returns (found, components, buckets, vae scale, bucket table source, configs)."""
    if not out.exists():
        raise SourceError(f"{out}: no such folder")
    check_output(export_dir, inputs=[out], overwrite=opts.overwrite)
    if opts.batch < 1 or opts.max_length < 1:
        raise UsageError(f"--batch and --max-length must be positive (got {opts.batch}, {opts.max_length})")
    opts.formats = parse_formats(opts.formats)
    if opts.validation not in VALIDATION_MODES:
        raise UsageError(f"--validation {opts.validation!r}: choose auto, full or proxy")
    for name, value in (("--dtype", opts.dtype), ("--text-encoder-dtype", opts.text_encoder_dtype)):
        if value not in EXPORT_DTYPES:
            raise UsageError(f"{name} {value!r}: choose fp32 or fp16 (bf16 has no kernels on 910A/310P)")
    found = source_folders(out)
    components = choose_components(found, opts.components, out)
    for folder in sorted({found[c] for c in components}):  # a truncated weights file, named before MindSpore
        problems = file_problems(folder, read_manifest(folder, "converted")["files"], hashes=False)
        if problems:
            raise SourceError(f"{problems[0]} (`pixart-ms verify {folder}` checks every byte)")
    buckets, vae_scale, bucket_source = bucket_plan(found, opts.buckets)
    unknown_modes = sorted(set(opts.precision_modes) - set(components))
    if unknown_modes:
        raise UsageError(f"precision mode given for component(s) not exported: {', '.join(unknown_modes)}")
    bad_modes = {c: m for c, m in opts.precision_modes.items() if m not in lite.PRECISION_MODES}
    if bad_modes:
        raise UsageError(f"unknown Lite precision_mode(s) {bad_modes}; choose from {', '.join(lite.PRECISION_MODES)}")
    configs = {c: read_json(found[c] / "config.json") for c in components}
    if "onnx" in opts.formats:
        check_onnx_route(found, components)
    if "transformer" in components and opts.gears and len({(h // vae_scale, w // vae_scale)
                                                           for h, w in buckets.values()}) > 100:
        raise UsageError("Lite supports at most 100 gears; choose fewer buckets")
    if "transformer" in components and "text_encoder" in found:
        d_model = read_json(found["text_encoder"] / "config.json")["d_model"]
        if d_model != configs["transformer"]["caption_channels"]:
            raise SourceError(f"{out}: text encoder d_model {d_model} != transformer caption_channels "
                              f"{configs['transformer']['caption_channels']}")
    return found, components, buckets, vae_scale, bucket_source, configs


def check_onnx_route(found: dict[str, Path], components: list[str]) -> None:
    """The ONNX graphs are traced from the torch reference class: its packages must import, every view must say
    how its torch forward is called, and the class must express the converted variant (diffusers has no KV
    compression). Checked on the meta device, before MindSpore is imported; a miss is exit 2."""
    from .onnx_export import require_onnx_stack

    require_onnx_stack()
    from .torch_source import skeleton

    for name in components:
        if registry.view(name).torch_forward is None:
            raise UsageError(f"--format onnx: the {name} view has no torch forward to trace (registry "
                             "View.torch_forward)")
    for folder in sorted({found[c] for c in components}):
        try:
            skeleton(folder)
        except ImportError as exc:
            raise UsageError(f"--format onnx needs the torch reference classes (pip install diffusers "
                             f"transformers): {exc}") from None
        except SourceError as exc:
            raise SourceError(f"{folder}: no ONNX graph: it is traced from the torch reference class, and {exc}") \
                from None


def planned_export_bytes(found: dict[str, Path], specs: list[ComponentSpec], out: Path, formats: int = 1) -> int:
    """About what the export writes: each graph stores its component's weights in the export dtype (the VAE's
    encoder and decoder are counted with the whole VAE: an upper bound) once per format, plus the copied
    folders."""
    total = 0
    for spec in specs:
        rows = read_manifest(found[spec.name], "converted")["tensors"]
        values = sum(dtypes.numel(r["shape"]) for r in rows if not r.get("extra"))
        total += values * dtypes.get(spec.dtype).itemsize * len(spec.graphs) * formats
    for name in PIPELINE_COPIED:
        total += sum(f.stat().st_size for f in (out / name).rglob("*") if f.is_file())
    return total


def component_weight_bytes(folder: Path, view: str, dtype: str) -> int:
    """The weight bytes a graph of ``view`` stores in ``dtype`` (the registry's keep_fp32 tensors in fp32), from the
    converted folder's manifest, counting the parameters the view uses (the VAE's decoder or encoder half)."""
    from .streaming import keep_fp32_patterns

    keep = keep_fp32_patterns(view)
    total = 0
    for row in read_manifest(folder, "converted")["tensors"]:
        if row.get("extra") or not registry.view(view).uses(row["name"]):
            continue
        size = 4 if any(p.match(row["name"]) for p in keep) else dtypes.get(dtypes.canonical(dtype)).itemsize
        total += dtypes.numel(row["shape"]) * size
    return total
