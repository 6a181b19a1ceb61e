"""``pixart-ms parity SRC OUT``."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from pixart_core import registry
from pixart_core.cli import component_option, fail, split_names
from pixart_core.errors import ToolError, UsageError

def choices() -> list[str]:
    return [*registry.COMPONENTS, *[v for v in registry.VIEWS if v not in registry.COMPONENTS]]


@click.command("parity")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@component_option(choices(), "Components to compare (default: all in OUT; vae = its encoder and decoder).")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
              help="MindSpore compute dtype (bf16 on CPU: bf16 weights, fp32 compute).")
@click.option("--tolerance", type=float, help="Relative-L2 tolerance per tap (default fp32 1e-5, fp16 5e-3, bf16 2e-2).")
@click.option("--bucket", default="1.0", show_default=True, help="Aspect-ratio bucket of the transformer input.")
@click.option("--height", type=int, help="Pixel height of the inputs (overrides --bucket).")
@click.option("--width", type=int, help="Pixel width of the inputs (overrides --bucket).")
@click.option("--timesteps", default="999,500,1", show_default=True, help="Transformer timesteps, one case each.")
@click.option("--max-length", default=300, show_default=True, help="Caption tokens.")
@click.option("--seed", default=0, show_default=True)
@click.option("--sampling/--no-sampling", default=None,
              help="Guided denoising run on both sides (default: on for pipeline folders).")
@click.option("--steps", default=20, show_default=True, help="Sampling steps.")
@click.option("--report", "report_dir", type=click.Path(path_type=Path), help="Write parity.json/.md/.html here.")
@click.option("--json", "as_json", is_flag=True, help="Print parity.json on stdout instead of the summary.")
def parity_command(src, out, component, dtype, tolerance, bucket, height, width, timesteps, max_length, seed,
                   sampling, steps, report_dir, as_json):
    """Compare converted MindSpore networks with their torch references, layer by layer."""
    try:
        requested = registry.views_of(split_names(component, choices()))
        steps_t = tuple(float(t) for t in timesteps.split(","))
    except ValueError:
        fail(UsageError(f"--timesteps {timesteps!r}: expected numbers separated by commas"))
    except ToolError as exc:
        fail(exc)

    from .harness import run_parity
    from .report import markdown, write_reports

    try:
        report = run_parity(src, out, requested or None, dtype, tolerance, height=height, width=width, bucket=bucket,
                            max_length=max_length, timesteps=steps_t, seed=seed)
        pipeline = (Path(out) / "model_index.json").is_file() and (Path(src) / "model_index.json").is_file()
        if sampling or (sampling is None and pipeline and not requested):
            from .sampling import sampling_parity

            report["sampling"] = sampling_parity(src, out, steps=steps, seed=seed, max_length=max_length,
                                                 dtype=dtype, height=height, width=width)
            report["ok"] = report["ok"] and report["sampling"]["ok"]
    except ToolError as exc:
        fail(exc)
    if report_dir is not None:
        paths = write_reports(report, report_dir)
        click.echo(f"report: {paths['html']}", err=True)
    click.echo(json.dumps(report, indent=1, default=float) if as_json else markdown(report))
    sys.exit(0 if report["ok"] else 1)
