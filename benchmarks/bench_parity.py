#!/usr/bin/env python
"""Parity benchmark: ``pixart-ms parity`` on a full-size random PixArt-Sigma XL/2 transformer at 1024x1024
(latent 128x128, batch 2, 300 caption tokens), against the two forward passes alone in the same invocation.

    python benchmarks/bench_parity.py [--workdir DIR] [--timesteps 999] [--keep]

1. builds a diffusers ``PixArtTransformer2DModel`` (XL/2, 1024-MS config, default random init, seed 0) folder and
   converts it with ``pixart-ms convert`` (once; reused when present);
2. measures ``pixart-ms parity SRC OUT --component transformer`` (taps on every block, report written);
3. measures a process that loads the same two models the same way and runs one forward on each side with no taps
   (``--forwards``), timing the forwards alone.
Whole-process wall time and peak RSS come from ``measure`` of ``bench_convert.py``; results go to
``benchmarks/results/parity.json`` and the ``## Parity`` section of ``BENCHMARKS.md``.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_convert import machine, measure, remove, write_section  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "parity.json"
SECTION = "## Parity"
MiB = 2**20


def generate(folder: Path) -> None:
    import torch
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(0)
    model = PixArtTransformer2DModel(sample_size=128, interpolation_scale=2, use_additional_conditions=False,
                                     caption_channels=4096)
    model.save_pretrained(folder)


def forwards(src: Path, out: Path, timesteps: str) -> None:
    """Load both sides as the harness does, then time one forward per timestep on each side, no taps."""
    import mindspore as ms

    from converters.references import load_reference, read_manifest
    from parity.cases import build_cases, ms_forward, torch_forward
    from parity.harness import load_network

    ms.set_context(mode=ms.PYNATIVE_MODE)
    model = load_reference(out, src)
    net = load_network("transformer", out, "fp32")
    cases = build_cases("transformer", read_manifest(out)["config"],
                        timesteps=tuple(float(t) for t in timesteps.split(",")))
    seconds = {"torch": 0.0, "mindspore": 0.0}
    for case in cases:
        t0 = time.perf_counter()
        torch_forward("transformer", model, case.arrays)
        t1 = time.perf_counter()
        ms_forward("transformer", net, case.arrays)
        seconds["torch"] += t1 - t0
        seconds["mindspore"] += time.perf_counter() - t1
    print(json.dumps({k: round(v, 2) for k, v in seconds.items()}))


def render(results: dict) -> str:
    r = results
    m = r["machine"]
    p, f = r["parity"], r["forwards"]
    report = r["report"]["components"]["transformer"]
    groups = {}
    for row in report["summary"]:
        key = re.sub(r"\.(\d+)(?=\.|$)", ".{n}", row["tap"], count=1)
        if key not in groups or row["rel_l2"] > groups[key]["rel_l2"]:
            groups[key] = row
    lines = [SECTION, "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_bytes'] / 2**30:.1f} GiB RAM; Python {m['python']}, "
             f"MindSpore {m['versions']['mindspore']}, torch {m['versions']['torch']}; {r['date']}.", "",
             "Full-size random PixArt-Sigma XL/2 (diffusers default init, seed 0), 1024x1024 bucket (latent 128x128, "
             f"4096 tokens), batch 2, 300 caption tokens (1 and 13 valid), timesteps {r['timesteps']}; fp32 both sides.",
             "", "| run | wall s | peak RSS MiB | forwards s (torch + MindSpore) |", "|---|---|---|---|",
             f"| `pixart-ms parity` (taps on {len(report['summary'])} points, report) | {p['wall_s']:.1f} | "
             f"{p['maxrss_bytes'] / MiB:,.0f} | {report['seconds']['torch']:.1f} + {report['seconds']['mindspore']:.1f} |",
             f"| forwards alone (same loading, no taps) | {f['wall_s']:.1f} | {f['maxrss_bytes'] / MiB:,.0f} | "
             f"{r['forward_seconds']['torch']:.1f} + {r['forward_seconds']['mindspore']:.1f} |", "",
             f"Parity run / forwards-alone run: {p['wall_s'] / f['wall_s']:.2f}x wall time. "
             f"Tapped forwards / plain forwards: "
             f"{(report['seconds']['torch'] + report['seconds']['mindspore']) / sum(r['forward_seconds'].values()):.2f}x.",
             "", "Worst tap per group (relative L2, MindSpore fp32 vs torch fp32):", "",
             "| tap | worst rel L2 | max abs | cosine |", "|---|---|---|---|"]
    for key, row in groups.items():
        lines.append(f"| `{key}` | {row['rel_l2']:.2e} | {row['max_abs']:.2e} | {row['cosine']:.9f} |")
    lines += ["", "Reproduce: `python benchmarks/bench_parity.py` (writes this section).", ""]
    return "\n".join(lines)



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/pixart-ms-bench-parity"))
    parser.add_argument("--timesteps", default="999")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--generate", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--forwards", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        return generate(args.generate)
    if args.forwards:
        return forwards(*args.forwards, args.timesteps)
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    src, out, logs = work / "transformer", work / "transformer-ms", work / "logs"
    if not (src / "config.json").is_file():
        subprocess.run([sys.executable, __file__, "--generate", str(src)], check=True)
    if not (out / "manifest.json").is_file():
        subprocess.run(["pixart-ms", "convert", str(src), "-o", str(out), "--overwrite"], check=True)
    report_dir = work / "report"
    parity = measure(["pixart-ms", "parity", str(src), str(out), "--component", "transformer", "--timesteps",
                      args.timesteps, "--report", str(report_dir)], logs, "parity")
    fwd = measure([sys.executable, __file__, "--forwards", str(src), str(out), "--timesteps", args.timesteps],
                  logs, "forwards")
    if fwd.get("exit"):
        sys.exit(f"forwards run failed: {fwd.get('error')}")
    results = {"date": time.strftime("%Y-%m-%d"), "machine": machine(work, False), "timesteps": args.timesteps,
               "parity": parity, "forwards": fwd,
               "forward_seconds": json.loads((logs / "forwards.out").read_text().strip().splitlines()[-1]),
               "report": json.loads((report_dir / "parity.json").read_text())}
    for tap in results["report"]["components"]["transformer"]["taps"]:
        tap.pop("dtype", None)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1, default=float) + "\n")
    write_section(render(results), SECTION)
    print(render(results))
    if not args.keep:
        remove(work)


if __name__ == "__main__":
    main()
