"""``pixart-ms convert`` and ``pixart-ms verify``."""
from __future__ import annotations

import json
from pathlib import Path

import click

from pixart_core import registry
from pixart_core.cli import echo, fail, note
from pixart_core.errors import CheckFailed, ToolError
from pixart_core.naming import fold
from pixart_core.outputs import human_bytes


def print_summary(result: dict) -> None:
    if result.get("dry_run"):
        echo("dry run: nothing written")
    for comp in result["components"]:
        written = f" -> {comp['written_layout']}" if comp.get("written_layout") else ""
        echo(f"{comp['component']}: {comp['layout']}{written} from {comp['source']}")
        kept = (f" ({', '.join(comp['kept_fp32'])} kept in fp32: fp16 overflows there)"
                if comp.get("kept_fp32") else "")
        echo(f"  {comp['tensors']} tensors, {comp['values']:,} values, {human_bytes(comp['bytes'])}, "
             f"dtype {'/'.join(comp['dtypes'])}{kept}")
        for extra in comp["extras"]:
            echo(f"  kept extra: {extra}")
        by_reason: dict[str, list[str]] = {}
        for drop in comp["dropped"]:
            by_reason.setdefault(drop["reason"], []).append(drop["key"])
        for reason, keys in by_reason.items():
            echo(f"  dropped: {', '.join(fold(keys))} ({reason})")
        for line in comp["notes"]:
            echo(f"  note: {line}")
        if result.get("dry_run"):
            for row in comp["plan"]:
                echo(f"    {row['target']} <- {', '.join(row['sources'])} [{row['op']}] "
                     f"{tuple(row['shape'])} {row['dtype']}")
    if "output" in result:
        echo(f"wrote {result['output']} in {result['seconds']:.1f} s")


@click.command("convert")
@click.argument("src", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--component", type=click.Choice(["auto", *registry.COMPONENTS, "pipeline"]),
              default="auto", show_default=True)
@click.option("--config", type=click.Path(path_type=Path, dir_okay=False),
              help="A diffusers/transformers config.json for the source (sizes the weights cannot tell).")
@click.option("--sample-size", type=int, help="Latent sample size of an original .pth: 32/64/128/256 (another "
              "size only with --config giving the architecture).")
@click.option("--dtype", type=click.Choice(["keep", "fp32", "fp16", "bf16"]), default="keep", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["safetensors", "ckpt"]), default="safetensors",
              show_default=True)
@click.option("--to", "to", type=click.Choice(["mindspore", "diffusers", "original"]), default="mindspore",
              show_default=True, help="Layout written: a MindSpore folder, or back to a diffusers/transformers "
              "folder or an original .pth (from MindSpore weights, ours or mindone's).")
@click.option("--ema", is_flag=True, help="Convert the EMA weights of a training checkpoint.")
@click.option("--drop-y-embedding", is_flag=True, help="Do not keep the original's y_embedding buffer.")
@click.option("--y-embedding-from", type=click.Path(path_type=Path),
              help="Take the transformer's y_embedding (caption-dropout embedding) from this checkpoint: mindone's "
              "training saves none, the original layout needs it.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder that pixart-ms wrote (never "
              "another folder, a file or a symlink).")
@click.option("--dry-run", is_flag=True, help="Print the plan; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary on stdout.")
def convert_command(src, out, component, config, sample_size, dtype, fmt, to, ema, drop_y_embedding,
                    y_embedding_from, overwrite, dry_run, as_json):
    """Convert PyTorch weights (original .pth, diffusers, transformers) to a MindSpore folder, or MindSpore weights
    back to a torch layout (--to)."""
    from .convert import Options, convert

    opts = Options(config=config, sample_size=sample_size, dtype=dtype, fmt=fmt, ema=ema,
                   keep_y_embedding=not drop_y_embedding, to=to, y_embedding_from=y_embedding_from)
    try:
        result = convert(src, out, component, opts, overwrite=overwrite, dry_run=dry_run, progress=not as_json,
                         log=note)
    except ToolError as exc:
        fail(exc)
    if as_json:
        echo(json.dumps(result, indent=1))
    else:
        print_summary(result)


@click.command("verify")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def verify_command(folder, as_json):
    """Re-check a converted folder (files, sizes, every tensor's bytes) or an export folder (every file's size and
    sha256) against its manifest."""
    from .verify import verify

    try:
        report = verify(folder)
    except ToolError as exc:
        fail(exc)
    if as_json:
        echo(json.dumps(report, indent=1))
    else:
        for comp, problems in report["components"].items():
            echo(f"{comp}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
            for p in problems:
                echo(f"  {p}")
    if not report["ok"]:
        fail(CheckFailed(f"{folder}: verification failed"))
