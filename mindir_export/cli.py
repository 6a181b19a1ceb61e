"""``pixart-ms export`` and ``pixart-ms infer``.

Both check every argument and path before MindSpore is imported. ``infer`` imports nothing that imports torch: only
this package's runtime and pipeline, numpy, sentencepiece, Pillow, tqdm and MindSpore (or MindSpore Lite).
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from pixart_core import registry
from pixart_core.cli import component_option, echo, fail, note, split_names
from pixart_core.errors import ToolError, UsageError

def choices() -> list[str]:
    return [*registry.VIEWS, "vae"]


def _precision_modes(values: tuple[str, ...]) -> dict:
    modes = {}
    for value in values:
        component, sep, mode = value.partition("=")
        if not sep:
            raise UsageError(f"--precision-mode {value!r}: expected COMPONENT=MODE, e.g. transformer=enforce_origin")
        modes[component.strip()] = mode.strip()
    return modes


@click.command("export")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("-o", "--output", "export_dir", required=True, type=click.Path(path_type=Path),
              help="Export folder to create.")
@component_option(choices(), "Graphs to export (default: every component present; vae = its decoder and encoder).",
                  aliases=("--components",))
@click.option("--format", "formats", default="mindir", show_default=True, metavar="mindir|onnx|mindir,onnx",
              help="Graph format(s), written into one export folder with one manifest. ONNX graphs are traced from "
              "the torch reference class holding the converted weights and validated in onnxruntime.")
@click.option("--buckets", default="square", show_default=True,
              help="Aspect-ratio buckets of the model's table: square, all, or ratios such as 1.0,0.57.")
@click.option("--batch", type=int, default=1, show_default=True, help="Images per call (transformer B = 2N).")
@click.option("--dtype", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="Transformer and VAE (the VAE only if fp16 stays finite).")
@click.option("--text-encoder-dtype", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="T5 overflows in fp16; fp32 unless asked.")
@click.option("--gears", is_flag=True, help="One transformer graph with dynamic h, w and Lite dynamic_dims gears.")
@click.option("--max-length", type=int, default=300, show_default=True, help="Caption tokens (300 for Sigma).")
@click.option("--precision-mode", "precision_modes", multiple=True, metavar="COMPONENT=MODE",
              help="Lite precision_mode for one component (default preferred_fp32; enforce_origin for fp16 graphs).")
@click.option("--no-torch-reference", is_flag=True, help="Skip the comparison with the torch reference.")
@click.option("--validation", type=click.Choice(["auto", "full", "proxy"]), default="auto", show_default=True,
              help="auto: run each graph at its exported shapes where that fits the memory budget (1.3 x the "
              "largest graph's weights + 1 GiB), else through a proxy. full: always at the exported shapes. proxy: "
              "check the graph's interface and stored weights byte for byte, and run the same Cell exported at a "
              "16x16 latent (VAE: 4x4) and/or cut to its first blocks. Every graph ships a golden pair at its real shape "
              "(`pixart-ms validate`), except a VAE graph whose eager decode there exceeds the budget (auto).")
@click.option("--split-threshold", type=int, default=None, hidden=True,
              help="Bytes above which MindSpore splits weights out (testing; MindSpore's is 1 GiB).")
@click.option("--overwrite", is_flag=True, help="Replace an existing export folder that pixart-ms wrote.")
@click.option("--json", "as_json", is_flag=True, help="The manifest on stdout.")
def export_command(out, export_dir, component, formats, buckets, batch, dtype, text_encoder_dtype, gears, max_length,
                   precision_modes, no_torch_reference, validation, split_threshold, overwrite, as_json):
    """Export a converted folder to validated MindIR (and/or ONNX) graphs for MindSpore Lite."""
    from .export import export_pipeline

    def log(line):
        echo(line, err=as_json or line.startswith("note: "))

    try:
        manifest = export_pipeline(
            out, export_dir, log=log, components=split_names(component, choices()) or None,
            buckets=buckets, batch=batch, dtype=dtype, text_encoder_dtype=text_encoder_dtype, gears=gears,
            max_length=max_length, overwrite=overwrite, torch_reference=not no_torch_reference,
            precision_modes=_precision_modes(precision_modes), split_threshold=split_threshold,
            validation=validation, formats=formats)
    except ToolError as exc:
        fail(exc)
    if as_json:
        echo(json.dumps(manifest, indent=1))
        return
    for line in manifest["notes"]:
        echo(f"note: {line}")
    echo(f"wrote {export_dir} in {manifest['seconds']:.1f} s (manifest.json, {manifest['lite']['script']})")


@click.command("infer")
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("--prompt", required=True)
@click.option("-o", "--output", "image_path", required=True, type=click.Path(path_type=Path),
              help="Image file to write (.png, .jpg, .webp, ...); a batch writes NAME-1.png, ... beside it.")
@click.option("--negative-prompt", default="", show_default=True)
@click.option("--height", type=int, default=None, help="Pixels; must be an exported bucket (default: square).")
@click.option("--width", type=int, default=None)
@click.option("--steps", type=int, default=20, show_default=True)
@click.option("--guidance", type=float, default=4.5, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="numpy seed of the initial noise.")
@click.option("--backend", type=click.Choice(["auto", "lite", "mindspore", "onnxruntime"]), default="auto",
              show_default=True, help="auto: MindSpore Lite when it imports, else MindSpore GraphCell (onnxruntime "
              "for an export of ONNX graphs only). onnxruntime: the ONNX graphs, without torch or MindSpore.")
@click.option("--overwrite", is_flag=True, help="Replace an existing image file.")
@click.option("--json", "as_json", is_flag=True)
def infer_command(export_dir, prompt, image_path, negative_prompt, height, width, steps, guidance, seed, backend,
                  overwrite, as_json):
    """Text to image from an export folder alone (no torch; no MindSpore with --backend onnxruntime)."""
    from .pipeline import infer
    from .runtime import BackendError, resolve_backend

    try:
        resolve_backend(backend)
    except BackendError as exc:
        fail(UsageError(str(exc)))
    try:
        result = infer(export_dir, prompt, image_path, negative_prompt=negative_prompt, height=height, width=width,
                       steps=steps, guidance=guidance, seed=seed, backend=backend, progress=not as_json,
                       overwrite=overwrite, log=note)
    except ToolError as exc:
        fail(exc)
    if as_json:
        echo(json.dumps(result, indent=1))
    else:
        echo(f"backend used: {', '.join(result['backend'])}")
        echo(f"wrote {', '.join(result['images'])} ({result['height']}x{result['width']}, bucket "
             f"{result['bucket']}, {steps} steps, guidance {guidance}, seed {seed})")


@click.command("validate")
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("--backend", type=click.Choice(["auto", "lite", "mindspore"]), default="auto", show_default=True,
              help="lite: the MindSpore Lite runtime (on the Ascend host: the deployed artifact); mindspore: "
              "GraphCell. auto: Lite when it imports.")
@click.option("--budget-gib", type=float, default=None,
              help="Memory budget for one graph's run (default: the export's rule, 1.3 x its largest graph's "
              "weights + 1 GiB).")
@click.option("--json", "as_json", is_flag=True, help="One record per graph on stdout.")
def validate_command(export_dir, backend, budget_gib, as_json):
    """Re-run each exported graph on its golden inputs and compare with the golden outputs. Graphs that do not
    fit the memory budget here are skipped and named, with the reason."""
    from .revalidate import validate_export

    if budget_gib is not None and budget_gib <= 0:
        fail(UsageError(f"--budget-gib {budget_gib:g}: must be positive"))
    checks = []

    def log(line):
        echo(line, err=as_json)

    try:
        checks = validate_export(export_dir, backend, None if budget_gib is None else int(budget_gib * 2**30), log)
    except ToolError as exc:
        fail(exc)
    ran = sum(c.status == "ok" for c in checks)
    skipped = [c.name for c in checks if c.status == "skipped"]
    if as_json:
        echo(json.dumps([{"graph": c.name, "status": c.status, "detail": c.detail, **c.record} for c in checks],
                        indent=1))
    else:
        echo(f"{ran} graph(s) matched their golden outputs" + (f"; skipped: {', '.join(skipped)}" if skipped else ""))
