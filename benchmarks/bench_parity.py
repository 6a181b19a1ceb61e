#!/usr/bin/env python
"""Parity benchmark at real scale: ``pixart-ms parity`` (block-streamed, the default) on the full-size random
PixArt-Sigma XL/2 at 1024x1024 and on a full-size synthetic T5-XXL, and (compared whole) the full-size SDXL VAE
decoder at 1024x1024, each in its own measured process.

    python benchmarks/bench_parity.py [--cases xl2_1024,t5xxl,vae_1024] [--workdir DIR] [--keep]

Sources (built by ``bench_convert.py``, reused when present): the XL/2 original ``.pth`` and the T5-XXL bf16
shards under ``/tmp/pixart-ms-bench/src``. Each is converted once (``pixart-ms convert``, dtype kept), then
``pixart-ms parity SRC OUT --report DIR`` runs under ``measure`` (``bench_convert.py``: /usr/bin/time -v and the
process tree's sampled RSS). Reported per case: wall time, peak RSS, peak / the largest block's fp32 bytes, the
issue's budget (2 x largest block + activations + 1.5 GiB), and the forward-only times of both sides from the same
run (``seconds`` of the report: torch's forward without the hooks' work; MindSpore's block forward fed torch's
input, compiled with ms.jit, no taps). Results: ``benchmarks/results/parity.json`` and the ``## Parity at real
scale`` section of ``BENCHMARKS.md``.
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
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_convert import machine, measure, remove, write_section  # noqa: E402
from support import machine_summary  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "parity.json"
SECTION = "## Parity at real scale"
BENCH = Path("/tmp/pixart-ms-bench")
GiB, MiB = 2**30, 2**20

CASES = {
    "xl2_1024": {"source": BENCH / "src/pixart/PixArt-Sigma-XL-2-1024-MS.pth", "component": "transformer",
                 # one timestep: cases run one after the other, so the peak is that of the default three
                 "view": "transformer", "args": ["--timesteps", "999"], "label": "XL/2 transformer, 1024x1024 (4096 "
                 "tokens), batch 2, 300 caption tokens, timestep 999"},
    "t5xxl": {"source": BENCH / "src/t5/text_encoder", "component": "text_encoder", "view": "text_encoder",
              # bf16 weights compared in fp32 on both sides: the fp32 compute tolerance applies
              "args": ["--tolerance", "1e-5"], "label": "T5-XXL encoder (24 blocks, bf16 weights computed in fp32), "
              "2 x 300 tokens with padding"},
    # the VAE is compared whole (no blocks): a full-size SDXL VAE of diffusers' own init, made once in the workdir
    "vae_1024": {"source": None, "component": "vae", "view": "vae_decoder",
                 "args": ["--component", "vae_decoder", "--height", "1024", "--width", "1024"],
                 "label": "SDXL VAE decoder, 128x128 latent to 1024x1024 (whole network, fast CPU kernels)"},
}
VAE_RULE = 6 * GiB  # the memory rule for parity at 1024^2


def run_case(name: str, work: Path) -> dict:
    from parity.harness import QUERY_ROWS
    from parity.memory import BASELINE, activation_bytes, weight_bytes
    from parity.cases import case_shapes
    from parity.stages import stages_of
    from pixart_core.manifests import read_manifest

    case = CASES[name]
    source = case["source"]
    if source is None:  # bench_export's full-size SDXL VAE
        from bench_export import generate_vae

        source = work / f"{name}-src"
        if not (source / "config.json").is_file():
            generate_vae(source)
    out = work / f"{name}-ms"
    if not (out / "manifest.json").is_file():
        subprocess.run(["pixart-ms", "convert", str(source), "-o", str(out), "--component",
                        case["component"], "--overwrite"], check=True)
    report_dir = work / f"{name}-report"
    result = measure(["pixart-ms", "parity", str(source), str(out), "--report", str(report_dir),
                      "--overwrite", *case["args"]], work / "logs", name)
    report = json.loads((report_dir / "parity.json").read_text())
    comp = report["components"][case["view"]]
    config = read_manifest(out, "converted")["config"]
    if stages_of(case["view"]) is None:  # compared whole: no blocks
        from parity.memory import estimate

        shapes = case_shapes(case["view"], config, height=1024, width=1024)
        output = next(r for r in comp["summary"] if r["tap"] == "output")
        return {"label": case["label"], "wall_s": result["wall_s"], "maxrss_bytes": result["maxrss_bytes"],
                "exit": result.get("exit"), "weights_bytes": weight_bytes(out, None)[0],
                "estimate_bytes": estimate(case["view"], out, shapes, True, QUERY_ROWS)["bytes"],
                "rule_bytes": VAE_RULE, "seconds": comp["seconds"], "ok": comp["ok"],
                "first_failure": comp["first_failure"], "taps": len(comp["summary"]), "cases": comp["cases"],
                "output_rel_l2": output["rel_l2"], "worst_tap": max(comp["summary"], key=lambda r: r["rel_l2"])["tap"],
                "worst_rel_l2": max(r["rel_l2"] for r in comp["summary"]), "report_dir": str(report_dir)}
    total, largest, _ = weight_bytes(out, stages_of(case["view"]).blocks)
    latent = (128, 128) if case["view"] == "transformer" else None
    act = activation_bytes(case["view"], config, case_shapes(case["view"], config, latent_hw=latent), QUERY_ROWS)
    block = re.compile(re.escape(stages_of(case["view"]).blocks) + r"\.\d+\Z")
    block_taps = [r for r in comp["summary"] if block.match(r["tap"])]
    return {"label": case["label"], "wall_s": result["wall_s"], "maxrss_bytes": result["maxrss_bytes"],
            "exit": result.get("exit"), "weights_bytes": total, "largest_block_bytes": largest,
            "activation_bytes": act, "budget_bytes": 2 * largest + act + BASELINE,
            "seconds": comp["seconds"], "ok": comp["ok"], "first_failure": comp["first_failure"],
            "taps": len(comp["summary"]), "cases": comp["cases"],
            "block_rel_l2": [min(r["rel_l2"] for r in block_taps), max(r["rel_l2"] for r in block_taps)],
            "local_rel_l2": [min(r["rel_l2"] for r in comp["local"]), max(r["rel_l2"] for r in comp["local"])],
            "worst_tap": max(comp["summary"], key=lambda r: r["rel_l2"])["tap"],
            "worst_rel_l2": max(r["rel_l2"] for r in comp["summary"]),
            "report_dir": str(report_dir)}


NOTES = """
Notes (28 Nov 2026):

- The SDXL VAE decoder row was re-measured at 2cd4b63 on a quiet host (the convolution's bias added in the copies
  to host buffers, band rows copied out by numpy): 5.72 GiB, within the 6 GiB rule (5.67 GiB at f88bfa9); at 9258fbb
  the same command (`--max-memory 20GiB`) was killed by an 18 GiB watchdog. Three changes: the torch side's taps go
  to a temporary folder and come back one at a time (2.2 GiB held beside our forward before), `metrics.compare`
  accumulates over 4M elements at a time (a 1 GiB tap took about 10 GiB of float64 copies), and the fast VAE Cells
  keep their large outputs in host buffers instead of MindSpore's pool (`layers.host_buffers`; our decode alone
  6.62 -> 5.03 GiB). Its ratio is not the 1.5x goal's, which MindSpore's CPU kernels cannot reach for this decoder:
  torch 86 s, ours 183 s including the measuring of every tap (`bench_vae_speed.py`: 2.0-2.3x for the forward
  alone; `vae_conv_floor.py`: MindSpore's MatMul alone on the decode's im2col products is 1.58x torch's
  convolutions).

- The XL/2 1024x1024 row was re-measured at 736ec93 on a quiet host after this stop's changes to the parity path
  (stepwise metrics, skipped same-dtype casts): MindSpore/torch **1.26** (136 / 108 s), 481 s wall, peak 3.18 GiB;
  the T5-XXL row too: 0.86 (39 / 46 s), 241 s wall, peak 3.28 GiB (its budget 3.39 GiB), the same peak as at b7ca858.
- Before, at c965143 on a quiet host: MindSpore/torch **1.34** (152 / 113 s), 568 s wall,
  peak 3.19 GiB. Attention copies strided head views once before its query slices (each slice's matmul had copied
  the whole k and v again: 3.6 -> 1.9 s of self-attention a block, bitwise equal), and a cross-attention to 300
  caption tokens takes as many query rows at a time as hold the score bytes of a square slice (no slicing at 512
  rows: the peak's +0.44 GiB against the row below, within the 3.85 GiB budget).
- Before that (27 Nov, 46fba85, quiet host): PYNATIVE ops launch synchronously
  (`layers.synchronous_launch`; MindSpore's asynchronous pipeline kept its queue threads spinning on the 2 cores):
  MindSpore/torch **1.57**, 547 s wall (at 9633c35, asynchronous, on a host running two other heavy jobs: 2.15 and
  1868 s; 2.77 at fe69796 with the plain ops), peak 2.75 GiB. `bench_dit_speed.py` gives the per-op picture: the
  linears now run at 0.9-1.1x torch, the self-attention core (no fused CPU kernel in MindSpore) at 1.5x; per block
  MindSpore takes 5.9 s against torch's 3.8 s, of which the timed ops account for 3.5 s against 3.1 s.
- T5-XXL peak over the stops: 4.82 GiB (whole embedding kept), 3.90, 3.86 (one compiled graph per block structure),
  then 3.78 GiB on a loaded host after fresh block cells stopped drawing on MindSpore's pool; then 3.41 GiB (5fe4e04,
  the torch blocks cast the bf16 source in torch) and 3.42 GiB (a192178, reverted), 27 MB over the 3.39 GiB budget.
  Then **3.28 GiB** at b7ca858 (the table's row; loaded host, 469 s): the one change on the parity path since is
  glibc's mmap threshold pinned at 1 MiB for streamed runs (`pixart_core/heap.py`), so that freed block tensors go
  back to the OS instead of into glibc's heap (on the streamed torch reference of the XL/2 it took the peak from 2.04
  to 1.13 GiB). An RSS trace around each step (research/s17/trace_parity_mem.py) had shown a steady 2.30 GiB between
  blocks and 3.06 GiB after each torch block load (+0.72 GiB fp32 block), the rest transient.
"""


def render(results: dict) -> str:
    m = results["machine"]
    lines = [SECTION, "",
             f"Machine: {machine_summary(m)}; {results['date']}. Shared "
             "with other jobs while measured: times are indicative, the same-run ratios less so.", "",
             "`pixart-ms parity` streamed block by block (the default): one block of each side in memory, MindSpore "
             "blocks compiled once (ms.jit) and refilled, attention in query blocks of 512 rows.", "",
             "| model | wall s | peak RSS GiB | largest block fp32 GiB | peak / block | budget GiB (2 x block + act. "
             "+ 1.5) | torch fwd s | MindSpore fwd s | MS / torch |", "|---|---|---|---|---|---|---|---|---|"]
    streamed = {n: r for n, r in results["cases"].items() if "largest_block_bytes" in r}
    whole = {n: r for n, r in results["cases"].items() if "largest_block_bytes" not in r}
    for name, r in streamed.items():
        s = r["seconds"]
        lines.append(f"| {r['label']} | {r['wall_s']:.0f} | {r['maxrss_bytes'] / GiB:.2f} | "
                     f"{r['largest_block_bytes'] / GiB:.2f} | {r['maxrss_bytes'] / r['largest_block_bytes']:.1f} | "
                     f"{r['budget_bytes'] / GiB:.2f} | {s['torch']:.0f} | {s['mindspore_fed']:.0f} | "
                     f"{s['mindspore_fed'] / s['torch']:.2f} |")
    lines += ["", "MindSpore fwd: every block fed the torch block's input, no taps; compiled (ms.jit, one compile per "
              "block structure included) where one block's activations fit 1 GiB (T5-XXL), PYNATIVE otherwise (XL/2 "
              "at 1024x1024: a compiled 4096-token block holds every query slice's scores at once); torch fwd: its forward without the hooks' loading and comparing. The tapped "
              "MindSpore pass (chained hidden state, every tap) is reported separately in each parity.json.", "",
              "| model | taps | block outputs rel L2 (accumulated) | blocks fed torch's input rel L2 | worst tap | "
              "verdict |", "|---|---|---|---|---|---|"]
    for name, r in streamed.items():
        lines.append(f"| {r['label'].split(',')[0]} | {r['taps']} | {r['block_rel_l2'][0]:.2e} .. "
                     f"{r['block_rel_l2'][1]:.2e} | {r['local_rel_l2'][0]:.2e} .. {r['local_rel_l2'][1]:.2e} | "
                     f"`{r['worst_tap']}` {r['worst_rel_l2']:.2e} | {'ok' if r['ok'] else 'FAIL at ' + str(r['first_failure'])} |")
    if whole:
        lines += ["", "The VAE has no blocks and is compared whole: torch's forward first, its taps written to a "
                  "temporary folder, then ours (fast CPU kernels, their large outputs in host buffers) with one tap "
                  "read back at a time. MindSpore fwd includes measuring its taps against torch's.", "",
                  "| model | wall s | peak RSS GiB | estimate GiB | rule GiB | torch fwd s | MindSpore fwd s | "
                  "MS / torch | output rel L2 | worst tap | verdict |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, r in whole.items():
            s = r["seconds"]
            lines.append(f"| {r['label']} | {r['wall_s']:.0f} | {r['maxrss_bytes'] / GiB:.2f} | "
                         f"{r['estimate_bytes'] / GiB:.2f} | {r['rule_bytes'] / GiB:.0f} | {s['torch']:.0f} | "
                         f"{s['mindspore']:.0f} | {s['mindspore'] / s['torch']:.2f} | {r['output_rel_l2']:.2e} | "
                         f"`{r['worst_tap']}` {r['worst_rel_l2']:.2e} | "
                         f"{'ok' if r['ok'] else 'FAIL at ' + str(r['first_failure'])} |")
    lines += ["", NOTES.strip(), "", "The `## Parity` section above was measured in whole-network mode with this script's earlier "
              "version (git history); `--whole` still runs that mode.", "",
              "Reproduce: `python benchmarks/bench_parity.py` (writes this section).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=BENCH / "parity")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--no-wait-quiet", action="store_true", help="Do not wait for a quiet machine first.")
    args = parser.parse_args()
    if args.no_wait_quiet:
        import bench_convert

        bench_convert.WAIT_QUIET = False
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results = {"date": time.strftime("%Y-%m-%d"), "machine": machine(work, False),
               "cases": results.get("cases", {}) if "cases" in results else {}}
    for name in args.cases.split(","):
        results["cases"][name] = run_case(name, work)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=1, default=float) + "\n")
    write_section(render(results), SECTION)
    print(render(results))
    if not args.keep:
        remove(work)


if __name__ == "__main__":
    main()
