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

from pixart_core.cli import fail
from pixart_core.errors import OutputError, ToolError, UsageError

MARKER = ".pixart-demo"  # marks a work folder the demo made: the only kind it writes into again


def _require_references():
    try:
        import diffusers  # noqa: F401
    except ImportError:
        fail(UsageError("the demo builds its models with diffusers; install pixart-mindspore[reference]"))


def _check_workdir(workdir: Path) -> None:
    """The demo writes only into a new or empty folder, or one an earlier demo made: it replaces its own
    sub-folders there, and nothing of anyone else's."""
    if workdir.exists() and not workdir.is_dir():
        fail(OutputError(f"{workdir}: a file is in the way; give a folder for the demo"))
    if workdir.is_dir() and any(workdir.iterdir()) and not (workdir / MARKER).is_file():
        fail(OutputError(f"{workdir}: not empty and not made by `pixart-ms demo`; give a new or empty folder"))


def _claim(workdir: Path) -> None:
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / MARKER).write_text("made by `pixart-ms demo`; it replaces its own sub-folders here\n")
    except OSError as exc:
        fail(OutputError(f"{workdir}: cannot write ({exc.strerror})"))


@click.command("demo")
@click.argument("workdir", required=False, type=click.Path(path_type=Path), default=Path("pixart-demo"))
def demo_command(workdir: Path):
    """Build, convert and check a tiny random PixArt-Sigma pipeline (default work folder: ./pixart-demo). Its
    weights are random: the image it generates at the end is noise, by design."""
    workdir = workdir.resolve()
    _check_workdir(workdir)
    _require_references()
    _claim(workdir)
    from converters.convert import Options, convert
    from converters.verify import verify
    from mindir_export.export import export_and_infer
    from parity.harness import run_parity
    from parity.report import markdown, write_reports
    from parity.sampling import sampling_parity

    from .tiny import save_pixart_original, save_tiny_pipeline

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
        fail(exc)

    click.echo("\nparity of the converted pipeline against the torch references (layer by layer, then sampling):")
    report = run_parity(pipeline_src, pipeline_out, dtype="fp32")
    report["sampling"] = sampling_parity(pipeline_src, pipeline_out, steps=10)
    report["ok"] = report["ok"] and report["sampling"]["ok"]
    paths = write_reports(report, workdir / "parity")
    click.echo(markdown(report))
    checks = [("pipeline fp32", report["ok"])]
    for title, src, out, dtype in (("transformer from .pth, fp32", pth, pth_out, "fp32"),
                                   ("pipeline fp16", pipeline_src, pipeline_out, "fp16")):
        extra = run_parity(src, out, dtype=dtype)
        worst = max(t["rel_l2"] for c in extra["components"].values() for t in c["taps"])
        click.echo(f"{title}: worst tap rel L2 {worst:.2e} (tolerance {extra['tolerance']:g}) -> "
                   f"{'PASS' if extra['ok'] else 'FAIL at ' + str([c['first_failure'] for c in extra['components'].values() if not c['ok']])}")
        checks.append((title, extra["ok"]))
    click.echo("\nexport to MindIR (validated) and offline text-to-image from the exported artifacts alone:")
    try:
        offline = export_and_infer(pipeline_out, workdir / "offline", log=click.echo)
    except ToolError as exc:
        fail(exc)
    click.echo(f"offline image: {offline['image']} (random weights, so it is noise; PSNR vs the eager MindSpore "
               f"pipeline {offline['psnr_vs_eager']:.1f} dB, backend {', '.join(offline['backend'])})")
    checks.append(("offline image equals eager MindSpore (PSNR >= 60 dB)", offline["psnr_vs_eager"] >= 60))
    ok = all(passed for _, passed in checks)
    click.echo(f"\nparity report: {paths['html']}")
    click.echo(f"converted pipeline: {pipeline_out}")
    click.echo(f"export folder: {offline['export_dir']} (try: pixart-ms infer {offline['export_dir']} "
               f"--prompt 'a red fox' -o fox.png)")
    click.echo(f"demo: {'PASS' if ok else 'FAIL'}")
    sys.exit(0 if ok else 1)
