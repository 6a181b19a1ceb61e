#!/usr/bin/env python
"""Conversion benchmark: ``pixart-ms convert`` (and ``verify``) on full-size synthetic checkpoints against, in the
same invocation, the naive approach (``torch.load`` everything + ``mindspore.save_checkpoint``), ``cp`` of the
same source to the same disk, and the bare import floor (``python -c "import mindspore, torch, safetensors"``).

    python benchmarks/bench_convert.py [--only pixart|t5] [--runs 3] [--workdir DIR] [--no-trace] [--wait-quiet]
    python benchmarks/bench_convert.py --report-only    # re-render BENCHMARKS.md from the stored results

Sources (``bench_sources.py``): the PixArt-Sigma XL/2 original ``.pth`` (2.3 GiB fp32) and a T5-v1.1-XXL encoder
in sharded bf16 safetensors (9.1 GiB), built once under the work dir and reused while complete. Every command runs
in a fresh process under ``/usr/bin/time -v`` (wall, user, sys, peak RSS) inside ``/work/tools/memwatch.py``; the
naive run (5.3 GiB for XL/2) holds the machine-wide ``/tmp/bigmem.lock`` for that run only. Rounds alternate the
order of the commands (forward, then backward); the report gives medians and the pair-by-pair ratios of each round
(wall and CPU), the load average around every command (other work shares this machine: when it is busy, CPU-time
ratios are the ones to trust), and a phase trace of one more conversion (``trace_convert_memory.py``). The naive
run is measured for XL/2 only: on T5-XXL it would hold ~10 GiB (``--naive-t5`` runs it anyway). Results go to
``benchmarks/results/conversion.json`` and the ``## Conversion`` section of ``BENCHMARKS.md``.

This process imports neither torch nor MindSpore.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_sources import ensure_source, source_path  # noqa: E402
from support import (_gib, _mib, machine, machine_lines, measure, median, remove, settle,  # noqa: E402,F401
                     tree_bytes, write_section)
import support  # noqa: E402

REPO = HERE.parent
RESULTS = HERE / "results" / "conversion.json"
SECTION = "## Conversion"
FLOOR = "import mindspore, torch, safetensors"
TITLES = {"pixart": "PixArt-Sigma XL/2 original .pth (fp32, 2.3 GiB)",
          "t5": "T5-v1.1-XXL encoder, sharded safetensors (bf16, 9.1 GiB)"}
GOALS = {"pixart": [("convert / naive", "naive", 0.5), ("convert / (cp + import)", "cp+floor", 2.0)],
         "t5": [("convert / cp", "cp", 1.3), ("convert / (cp + import)", "cp+floor", 2.0)]}
RSS_GOAL = 2**30


def commands(name: str, src: Path, work: Path, naive: bool) -> dict[str, dict]:
    cli = shutil.which("pixart-ms") or "pixart-ms"
    out, copy = work / "out" / f"{name}-ms", work / "copy" / src.name
    cmds = {"floor": {"cmd": [sys.executable, "-c", FLOOR]},
            "cp": {"cmd": ["cp", "-r", str(src), str(copy)], "output": copy},
            "convert": {"cmd": [cli, "convert", str(src), "-o", str(out), "--json"], "output": out,
                        "then": {"verify": [cli, "verify", str(out), "--json"]}}}
    if naive:
        naive_out = work / "out" / f"{name}-naive.safetensors"
        cmds["naive"] = {"cmd": [sys.executable, str(HERE / "naive_convert.py"), str(src), str(naive_out)],
                         "output": naive_out, "limit": 12, "lock": True}
    return cmds


def run_benchmark(name: str, work: Path, runs: int, naive: bool, trace: bool) -> dict:
    info = ensure_source(work, name)
    src = source_path(work, name)
    logs = work / "logs" / name
    shutil.rmtree(logs, ignore_errors=True)
    for sub in ("out", "copy"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    cmds = commands(name, src, work, naive and (name == "pixart" or NAIVE_T5))
    rounds = []
    for r in range(1, runs + 1):
        order = list(cmds) if r % 2 else list(reversed(cmds))
        print(f"[{name}] round {r}: {', '.join(order)}", flush=True)
        rows = {}
        for key in order:
            spec = cmds[key]
            settle()
            row = rows[key] = measure(spec["cmd"], logs, f"r{r}-{key}", limit_gib=spec.get("limit", 4),
                                      lock=spec.get("lock", False))
            if row["exit"] == 0 and spec.get("output") is not None:
                row["output_bytes"] = tree_bytes(spec["output"])
            for then, cmd in spec.get("then", {}).items():
                if row["exit"] == 0:
                    settle()
                    rows[then] = measure(cmd, logs, f"r{r}-{then}", limit_gib=4)
                    if rows[then]["exit"] == 0:
                        rows[then]["ok"] = json.loads((logs / f"r{r}-{then}.out").read_text())["ok"]
            if spec.get("output") is not None:
                remove(spec["output"])
            print(f"  {key:8s} wall {row.get('wall_s', float('nan')):7.2f} s  CPU {row.get('cpu_s', 0):6.2f} s  "
                  f"peak RSS {row.get('maxrss_bytes', 0) / 2**20:7.0f} MiB  load {row['loadavg_before'][0]:.1f}  "
                  f"exit {row['exit']}", flush=True)
        rounds.append(rows)
    traced = None
    if trace:
        out, traced_json = work / "out" / f"{name}-trace", logs / "trace.json"
        remove(out)
        settle()
        done = subprocess.run([sys.executable, str(HERE / "trace_convert_memory.py"), str(src), str(out),
                               "--json", str(traced_json)], capture_output=True, text=True)
        (logs / "trace.out").write_text(done.stdout + done.stderr)
        remove(out)
        traced = json.loads(traced_json.read_text()) if done.returncode == 0 else {"error": done.stderr[-500:]}
    return {"name": name, "title": TITLES[name], "source": str(src), "source_info": info, "code": code_version(),
            "rounds": rounds, "trace": traced}


def code_version() -> str:
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    commit = git("log", "-1", "--format=%h", "--", "converters", "pixart_core", "pixart_ms.py") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--", "converters", "pixart_core") else "")


# ----------------------------------------------------------------------------------------------------------------
# the report

def _value(rows: dict, base: str, field: str):
    if base == "cp+floor":
        a, b = rows.get("cp", {}).get(field), rows.get("floor", {}).get(field)
        return a + b if a is not None and b is not None else None
    return rows.get(base, {}).get(field)


def ratios(bench: dict, base: str, of: str = "convert") -> dict:
    """Pair-by-pair ratios (each round's ``of`` over that round's ``base``), wall and CPU, with their median."""
    out = {}
    for field in ("wall_s", "cpu_s"):
        pairs = [rows[of][field] / _value(rows, base, field) for rows in bench["rounds"]
                 if rows.get(of, {}).get("exit") == 0 and _value(rows, base, field)]
        out[field] = {"pairs": [round(p, 3) for p in pairs], "median": median(pairs)}
    return out


LABELS = {"floor": f'`python -c "{FLOOR}"` (floor)', "cp": "`cp` of the source (baseline)",
          "naive": "naive: `torch.load` all + `mindspore.save_checkpoint`", "convert": "`pixart-ms convert`",
          "verify": "`pixart-ms verify` (the converted folder)"}


def render_bench(bench: dict) -> list[str]:
    s, big = bench["source_info"], bench["source_info"]["largest"]
    lines = [f"### {bench['title']}", "",
             f"Source `{bench['source']}`: {s['tensors']} tensors, {s['values']:,} values, {', '.join(s['dtypes'])}, "
             f"{_gib(s['disk_bytes'])} in {len(s['files'])} file(s); largest `{big['name']}` "
             f"{tuple(big['shape'])} ({big['bytes'] / 2**20:.1f} MiB). Converter code at {bench['code']}.", "",
             *([f"Note: {bench['note']}.", ""] if bench.get("note") else []),
             "| command | wall s | user s | sys s | CPU s | peak RSS MiB | walls per round | 1-min load before |",
             "|---|---:|---:|---:|---:|---:|---|---|"]
    keys = [k for k in LABELS if any(k in rows for rows in bench["rounds"])]
    for key in keys:
        rows = [r[key] for r in bench["rounds"] if key in r and r[key]["exit"] == 0]
        failed = [r[key] for r in bench["rounds"] if key in r and r[key]["exit"] != 0]
        if not rows:
            lines.append(f"| {LABELS[key]} | failed: {failed[0].get('error', '') if failed else ''} | | | | | | |")
            continue
        med = {f: median([r.get(f) for r in rows]) for f in ("wall_s", "user_s", "sys_s", "cpu_s", "maxrss_bytes")}
        walls = " / ".join(f"{r['wall_s']:.1f}" for r in rows)
        loads = " / ".join(f"{r['loadavg_before'][0]:.1f}" for r in rows)
        lines.append(f"| {LABELS[key]} | {med['wall_s']:.2f} | {med['user_s']:.2f} | {med['sys_s']:.2f} | "
                     f"{med['cpu_s']:.2f} | {_mib(med['maxrss_bytes'])} | {walls} | {loads} |")
    lines += ["", "Medians of the rounds; peak RSS is `ru_maxrss` of the largest process.", "",
              "| ratio (pair by pair, median) | wall | CPU | goal | wall pairs | CPU pairs |", "|---|---:|---:|---|---|---|"]
    name = bench["name"]
    wanted = GOALS[name] + [("verify / cp", "cp", None)]
    if any("naive" in r for r in bench["rounds"]) and name != "pixart":
        wanted.insert(0, ("convert / naive", "naive", 0.5))
    for label, base, goal in wanted:
        of = "verify" if label.startswith("verify") else "convert"
        r = ratios(bench, base, of)
        if r["wall_s"]["median"] is None:
            continue
        mark = "" if goal is None else (f"<= {goal}: " + ("met" if r["wall_s"]["median"] <= goal else
                                                           "met in CPU time" if r["cpu_s"]["median"] <= goal
                                                           else "not met"))
        pairs = {f: " / ".join(f"{p:.2f}" for p in r[f]["pairs"]) for f in ("wall_s", "cpu_s")}
        lines.append(f"| {label} | {r['wall_s']['median']:.2f} | {r['cpu_s']['median']:.2f} | {mark} | "
                     f"{pairs['wall_s']} | {pairs['cpu_s']} |")
    peak = max((r["convert"].get("maxrss_bytes", 0) for r in bench["rounds"] if "convert" in r), default=0)
    lines += ["", f"Peak RSS of `convert`: {_mib(peak)} MiB (goal <= 1 GiB: {'met' if peak <= RSS_GOAL else 'not met'})."]
    lines += render_trace(bench.get("trace"))
    return lines


def render_trace(trace: dict | None) -> list[str]:
    if not trace or "phases" not in trace:
        return ["", f"(no phase trace: {trace.get('error', '') if trace else 'not run'})"] if trace else []
    lines = ["", f"Phase trace of one more conversion (`benchmarks/trace_convert_memory.py`, in-process: "
                 f"{trace['seconds']:.1f} s wall, {trace['cpu_s']:.1f} s CPU, VmHWM {_mib(trace['vmhwm_bytes'])} "
                 "MiB). Main-thread wall time by phase (exclusive of nested phases), then CPU time by thread:", "",
             "| main thread: phase | wall s | calls | max RSS MiB |", "|---|---:|---:|---:|"]
    for p in trace["phases"]:
        if p["seconds"] >= 0.005:
            lines.append(f"| {p['phase']} | {p['seconds']:.2f} | {p['calls']} | {_mib(p['max_rss_bytes'])} |")
    lines += ["", "| thread | CPU s |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in trace["thread_cpu_s"].items()]
    return lines


def render(results: dict) -> str:
    m = results["machine"]
    loads = [r[k]["loadavg_before"][0] for b in results["benchmarks"].values() for r in b["rounds"] for k in r]
    others = [r[k].get("other_cpu_s", 0) / max(r[k].get("wall_s", 1), 1e-3)
              for b in results["benchmarks"].values() for r in b["rounds"] for k in r]
    busy = median(loads) is not None and median(loads) > 1.0
    lines = [SECTION, "",
             "`pixart-ms convert` and `verify` on full-size synthetic checkpoints (random values, real names and shapes), "
             "each command a fresh process, against baselines measured in the same invocation: the naive conversion "
             "(`benchmarks/naive_convert.py`: `torch.load` of everything, `mindspore.save_checkpoint`; no checks, no "
             "manifest), `cp` of the same source to the same disk, and the bare import of MindSpore, torch and "
             "safetensors. Written by `python benchmarks/bench_convert.py`; raw numbers in "
             "`benchmarks/results/conversion.json`.", "", "### Machine", "", *machine_lines(m),
             f"- Load during the run: 1-minute load average before each command {min(loads):.1f}–{max(loads):.1f} "
             f"(median {median(loads):.1f}) on {m['cores']} cores; other processes used {median(others):.2f} "
             "cores (median over commands, from /proc/stat)." if loads else "", "", "### Method", "",
             "- Every command runs under `/usr/bin/time -v` (inside `/work/tools/memwatch.py`, outside the timing); "
             "the naive run holds `/tmp/bigmem.lock` for that run only. `sync` (untimed) before each command. Warm "
             "cache as far as RAM allows (T5-XXL's 9.1 GiB do not all stay cached beside the other work here).",
             "- Rounds alternate the order of the commands; ratios are taken pair by pair within a round, then the "
             "median. CPU = user + sys of the whole process.",
             "- `convert` writes with `O_DIRECT` and fsyncs every file and folder before its rename (the data are "
             "on disk when it returns); `cp` and the naive run leave dirty pages in the cache.",
             ("- **The machine was busy** (other sessions run here): wall times swing with their load, so judge by "
              "the CPU-time ratios, which are the work each command did." if busy else
              "- The machine was quiet: wall-time ratios are meaningful."), ""]
    for name in ("pixart", "t5"):
        if name in results["benchmarks"]:
            lines += render_bench(results["benchmarks"][name]) + [""]
    lines += ["Reproduce: `python benchmarks/bench_convert.py` (`--only pixart|t5`, `--runs N`); the commands run "
              "are in the results file.", ""]
    return "\n".join(line for line in lines if line is not None).rstrip() + "\n"


NAIVE_T5 = False


def main() -> None:
    global NAIVE_T5
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/pixart-ms-bench"))
    parser.add_argument("--only", choices=sorted(TITLES))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-naive", action="store_true", help="Skip the naive baseline.")
    parser.add_argument("--naive-t5", action="store_true", help="Run the naive baseline on T5-XXL too (~10 GiB).")
    parser.add_argument("--no-trace", action="store_true", help="Skip the traced conversion.")
    parser.add_argument("--wait-quiet", action="store_true",
                        help="Before each command wait (up to 120 s) for the rest of the machine to go quiet.")
    parser.add_argument("--report-only", action="store_true", help="Re-write the BENCHMARKS.md section; run nothing.")
    args = parser.parse_args()
    if args.report_only:
        write_section(render(json.loads(RESULTS.read_text())), SECTION)
        return
    if not Path(support.TIME).is_file():
        sys.exit(f"{support.TIME} not found (GNU time); install it (apt-get install time)")
    support.WAIT_QUIET, NAIVE_T5 = args.wait_quiet, args.naive_t5
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    for name in [args.only] if args.only else list(TITLES):
        bench = run_benchmark(name, work, args.runs, not args.no_naive, not args.no_trace)
        # read again just before writing: another invocation (``--only`` the other source) may have written
        results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
        results["benchmarks"] = {k: b for k, b in results.get("benchmarks", {}).items()  # this script's format only
                                 if b.get("rounds") and "convert" in b["rounds"][0]}
        results["benchmarks"][name] = bench
        results["machine"] = machine(work)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
        write_section(render(results), SECTION)
    print(f"wrote {support.REPORT} and {RESULTS}")


if __name__ == "__main__":
    main()
