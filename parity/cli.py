"""``pixart-ms parity SRC OUT``.

Every argument and path is checked before torch or MindSpore is imported: the folders and their manifests, the
tolerance, the bucket (one of the model's own, resolved here to the latent grid every spatial view runs at), the
report folder.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import click

from pixart_core import registry
from pixart_core.cli import component_option, echo, fail, note, split_names
from pixart_core.errors import SourceError, ToolError, UsageError
from pixart_core.outputs import atomic_folder, check_output

REPORT_KEYS = ("source", "output", "dtype", "components", "ok")


def choices() -> list[str]:
    return [*registry.COMPONENTS, *[v for v in registry.VIEWS if v not in registry.COMPONENTS]]


def is_parity_report(folder: Path) -> bool:
    """A folder ``--report`` wrote before (its parity.json): the one kind of folder ``--overwrite`` replaces."""
    try:
        report = json.loads((Path(folder) / "parity.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and all(k in report for k in REPORT_KEYS)


def _config(folder: Path) -> dict:
    from pixart_core.manifests import read_manifest

    return read_manifest(folder, "converted")["config"]


def resolve_latent(out: Path, found: dict[str, Path], bucket: str | None, height, width):
    """(latent grid of the spatial views or None, VAE scale): ``--bucket`` must be one of the model's buckets (the
    table export uses); ``--height/--width`` come together, as positive multiples of 8."""
    from mindspore_nets.buckets import model_buckets
    from pixart_core.components.vae import scale_factor

    if (height is None) != (width is None):
        raise UsageError("give both --height and --width, or neither")
    vae_folder = found.get("vae_decoder") or found.get("vae_encoder")
    if vae_folder is None and (out / "vae" / "manifest.json").is_file():
        vae_folder = out / "vae"
    vae_config = _config(vae_folder) if vae_folder is not None else None
    scale = scale_factor(vae_config)
    if height is not None:
        if bucket is not None:
            raise UsageError("give --bucket or --height/--width, not both")
        if height <= 0 or width <= 0 or height % 8 or width % 8:
            raise UsageError(f"--height {height} --width {width}: must be positive multiples of 8")
        return None, scale
    if "transformer" in found:
        tconfig = _config(found["transformer"])
    elif vae_config is not None:  # a lone VAE: its pixel sample_size, whole latents (as export does)
        tconfig = {"sample_size": vae_config.get("sample_size", 1024) // scale, "patch_size": 1}
    else:
        if bucket is not None:
            raise UsageError(f"--bucket {bucket}: {out} has no transformer or VAE to run at a bucket")
        return None, scale
    table, _ = model_buckets(tconfig, scale)
    key = "1.0" if bucket is None else bucket.strip()
    if key not in table:
        raise UsageError(f"--bucket {bucket}: not one of this model's buckets ({', '.join(table)})")
    h, w = table[key]
    return (h // scale, w // scale), scale


@click.command("parity")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@component_option(choices(), "Components to compare (default: all in OUT; vae = its encoder and decoder).")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
              help="MindSpore compute dtype (bf16 on CPU: bf16 weights, fp32 compute).")
@click.option("--tolerance", type=float, help="Relative-L2 tolerance per tap, > 0 (default: fp32 1e-5, fp16 5e-3, "
              "bf16 2e-2, by the compute dtype or the stored weights' dtype, whichever is coarser).")
@click.option("--bucket", default=None, help="Aspect-ratio bucket of the model's table, e.g. 0.57 [default: 1.0].")
@click.option("--height", type=int, help="Pixel height of the inputs (instead of --bucket).")
@click.option("--width", type=int, help="Pixel width of the inputs (instead of --bucket).")
@click.option("--timesteps", default="999,500,1", show_default=True, help="Transformer timesteps, one case each.")
@click.option("--max-length", default=300, show_default=True, help="Caption tokens.")
@click.option("--seed", default=0, show_default=True)
@click.option("--sampling/--no-sampling", default=None,
              help="Guided denoising run on both sides (default: on for pipeline folders).")
@click.option("--steps", default=20, show_default=True, help="Sampling steps.")
@click.option("--report", "report_dir", type=click.Path(path_type=Path), help="Write parity.json/.md/.html here.")
@click.option("--overwrite", is_flag=True, help="Replace a report folder an earlier --report wrote.")
@click.option("--whole", is_flag=True, help="Load both whole networks at once instead of streaming them block by "
              "block (the VAE is always compared whole).")
@click.option("--max-memory", default=None, help="Refuse to start when the run's peak-memory estimate exceeds this: "
              "a size (12GiB, 800M) or a share of RAM (60%) [default: 60% of RAM].")
@click.option("--json", "as_json", is_flag=True, help="Print parity.json on stdout instead of the summary.")
def parity_command(src, out, component, dtype, tolerance, bucket, height, width, timesteps, max_length, seed,
                   sampling, steps, report_dir, overwrite, whole, max_memory, as_json):
    """Compare converted MindSpore networks with their torch references, layer by layer."""
    from .cases import case_shapes
    from .harness import QUERY_ROWS, components_of, tolerance_dtypes
    from .memory import check_budget, estimate, parse_memory

    try:
        requested = registry.views_of(split_names(component, choices()))
        try:
            steps_t = tuple(float(t) for t in timesteps.split(","))
        except ValueError:
            raise UsageError(f"--timesteps {timesteps!r}: expected numbers separated by commas") from None
        if not all(0 <= t < 1000 for t in steps_t):
            raise UsageError(f"--timesteps {timesteps}: each must lie in 0..999")
        if tolerance is not None and not (tolerance > 0 and math.isfinite(tolerance)):
            raise UsageError(f"--tolerance {tolerance:g}: must be a positive number")
        if max_length < 1 or steps < 1:
            raise UsageError(f"--max-length and --steps must be >= 1 (got {max_length}, {steps})")
        if not Path(src).exists():
            raise SourceError(f"{src}: no such file or folder")
        found = components_of(out, requested or None)
        latent, vae_scale = resolve_latent(Path(out), found, bucket, height, width)
        if report_dir is not None:
            check_output(report_dir, inputs=[src, out], overwrite=overwrite, ours=is_parity_report)
        chosen, notes = tolerance_dtypes(found, dtype) if tolerance is None else ({}, [])
        budget = parse_memory(max_memory)
        case_options = dict(height=height, width=width, latent_hw=latent, max_length=max_length)
        estimates = [estimate(view, folder, case_shapes(view, _config(folder), **case_options), whole, QUERY_ROWS)
                     for view, folder in found.items()]
        check_budget(estimates, budget)
    except ToolError as exc:
        fail(exc)
    for line in notes:
        note(f"note: {line}")

    from .harness import run_parity
    from .report import markdown, write_reports

    try:
        report = run_parity(src, out, requested or None, dtype, tolerance, whole=whole, height=height, width=width,
                            latent_hw=latent, max_length=max_length, timesteps=steps_t, seed=seed)
        report["memory_estimate_bytes"] = {e["view"]: e["bytes"] for e in estimates}
        pipeline = (Path(out) / "model_index.json").is_file() and (Path(src) / "model_index.json").is_file()
        if sampling or (sampling is None and pipeline and not requested):
            from .sampling import SAMPLING_TOLERANCE, sampling_parity

            coarsest = max([dtype, *chosen.values()], key=SAMPLING_TOLERANCE.get)
            if latent is not None:
                height, width = latent[0] * vae_scale, latent[1] * vae_scale
            report["sampling"] = sampling_parity(src, out, steps=steps, seed=seed, max_length=max_length,
                                                 dtype=dtype, height=height, width=width,
                                                 tolerance=SAMPLING_TOLERANCE[coarsest])
            report["ok"] = report["ok"] and report["sampling"]["ok"]
        if report_dir is not None:
            with atomic_folder(report_dir, log=note, ours=is_parity_report) as tmp:
                write_reports(report, tmp)
            note(f"report: {Path(report_dir) / 'parity.html'}")
    except ToolError as exc:
        fail(exc)
    echo(json.dumps(report, indent=1, default=float) if as_json else markdown(report))
    sys.exit(0 if report["ok"] else 1)
