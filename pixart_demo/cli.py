"""``pixart-ms demo [WORKDIR]``: the whole job on a tiny random PixArt-Sigma, end to end.

It builds a tiny random transformer with diffusers, saves it in both source layouts (a diffusers folder and an
original ``{"state_dict": ...}`` .pth with its buffers), converts both through the same code as
``pixart-ms convert``, verifies the folders, and compares the MindSpore outputs with the torch reference.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

FP32_TOL = 1e-5
FP16_TOL = 5e-3


def _require_references():
    try:
        import diffusers  # noqa: F401
    except ImportError:
        click.echo("error: the demo builds its models with diffusers; install pixart-mindspore[reference]",
                   err=True)
        sys.exit(2)


@click.command("demo")
@click.argument("workdir", required=False, type=click.Path(path_type=Path), default=Path("pixart-demo"))
def demo_command(workdir: Path):
    """Build, convert and check a tiny random PixArt-Sigma (default work folder: ./pixart-demo)."""
    _require_references()
    from converters.convert import Options, convert
    from converters.errors import ToolError
    from converters.verify import verify
    from mindspore_nets import PixArtTransformer2D
    from parity.metrics import compare

    from .checks import ms_transformer_output, torch_transformer_output, transformer_cases
    from .tiny import save_pixart_diffusers, save_pixart_original, tiny_pixart

    workdir = workdir.resolve()
    click.echo(f"work folder: {workdir}")
    sources = workdir / "sources"
    converted = workdir / "mindspore"
    sources.mkdir(parents=True, exist_ok=True)
    converted.mkdir(parents=True, exist_ok=True)

    model = tiny_pixart(seed=0)
    diffusers_dir = save_pixart_diffusers(model, sources / "transformer-diffusers")
    pth = save_pixart_original(model, sources / "pixart-sigma-tiny.pth")
    click.echo(f"built a tiny random PixArt-Sigma transformer: {diffusers_dir} and {pth}")

    outputs = {}
    try:
        for name, src, opts in (("from-diffusers", diffusers_dir, Options()),
                                ("from-pth", pth, Options(config=diffusers_dir / "config.json"))):
            out = converted / f"transformer-{name}"
            result = convert(src, out, "auto", opts, overwrite=True, progress=False)
            comp = result["components"][0]
            click.echo(f"converted {comp['layout']}: {comp['tensors']} tensors -> {out}")
            report = verify(out)
            click.echo(f"  verify: {'ok' if report['ok'] else report['components']}")
            outputs[name] = out
    except ToolError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)

    worst = {"fp32": 0.0, "fp16": 0.0}
    click.echo("\nMindSpore vs diffusers (relative L2; tolerance fp32 1e-5, fp16 5e-3):")
    for name, folder in outputs.items():
        for dtype in ("fp32", "fp16"):
            net = PixArtTransformer2D.from_pretrained(folder, dtype=dtype)
            for case, x, t, y, mask in transformer_cases():
                m = compare(ms_transformer_output(net, x, t, y, mask), torch_transformer_output(model, x, t, y, mask))
                worst[dtype] = max(worst[dtype], m["rel_l2"])
                click.echo(f"  {name:15s} {dtype}  {case:10s} rel_l2 {m['rel_l2']:.2e}  max_abs {m['max_abs']:.2e}")
    ok = worst["fp32"] <= FP32_TOL and worst["fp16"] <= FP16_TOL
    click.echo(f"\nworst: fp32 {worst['fp32']:.2e}, fp16 {worst['fp16']:.2e} -> {'PASS' if ok else 'FAIL'}")
    sys.exit(0 if ok else 1)
