#!/usr/bin/env python
"""ONNX route benchmark: ``pixart-ms export --format onnx`` of the full-size PixArt-Sigma XL/2 transformer at the
1024x1024 bucket (fp32) and of the full-size synthetic T5-v1.1-XXL encoder (fp16), each one fresh process with
validation in onnxruntime included.

    python benchmarks/bench_onnx.py [--workdir DIR] [--only xl2|t5] [--t5-converted DIR] [--keep]
    python benchmarks/bench_onnx.py --report-only

Sources (``benchmarks/bench_convert.py`` builds them under /tmp/pixart-ms-bench/src): the XL/2 original ``.pth``
is converted once (fp32, reused); T5-XXL (bf16 shards) is converted with ``--dtype fp16`` unless
``--t5-converted`` names a converted T5 folder already on disk (its export alone writes 11.5 GB). Every measured
command holds the machine-wide lock ``/tmp/bigmem.lock`` and runs under ``/work/tools/memwatch.py`` when present.

The whole command is timed with ``bench_convert.measure`` (``/usr/bin/time -v`` plus sampling of the process
tree's RSS). The export records each phase's own peak RSS (VmHWM reset at the phase's start: trace/write, fp32
reference, onnxruntime) and, per validation case, onnxruntime's forward time beside the torch reference's on the
same inputs in the same process. Results: ``benchmarks/results/onnx.json`` and the ``## ONNX export`` section
of ``BENCHMARKS.md``.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_convert  # noqa: E402  (its measuring helpers; it imports neither torch nor MindSpore)
import bench_sources  # noqa: E402

# the machine is shared: waiting (up to 2 min, holding the memory lock) for a quiet machine only delays the others;
# each run records the load average it started at instead
bench_convert.WAIT_QUIET = False

REPO = HERE.parent
RESULTS = REPO / "benchmarks" / "results" / "onnx.json"
SECTION = "## ONNX export"
SRC = Path("/tmp/pixart-ms-bench/src")
MEMWATCH = Path("/work/tools/memwatch.py")
LOCK = Path("/tmp/bigmem.lock")
LIMIT_GIB = 20
GIB = 2**30


@contextlib.contextmanager
def bigmem_lock():
    """The machine-wide lock for one measured run (runs over ~3 GiB never overlap)."""
    with open(LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def watched(cmd: list[str]) -> list[str]:
    return [sys.executable, str(MEMWATCH), "--limit-gib", str(LIMIT_GIB), "--", *cmd] if MEMWATCH.is_file() else cmd


def pixart_ms() -> list[str]:
    return [sys.executable, "-m", "pixart_ms"]


def run_measured(cmd: list[str], logs: Path, label: str) -> dict:
    bench_convert.settle(cold=False)
    print(f"{label}: {' '.join(cmd)}", flush=True)
    with bigmem_lock():
        result = bench_convert.measure(watched(cmd), logs, label)
    print(json.dumps({k: result.get(k) for k in ("wall_s", "maxrss_bytes", "exit", "error")}), flush=True)
    return result


def converted(workdir: Path, name: str, source: Path, dtype: str, logs: Path) -> tuple[Path, dict | None]:
    folder = workdir / "ms" / name
    if (folder / "manifest.json").is_file():
        return folder, None
    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    result = run_measured([*pixart_ms(), "convert", str(source), "-o", str(folder), "--dtype", dtype],
                          logs, f"convert-{name}")
    if result["exit"] != 0:
        raise SystemExit(f"conversion of {source} failed; see {logs}")
    return folder, result


def export_run(folder: Path, out: Path, logs: Path, label: str, args: list[str], from_logs: bool = False) -> dict:
    if from_logs:  # a run that finished in an interrupted invocation: /usr/bin/time's record and the manifest
        result = {"label": label, "rebuilt_from_logs": True, **bench_convert._parse_time(logs / f"{label}.time")}
    else:
        shutil.rmtree(out, ignore_errors=True)
        result = run_measured([*pixart_ms(), "export", str(folder), "-o", str(out), "--format", "onnx", *args,
                               "--json"], logs, label)
    if result["exit"] == 0:
        manifest = json.loads((logs / f"{label}.out").read_text())
        (name, entry), = manifest["components"].items()
        (graph,) = entry["graphs"]
        onnx = graph["onnx"]
        result["component"] = name
        result["dtype"] = entry["dtype"]
        result["phases"] = entry["onnx"]["phases"]
        result["graph"] = {k: onnx[k] for k in ("file", "files", "external_data", "weights_bytes", "opset",
                                                  "export_seconds", "validate_seconds")}
        result["graph"]["bytes"] = sum(manifest["files"][f]["size"] for f in onnx["files"])
        result["graph"]["inputs"] = graph["inputs"]
        check = onnx["validation"][0]
        result["validation"] = {k: check[k] for k in ("case", "ran", "shape", "dtype", "forward_seconds")}
        result["validation"]["vs_torch"] = {k: check["vs_torch"][k] for k in ("rel_l2", "max_abs", "tolerance",
                                                                             "ok", "reference")}
        result["seconds_in_export"] = manifest["seconds"]
    return result


def run(workdir: Path, only: list[str], t5_converted: Path | None, keep: bool, save, from_logs: bool) -> dict:
    logs = workdir / "logs"
    runs = {}
    baseline = bench_convert.measure([sys.executable, "-c", "import mindspore, torch, onnxruntime"], logs, "import")
    if "xl2" in only:
        folder, conversion = (None, None) if from_logs else converted(
            workdir, "transformer", SRC / "pixart" / bench_sources.PIXART_FILE, "keep", logs)
        out = workdir / "export-xl2"
        runs["xl2"] = export_run(folder, out, logs, "export-xl2-fp32",
                                 ["--component", "transformer", "--buckets", "1.0", "--dtype", "fp32"], from_logs)
        runs["xl2"]["conversion"] = conversion
        if not keep:
            shutil.rmtree(out, ignore_errors=True)
        save(baseline, runs)  # each finished row is kept even if a later one is interrupted
    if "t5" in only:
        if t5_converted is not None:
            folder, conversion = t5_converted, None
        else:
            folder, conversion = converted(workdir, "text_encoder", SRC / "t5" / "text_encoder", "fp16", logs)
        out = workdir / "export-t5"
        runs["t5"] = export_run(folder, out, logs, "export-t5-fp16",
                                ["--component", "text_encoder", "--text-encoder-dtype", "fp16"])
        runs["t5"]["converted_folder"] = str(folder)
        runs["t5"]["conversion"] = conversion
        if not keep:
            shutil.rmtree(out, ignore_errors=True)
    return {"import_baseline": baseline, "runs": runs}


def _gib(n) -> str:
    return "" if n is None else f"{n / GIB:.2f}"


def render(results: dict) -> str:
    m, bench = results["machine"], results["onnx"]
    v = m["versions"]
    lines = [SECTION, "",
             "`pixart-ms export --format onnx` (torch.onnx dynamo exporter over the torch class holding the converted "
             "weights, `onnx.checker` full, onnxruntime CPU validation at the real shapes) of full-size synthetic "
             "models, one fresh process each, under the machine-wide memory lock. Written by "
             "`benchmarks/bench_onnx.py`; raw numbers in `benchmarks/results/onnx.json`.", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {bench_convert._gib(m['ram_bytes'])} RAM, no swap; Python "
             f"{m['python']}, torch {v.get('torch')}, onnxruntime {v.get('onnxruntime')}, onnxscript "
             f"{v.get('onnxscript')}, onnx {v.get('onnx')}, numpy {v.get('numpy')}; {m['date']}.", "",
             "| graph | dtype | wall s | whole-command peak RSS GiB | graph on disk GiB | trace+write s / peak GiB "
             "| torch reference s / peak GiB | onnxruntime s / peak GiB | forward s: onnxruntime / torch | "
             "vs torch fp32 rel L2 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    notes = []
    for key, r in bench["runs"].items():
        if r.get("exit") != 0:
            lines.append(f"| {key} | | {r.get('wall_s', 0):.0f} | {_gib(r.get('maxrss_bytes'))} | failed: "
                         f"{r.get('error', '')} | | | | | |")
            continue
        g, p, val = r["graph"], r["phases"], r["validation"]
        ref = p["torch_reference"]
        fwd = val["forward_seconds"]
        shapes = ", ".join(f"{t['name']} {t['shape']}" for t in g["inputs"])
        torch_s = "n/a" if fwd["torch_reference"] is None else f"{fwd['torch_reference']:.0f}"
        lines.append(
            f"| {key}: {shapes} | {r['dtype']} | "
            f"{r['wall_s']:.0f} | {_gib(r['maxrss_bytes'])} | {g['bytes'] / GIB:.2f}"
            f"{' (external data)' if g['external_data'] else ''} | "
            f"{p['trace_write']['seconds']:.0f} / {_gib(p['trace_write']['peak_rss_bytes'])} | "
            + f"{ref['seconds']:.0f} / {_gib(ref['peak_rss_bytes'])}"
            + f" | {p['onnxruntime']['seconds']:.0f} / {_gib(p['onnxruntime']['peak_rss_bytes'])} | "
            f"{fwd['onnxruntime']:.0f} / {torch_s}"
            f" | {val['vs_torch']['rel_l2']:.2e} (tol {val['vs_torch']['tolerance']:g}) |")
        weights = g["weights_bytes"]
        budget = 1.5 * weights + GIB
        notes.append(f"- {key}: weights {weights / GIB:.2f} GiB; trace+write peak "
                     f"{_gib(p['trace_write']['peak_rss_bytes'])} GiB against the 1.5 x weights + 1 GiB budget of "
                     f"{budget / GIB:.2f} GiB ({'within' if p['trace_write']['peak_rss_bytes'] <= budget else 'OVER'})"
                     f"; validated in {val['ran']}, reference: {val['vs_torch']['reference']}.")
        if r.get("note"):
            notes.append(f"- {key}: {r['note']}")
    base = bench["import_baseline"]
    lines += ["", *notes, "",
              f"Import baseline (`python -c \"import mindspore, torch, onnxruntime\"`): {base['wall_s']:.1f} s, "
              f"{_gib(base['maxrss_bytes'])} GiB. Whole-command peak RSS is `ru_maxrss` of the largest process; the "
              "phase peaks are the export's own VmHWM readings, reset at each phase's start. The forward times are "
              "onnxruntime's and torch's on the same inputs in the same process (torch: the fp32 reference's forward, "
              "2 threads as onnxruntime)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/pixart-ms-bench-onnx"))
    parser.add_argument("--only", default="xl2,t5")
    parser.add_argument("--t5-converted", type=Path, help="A converted T5 folder to export (saves a conversion).")
    parser.add_argument("--keep", action="store_true", help="Keep the export folders.")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--from-logs", action="store_true",
                        help="Rebuild the rows from the logs of an interrupted invocation instead of running them.")
    args = parser.parse_args()
    if args.report_only:
        bench_convert.write_section(render(json.loads(RESULTS.read_text())), SECTION)
        return
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    machine = bench_convert.machine(workdir, False)
    from importlib.metadata import version

    machine["versions"].update({p: version(p) for p in ("onnxruntime", "onnxscript", "onnx")})
    previous = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}

    def save(baseline: dict, runs: dict) -> dict:
        results = {"machine": machine, "onnx": {"import_baseline": baseline, "runs": dict(runs)}}
        for key, value in previous.get("onnx", {}).get("runs", {}).items():  # a partial run keeps the other rows
            results["onnx"]["runs"].setdefault(key, value)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
        bench_convert.write_section(render(results), SECTION)
        return results

    found = run(workdir, args.only.split(","), args.t5_converted, args.keep, save, args.from_logs)
    save(found["import_baseline"], found["runs"])
    print(f"wrote {RESULTS} and the {SECTION} section of BENCHMARKS.md")


if __name__ == "__main__":
    main()
