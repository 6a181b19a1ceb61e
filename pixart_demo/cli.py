"""``pixart-ms demo [WORKDIR]``: the whole job on a tiny random PixArt-Sigma, end to end.

It builds a tiny random PixArt-Sigma pipeline with diffusers / transformers (transformer, T5 encoder saved
sharded, VAE, a sentencepiece tokenizer trained on the spot, scheduler) plus the transformer in the original
``{"state_dict": ...}`` .pth layout with its buffers, converts both through the same code as
``pixart-ms convert``, verifies the folders, and compares every MindSpore network with its torch reference.
"""
from __future__ import annotations

import shutil
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
    """Build, convert and check a tiny random PixArt-Sigma pipeline (default work folder: ./pixart-demo)."""
    _require_references()
    from converters.convert import Options, convert
    from converters.errors import ToolError
    from converters.verify import verify
    from mindspore_nets import AutoencoderKL, PixArtTransformer2D, T5Encoder
    from mindspore_nets.metrics import compare

    from parity import cases as checks
    from .tiny import TINY_T5, TINY_VAE, save_pixart_original, save_tiny_pipeline

    workdir = workdir.resolve()
    click.echo(f"work folder: {workdir}")
    sources, converted = workdir / "sources", workdir / "mindspore"
    shutil.rmtree(sources, ignore_errors=True)
    sources.mkdir(parents=True)
    converted.mkdir(parents=True, exist_ok=True)

    pipeline_src = sources / "pipeline"
    models = save_tiny_pipeline(pipeline_src)
    pth = save_pixart_original(models["transformer"], sources / "pixart-sigma-tiny.pth")
    click.echo(f"built a tiny random PixArt-Sigma pipeline (diffusers layout): {pipeline_src}")
    click.echo(f"and its transformer in the original layout: {pth}")

    pipeline_out, pth_out = converted / "pipeline", converted / "transformer-from-pth"
    try:
        for src, out, opts in ((pipeline_src, pipeline_out, Options()),
                               (pth, pth_out, Options(config=pipeline_src / "transformer" / "config.json"))):
            result = convert(src, out, "auto", opts, overwrite=True, progress=False)
            for comp in result["components"]:
                click.echo(f"converted {comp['component']} ({comp['layout']}): {comp['tensors']} tensors -> "
                           f"{comp['folder']}")
            report = verify(out)
            click.echo(f"  verify {out.name}: {'ok' if report['ok'] else report['components']}")
            if not report["ok"]:
                sys.exit(1)
    except ToolError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)

    rows = []  # (component, dtype, case, metrics)
    for dtype in ("fp32", "fp16"):
        for name, folder in (("transformer", pipeline_out / "transformer"), ("transformer (.pth)", pth_out)):
            net = PixArtTransformer2D.from_pretrained(folder, dtype=dtype)
            for case, x, t, y, mask in checks.transformer_cases():
                rows.append((name, dtype, case, compare(checks.ms_transformer_output(net, x, t, y, mask),
                                                        checks.torch_transformer_output(models["transformer"], x, t,
                                                                                        y, mask))))
        t5 = T5Encoder.from_pretrained(pipeline_out / "text_encoder", dtype=dtype)
        ids, mask = checks.t5_inputs(TINY_T5["vocab_size"])
        rows.append(("text_encoder", dtype, "padded batch", compare(checks.ms_t5_output(t5, ids, mask),
                                                                    checks.torch_t5_output(models["text_encoder"],
                                                                                           ids, mask))))
        vae = AutoencoderKL.from_pretrained(pipeline_out / "vae", dtype=dtype)
        image, latent = checks.vae_inputs(TINY_VAE)
        ours, ref = checks.ms_vae_outputs(vae, image, latent), checks.torch_vae_outputs(models["vae"], image, latent)
        rows.append(("vae", dtype, "encode", compare(ours[0], ref[0])))
        rows.append(("vae", dtype, "decode", compare(ours[1], ref[1])))

    tolerance = {"fp32": FP32_TOL, "fp16": FP16_TOL}
    click.echo(f"\nMindSpore vs the torch references (relative L2; tolerance fp32 {FP32_TOL:g}, fp16 {FP16_TOL:g}):")
    for name, dtype, case, m in rows:
        flag = "" if m["rel_l2"] <= tolerance[dtype] else "  <-- over tolerance"
        click.echo(f"  {name:19s} {dtype}  {case:13s} rel_l2 {m['rel_l2']:.2e}  max_abs {m['max_abs']:.2e}{flag}")
    worst = {d: max(m["rel_l2"] for _, dt, _, m in rows if dt == d) for d in tolerance}
    ok = all(worst[d] <= tolerance[d] for d in tolerance)
    click.echo(f"\nworst: fp32 {worst['fp32']:.2e}, fp16 {worst['fp16']:.2e} -> {'PASS' if ok else 'FAIL'}")
    click.echo(f"converted pipeline: {pipeline_out}")
    sys.exit(0 if ok else 1)
