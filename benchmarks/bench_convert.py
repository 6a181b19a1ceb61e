#!/usr/bin/env python
"""Conversion benchmark: whole-process wall time and peak RSS of ``pixart-ms convert`` / ``pixart-ms verify`` on
full-size synthetic checkpoints, each against a baseline run in the same invocation (``cp -r`` of the same
source to the same disk, and a bare ``python -c "import mindspore, torch"`` for memory).

    python benchmarks/bench_convert.py [--workdir DIR] [--only pixart|t5] [--keep] [--runs N] [--no-drop-caches]
                                       [--no-wait-quiet] [--no-trace]
    python benchmarks/bench_convert.py --report-only    # re-render BENCHMARKS.md from the stored results

Sources are built once into the work dir (default /tmp/pixart-ms-bench) and reused when complete:

- pixart: ``PixArt-Sigma-XL-2-1024-MS.pth``, ``{"state_dict": sd}`` with the 435 parameter tensors of
  PixArtMS_XL_2 plus the ``pos_embed`` and ``y_embedder.y_embedding`` buffers, random fp32 (std 0.02), ~2.5 GB.
- t5: ``text_encoder/``, a T5-v1.1-XXL encoder in the public sharded layout (``model-0000k-of-0000n.safetensors``
  of ~2 GB, ``model.safetensors.index.json``, ``config.json``), random bf16 (std 0.02), with both
  ``shared.weight`` and its tied copy ``encoder.embed_tokens.weight``, ~9.8 GB.

Every measured command runs in a fresh process under ``/usr/bin/time -v`` (wall time, CPU time, peak RSS =
``ru_maxrss``, the largest single process of the tree) while this script samples the RSS of the whole process tree
from ``/proc/PID/status`` every 50 ms (RssAnon / RssFile at the sampled peak show where the memory is). The first
round runs with cold caches when ``/proc/sys/vm/drop_caches`` is writable, the next rounds warm. Before each command
the script waits (up to 120 s) for the rest of the machine to go quiet, and records the CPU time other processes used
during it (from /proc/stat: other sessions may be invisible to ps). One more conversion per benchmark runs under
``benchmarks/trace_convert_memory.py`` for time and memory by phase. Results go to
``benchmarks/results/conversion.json`` (with a history of invocations, each tagged with the converter's commit) and
the ``## Conversion`` section of ``BENCHMARKS.md`` (other sections are kept).

This parent process imports neither torch nor MindSpore: generators and inspectors run as subprocesses of this
same file (``--generate``, ``--inspect``).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "conversion.json"
REPORT = REPO / "BENCHMARKS.md"
SECTION = "## Conversion"
TIME = "/usr/bin/time"
MiB = 2**20
SEED = 0
STD = 0.02
SHARD_BYTES = 2 * 10**9  # "about 2 GB" per T5 shard, as transformers' max_shard_size="2GB"
SAMPLE_SECONDS = 0.05
WAIT_QUIET = True  # --no-wait-quiet turns it off

PIXART_FILE = "PixArt-Sigma-XL-2-1024-MS.pth"
T5_FOLDER = "text_encoder"
MARKER = "complete.json"

T5_CONFIG = dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, vocab_size=32128,
                 relative_attention_num_buckets=32, relative_attention_max_distance=128,
                 feed_forward_proj="gated-gelu")
T5_FORCED = {"is_gated_act": True, "dense_act_fn": "gelu_new", "model_type": "t5",
             "architectures": ["T5EncoderModel"], "tie_word_embeddings": False}

BENCHMARKS = {
    "pixart": {"title": "PixArt-Sigma XL/2 original .pth (fp32)", "source": PIXART_FILE},
    "t5": {"title": "T5-v1.1-XXL encoder, sharded safetensors (bf16)", "source": T5_FOLDER},
}


# ----------------------------------------------------------------------------------------------------------------
# source generators (subprocesses: they hold up to ~2.5 GB; the measured conversions run in their own processes)

def generate_pixart(folder: Path) -> None:
    import torch

    sys.path.insert(0, str(REPO / "tests"))
    from original_pixart import OriginalPixArtMS

    with torch.device("meta"):
        net = OriginalPixArtMS(depth=28, hidden=1152, heads=16, caption_channels=4096, sample_size=128,
                               pe_interpolation=2.0)
    params = dict(net.named_parameters())
    buffers = dict(net.named_buffers())
    n_values = sum(p.numel() for p in params.values())
    assert len(params) == 435 and n_values == 610_856_096, (len(params), n_values)
    assert set(buffers) == {"pos_embed", "y_embedder.y_embedding"}, sorted(buffers)
    assert tuple(buffers["pos_embed"].shape) == (1, 4096, 1152)
    assert tuple(buffers["y_embedder.y_embedding"].shape) == (300, 4096)
    gen = torch.Generator().manual_seed(SEED)
    sd = {}
    for name, meta in net.state_dict().items():
        sd[name] = torch.randn(tuple(meta.shape), generator=gen, dtype=torch.float32).mul_(STD)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (PIXART_FILE + ".partial")
    torch.save({"state_dict": sd}, tmp)
    os.replace(tmp, folder / PIXART_FILE)


def t5_meta_state():
    import torch
    from transformers import T5Config, T5EncoderModel

    config = T5Config(**T5_CONFIG, tie_word_embeddings=False, architectures=["T5EncoderModel"])
    with torch.device("meta"):
        net = T5EncoderModel(config)
    shapes = [(name, tuple(t.shape)) for name, t in net.state_dict().items()]
    data = config.to_dict()
    data.update(T5_FORCED)
    data["dtype"] = "bfloat16"
    return shapes, data


def generate_t5(folder: Path) -> None:
    import torch
    from safetensors.torch import save_file

    shapes, config = t5_meta_state()
    names = [n for n, _ in shapes]
    assert names[:2] == ["shared.weight", "encoder.embed_tokens.weight"], names[:2]
    numel = {n: _prod(s) for n, s in shapes}
    shards, current, size = [], [], 0
    for name, _ in shapes:
        nbytes = numel[name] * 2
        if current and size + nbytes > SHARD_BYTES:
            shards.append(current)
            current, size = [], 0
        current.append(name)
        size += nbytes
    shards.append(current)
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(SEED)
    shape_of = dict(shapes)
    shared = None  # kept until its tied copy is written (they may fall in different shards)
    weight_map, total = {}, 0
    for k, members in enumerate(shards, 1):
        file = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for name in members:
            if name == "encoder.embed_tokens.weight":
                tensors[name] = shared.clone()  # the same values; a separate storage (safetensors refuses aliases)
                shared = None
            else:
                tensors[name] = torch.randn(shape_of[name], generator=gen, dtype=torch.bfloat16).mul_(STD)
                if name == "shared.weight":
                    shared = tensors[name]
            weight_map[name] = file
            total += numel[name] * 2
        tmp = folder / (file + ".partial")
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, folder / file)
        del tensors
        print(f"wrote {file} ({len(members)} tensors)", file=sys.stderr, flush=True)
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# ----------------------------------------------------------------------------------------------------------------
# what the sources hold, read from the files themselves

def inspect_source(path: Path) -> dict:
    """Tensor count, values, bytes, dtypes and the largest tensor of a .pth or a sharded safetensors folder."""
    rows = []  # (name, shape, dtype, nbytes)
    files = []
    if path.is_dir():
        index = json.loads((path / "model.safetensors.index.json").read_text())
        for file in sorted(set(index["weight_map"].values())):
            files.append(path / file)
            with open(path / file, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
            for name, entry in header.items():
                if name == "__metadata__":
                    continue
                begin, end = entry["data_offsets"]
                dtype = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}.get(entry["dtype"], entry["dtype"])
                rows.append((name, tuple(entry["shape"]), dtype, end - begin))
    else:
        import torch

        files.append(path)
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        for name, t in obj["state_dict"].items():
            rows.append((name, tuple(t.shape), str(t.dtype).replace("torch.", ""), t.numel() * t.element_size()))
    largest = max(rows, key=lambda r: r[3])
    return {
        "tensors": len(rows),
        "values": sum(_prod(r[1]) for r in rows),
        "tensor_bytes": sum(r[3] for r in rows),
        "dtypes": sorted({r[2] for r in rows}),
        "largest": {"name": largest[0], "shape": list(largest[1]), "dtype": largest[2], "bytes": largest[3],
                    "same_size": sorted(r[0] for r in rows if r[3] == largest[3] and r[0] != largest[0])},
        "files": [{"name": f.name, "bytes": f.stat().st_size} for f in files],
        "disk_bytes": sum(f.stat().st_size for f in files),
    }


def source_path(workdir: Path, name: str) -> Path:
    return workdir / "src" / name / BENCHMARKS[name]["source"]


def _inspect(path: Path) -> dict:
    """``inspect_source`` in a subprocess (a .pth needs torch, which this process does not import)."""
    done = subprocess.run([sys.executable, __file__, "--inspect", str(path)], check=True, capture_output=True,
                          text=True)
    return json.loads(done.stdout)


def ensure_source(workdir: Path, name: str) -> dict:
    """Build the source once; reuse it when its marker says it is complete and every file has its size."""
    folder = workdir / "src" / name
    marker = folder / MARKER
    if marker.is_file():
        info = json.loads(marker.read_text())
        base = source_path(workdir, name)
        base_dir = base if base.is_dir() else base.parent
        if all((base_dir / f["name"]).is_file() and (base_dir / f["name"]).stat().st_size == f["bytes"]
               for f in info["files"]):
            print(f"[{name}] reusing source {base}", flush=True)
            fresh = _inspect(source_path(workdir, name))
            fresh["generated_seconds"] = info.get("generated_seconds")
            return fresh
        print(f"[{name}] source incomplete, rebuilding", flush=True)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    print(f"[{name}] generating source in {folder} ...", flush=True)
    started = time.perf_counter()
    target = folder if name == "pixart" else folder / T5_FOLDER
    subprocess.run([sys.executable, __file__, "--generate", name, str(target)], check=True)
    seconds = time.perf_counter() - started
    info = _inspect(source_path(workdir, name))
    info["generated_seconds"] = round(seconds, 1)
    marker.write_text(json.dumps(info, indent=1) + "\n")
    print(f"[{name}] generated in {seconds:.0f} s: {info['tensors']} tensors, {info['disk_bytes'] / 2**30:.2f} GiB",
          flush=True)
    return info


# ----------------------------------------------------------------------------------------------------------------
# measuring

def can_drop_caches() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def _status(pid: int) -> dict | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def _parse_time(path: Path) -> dict:
    text = path.read_text()
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("Elapsed (wall clock) time"):
            clock = line.rsplit(": ", 1)[1]
            seconds = 0.0
            for part in clock.split(":"):
                seconds = seconds * 60 + float(part)
            out["wall_s"] = seconds
        elif line.startswith("User time (seconds)"):
            out["user_s"] = float(line.rsplit(": ", 1)[1])
        elif line.startswith("System time (seconds)"):
            out["sys_s"] = float(line.rsplit(": ", 1)[1])
        elif line.startswith("Maximum resident set size (kbytes)"):
            out["maxrss_bytes"] = int(line.rsplit(": ", 1)[1]) * 1024
        elif line.startswith("Major (requiring I/O) page faults"):
            out["major_faults"] = int(line.rsplit(": ", 1)[1])
        elif line.startswith("File system inputs"):
            out["fs_in_blocks"] = int(line.rsplit(": ", 1)[1])
        elif line.startswith("File system outputs"):
            out["fs_out_blocks"] = int(line.rsplit(": ", 1)[1])
        elif line.startswith("Exit status"):
            out["exit"] = int(line.rsplit(": ", 1)[1])
    return out


def _busy_seconds() -> float:
    """CPU seconds all processes of the machine have used since boot (not idle, not iowait), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


IDLE_CORES = 0.25  # "quiet": the rest of the machine uses less than a quarter of a core
IDLE_WAIT_MAX = 120.0


def wait_quiet(max_wait: float = IDLE_WAIT_MAX) -> float:
    """Wait (up to ``max_wait`` s) until the machine has been quiet for 2 s; returns the seconds waited. Processes
    of other sessions may be invisible to ps (another PID namespace) but show in /proc/stat."""
    started = time.perf_counter()
    while True:
        busy0 = _busy_seconds()
        time.sleep(2.0)
        if (_busy_seconds() - busy0) / 2.0 < IDLE_CORES or time.perf_counter() - started > max_wait:
            return round(time.perf_counter() - started - 2.0, 1)


def measure(cmd: list[str], logs: Path, label: str) -> dict:
    """Run ``cmd`` under /usr/bin/time -v, sampling the RSS of its process tree; stdout/stderr go to ``logs``."""
    import psutil

    logs.mkdir(parents=True, exist_ok=True)
    stem = logs / label
    waited = wait_quiet() if WAIT_QUIET else None
    time_file = stem.with_suffix(".time")
    load = os.getloadavg()[0]
    busy0, self0 = _busy_seconds(), sum(os.times()[:2])
    started = time.perf_counter()
    with open(stem.with_suffix(".out"), "w") as out, open(stem.with_suffix(".err"), "w") as err:
        proc = subprocess.Popen([TIME, "-v", "-o", str(time_file), *cmd], stdout=out, stderr=err)
        parent = psutil.Process(proc.pid)
        peak = {"total": 0}
        max_anon, max_procs, samples = 0, 0, 0
        while proc.poll() is None:
            try:
                pids = [c.pid for c in parent.children(recursive=True)]  # the command's tree, not time itself
            except psutil.Error:
                pids = []
            stats = [s for s in map(_status, pids) if s]
            if stats:
                total = sum(s.get("VmRSS", 0) for s in stats)
                anon = sum(s.get("RssAnon", 0) for s in stats)
                samples += 1
                max_anon = max(max_anon, anon)
                max_procs = max(max_procs, len(stats))
                if total > peak["total"]:
                    peak = {"total": total, "anon": anon, "file": sum(s.get("RssFile", 0) for s in stats),
                            "shmem": sum(s.get("RssShmem", 0) for s in stats), "at_s": time.perf_counter() - started}
            time.sleep(SAMPLE_SECONDS)
    outer = time.perf_counter() - started
    busy = _busy_seconds() - busy0
    ours = sum(os.times()[:2]) - self0  # this sampler's own CPU
    result = {"label": label, "cmd": cmd, **_parse_time(time_file), "outer_wall_s": round(outer, 3),
              "waited_for_quiet_s": waited,
              "loadavg_before": round(load, 2),
              "sampled": {"peak_tree_rss_bytes": peak["total"], "anon_at_peak_bytes": peak.get("anon", 0),
                          "file_at_peak_bytes": peak.get("file", 0), "shmem_at_peak_bytes": peak.get("shmem", 0),
                          "peak_at_s": round(peak.get("at_s", 0.0), 2), "max_anon_bytes": max_anon,
                          "max_processes": max_procs, "samples": samples}}
    result.setdefault("exit", proc.returncode)
    # CPU that neither the command nor this sampler used: other work on the machine that competed for the cores
    result["other_cpu_s"] = round(max(0.0, busy - ours - result.get("user_s", 0) - result.get("sys_s", 0)), 1)
    if result["exit"] != 0:
        lines = stem.with_suffix(".err").read_text().strip().splitlines()
        result["error"] = lines[-1] if lines else f"exit {result['exit']}"
    return result


def tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def settle(cold: bool) -> None:
    """Flush dirty pages (untimed) so one run's writeback does not land in the next; drop caches for cold runs."""
    if cold:
        drop_caches()
    else:
        subprocess.run(["sync"], check=True)


CODE_PATHS = ("converters", "mindspore_nets", "pixart_ms.py")


def code_version() -> str:
    """The commit of the converter code measured, with ``+dirty`` when it has uncommitted changes."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    commit = git("log", "-1", "--format=%h", "--", *CODE_PATHS) or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--", *CODE_PATHS) else "")


def run_benchmark(name: str, workdir: Path, runs: int, cold_first: bool, keep: bool, with_trace: bool) -> dict:
    info = ensure_source(workdir, name)
    src = source_path(workdir, name)
    version_at_start = code_version()
    cli = shutil.which("pixart-ms") or "pixart-ms"
    logs = workdir / "logs" / name
    shutil.rmtree(logs, ignore_errors=True)
    (workdir / "copy").mkdir(exist_ok=True)
    (workdir / "out").mkdir(exist_ok=True)
    copy_dst = workdir / "copy" / src.name
    out = workdir / "out" / f"{name}-ms"
    dry_out = workdir / "out" / f"{name}-dry"
    remove(copy_dst)
    remove(out)
    rounds = []
    for r in range(1, runs + 1):
        cold = cold_first and r == 1
        tag = f"r{r}"
        rows = {}
        print(f"[{name}] round {r} ({'cold' if cold else 'warm'} cache)", flush=True)

        settle(cold)
        rows["import"] = measure([sys.executable, "-c", "import mindspore, torch"], logs, f"{tag}-import")

        settle(cold)
        rows["cp"] = measure(["cp", "-r", str(src), str(copy_dst)], logs, f"{tag}-cp")
        rows["cp"]["output_bytes"] = tree_bytes(copy_dst) if copy_dst.exists() else 0
        remove(copy_dst)

        settle(cold)
        rows["dry_run"] = measure([cli, "convert", str(src), "-o", str(dry_out), "--dry-run", "--json"], logs,
                                  f"{tag}-dry-run")

        settle(cold)
        rows["convert"] = measure([cli, "convert", str(src), "-o", str(out), "--json"], logs, f"{tag}-convert")
        if rows["convert"]["exit"] == 0:
            summary = json.loads((logs / f"{tag}-convert.out").read_text())
            comp = summary["components"][0]
            rows["convert"]["summary"] = {"seconds": summary.get("seconds"), "tensors": comp["tensors"],
                                          "extras": comp["extras"], "values": comp["values"],
                                          "bytes": comp["bytes"], "dtypes": comp["dtypes"],
                                          "dropped": [d["key"] for d in comp["dropped"]]}
            rows["convert"]["output_bytes"] = tree_bytes(out)

            settle(cold)
            rows["verify"] = measure([cli, "verify", str(out), "--json"], logs, f"{tag}-verify")
            if rows["verify"]["exit"] == 0:
                rows["verify"]["ok"] = json.loads((logs / f"{tag}-verify.out").read_text())["ok"]
        else:
            print(f"[{name}] convert failed: {rows['convert'].get('error')}", flush=True)
        if not (keep and r == runs):
            remove(out)
        for key, row in rows.items():
            print(f"  {key:8s} wall {row.get('wall_s', float('nan')):8.2f} s  peak RSS "
                  f"{row.get('maxrss_bytes', 0) / MiB:8.1f} MiB  exit {row['exit']}", flush=True)
        rounds.append({"round": r, "cache": "cold" if cold else "warm", "rows": rows})
    trace = None
    if with_trace:
        print(f"[{name}] traced conversion (memory and time by phase)", flush=True)
        settle(cold_first)
        if WAIT_QUIET:
            wait_quiet()
        trace_out, trace_json = workdir / "out" / f"{name}-trace", logs / "trace.json"
        remove(trace_out)
        done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "trace_convert_memory.py"), str(src),
                               str(trace_out), "--json", str(trace_json)], capture_output=True, text=True)
        (logs / "trace.out").write_text(done.stdout + done.stderr)
        remove(trace_out)
        if done.returncode == 0:
            trace = json.loads(trace_json.read_text())
            trace["cache"] = "cold" if cold_first else "warm"
        else:
            print(f"[{name}] trace failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}", flush=True)
    version = code_version()
    if version != version_at_start:
        version = f"changed during the run: {version_at_start} -> {version}"
        print(f"[{name}] WARNING: converter code {version}", flush=True)
    return {"name": name, "title": BENCHMARKS[name]["title"], "code": version, "source": str(src), "source_info": info,
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "rounds": rounds, "trace": trace,
            "kept_output": str(out) if keep and out.exists() else None}


# ----------------------------------------------------------------------------------------------------------------
# machine and report

def machine(workdir: Path, drop_ok: bool) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("MemTotal", "SwapTotal"):
            mem[key] = int(value.split()[0]) * 1024
    df = subprocess.run(["df", "-PT", str(workdir)], capture_output=True, text=True).stdout.splitlines()[-1].split()
    device = df[0]
    rotational = None
    block = Path(f"/sys/block/{Path(device).name}/queue/rotational")
    if block.is_file():
        rotational = block.read_text().strip() == "1"
    versions = {}
    for pkg in ("mindspore", "torch", "safetensors", "numpy", "transformers", "pixart-mindspore"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_bytes": mem.get("MemTotal"), "swap_bytes": mem.get("SwapTotal"),
            "disk": {"device": device, "fs": df[1], "size_bytes": int(df[2]) * 1024,
                     "free_bytes_at_start": int(df[4]) * 1024, "mount": df[6], "rotational": rotational},
            "kernel": platform.release(), "python": platform.python_version(), "versions": versions,
            "drop_caches": drop_ok, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def _gib(n) -> str:
    return f"{n / 2**30:.1f} GiB"


def _mib(n) -> str:
    return f"{n / MiB:,.0f}"


def render(results: dict) -> str:
    m = results["machine"]
    disk = m["disk"]
    kind = {True: "rotational", False: "reported non-rotational", None: "type unknown"}[disk["rotational"]]
    v = m["versions"]
    lines = [
        SECTION, "",
        "`pixart-ms convert` and `pixart-ms verify` on full-size synthetic checkpoints (random values, real names",
        "and shapes), each run as a fresh process, against a baseline in the same invocation: `cp -r` of the same",
        "source to the same disk (time), and a bare `python -c \"import mindspore, torch\"` (memory). Written by",
        "`benchmarks/bench_convert.py`; raw numbers in `benchmarks/results/conversion.json`.", "",
        "### Machine", "",
        f"- CPU: {m['cpu']}, {m['cores']} cores",
        f"- RAM: {_gib(m['ram_bytes'])}, swap {_gib(m['swap_bytes']) if m['swap_bytes'] else 'none'}",
        f"- Disk: {disk['device']} ({disk['fs']}, {kind}, {_gib(disk['size_bytes'])}), work dir on {disk['mount']}",
        f"- Linux {m['kernel']}, Python {m['python']}, mindspore {v['mindspore']}, torch {v['torch']}, "
        f"safetensors {v['safetensors']}, numpy {v['numpy']}, transformers {v['transformers']}",
        f"- Date: {m['date']}",
        "",
        "### Method", "",
        "- Wall time, CPU time (user + sys) and peak RSS come from `/usr/bin/time -v`; peak RSS is `ru_maxrss`, the",
        "  largest single process of the command's tree. RSS of the whole tree was also sampled every 50 ms from",
        "  `/proc/PID/status`; the \"anon / file at peak\" column splits that sampled peak into anonymous memory and",
        "  file-backed pages (memory-mapped checkpoint pages count in RSS until they are unmapped).",
        "- \"Excess\" = peak RSS − (peak RSS of the import baseline of the same round + the largest source tensor).",
        "  A streaming conversion should keep it a small constant whatever the model size.",
        *(["- Round 1 (\"cold\") drops the page cache before every command (`sync; echo 3 >",
            "  /proc/sys/vm/drop_caches`); later rounds (\"warm\") run right after, with whatever the cache holds."]
          if m["drop_caches"] else
          ["- The page cache could not be dropped (no write access to /proc/sys/vm/drop_caches): `cp` runs first,",
           "  then convert, then verify, so the later commands may find the source in the cache."]),
        "- Before every command dirty pages are flushed with `sync` (untimed), so no run pays for the previous",
        "  one's writeback. Neither `cp` nor convert calls fsync: their times end when the data is in the page cache.",
        "- \"other CPU s\" is CPU time the rest of the machine used during the command (from /proc/stat, minus the",
        "  command and this script's sampler): other work competing for the 2 cores makes that run's time unreliable.",
        "  Other sessions' processes may be invisible to `ps` here, so before each command the script waits (up to",
        "  120 s) until the machine has used less than a quarter of a core for 2 s.",
        "- On this virtual machine a dropped guest page cache may still be served from the host's cache, so \"cold\"",
        "  is a lower bound on real cold-disk time.",
        "",
    ]
    for name in ("pixart", "t5"):
        bench = results["benchmarks"].get(name)
        if bench is None:
            continue
        s = bench["source_info"]
        big = s["largest"]
        lines += [f"### {bench['title']}", "",
                  f"Source: `{bench['source']}`: {s['tensors']} tensors, {s['values']:,} values, "
                  f"{', '.join(s['dtypes'])}, {_gib(s['disk_bytes'])} on disk in {len(s['files'])} file(s). "
                  f"Largest tensor `{big['name']}` {tuple(big['shape'])} {big['dtype']}: "
                  f"{big['bytes']:,} bytes ({big['bytes'] / MiB:.1f} MiB)"
                  + (f", as large as {', '.join(f'`{n}`' for n in big['same_size'])}" if big.get("same_size") else "")
                  + f". Run {bench['date']}, converter code at {bench.get('code', '?')}.", ""]
        conv = next((r["rows"]["convert"] for r in bench["rounds"] if "summary" in r["rows"]["convert"]), None)
        if conv:
            c = conv["summary"]
            extras = ", ".join(f"`{e}`" for e in c["extras"]) or "none"
            lines += [f"Converted: {c['tensors']} tensors (+ extras: {extras}), {c['values']:,} values, "
                      f"{_gib(c['bytes'])} written, dtype {'/'.join(c['dtypes'])}; dropped by rule: "
                      f"{', '.join(f'`{d}`' for d in c['dropped']) or 'nothing'}.", ""]
        lines += ["| run | wall s | CPU s | other CPU s | peak RSS MiB | time vs cp | excess MiB "
                  "| peak / (import + largest) | anon / file MiB at sampled peak |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for rnd in bench["rounds"]:
            rows = rnd["rows"]
            cp_wall = rows["cp"].get("wall_s")
            base = rows["import"].get("maxrss_bytes", 0) + big["bytes"]
            for key, label in (("import", "import mindspore, torch"), ("cp", "cp -r (baseline)"),
                               ("dry_run", "convert --dry-run (plan only)"), ("convert", "convert"),
                               ("verify", "verify")):
                row = rows.get(key)
                if row is None:
                    continue
                run = f"{label} ({rnd['cache']})"
                if row["exit"] != 0:
                    lines.append(f"| {run} | {row.get('wall_s', 0):.2f} | | | | | | | failed: {row.get('error', '')} |")
                    continue
                rss = row["maxrss_bytes"]
                sampled = row["sampled"]
                ratio = f"{row['wall_s'] / cp_wall:.2f}x" if key in ("convert", "verify", "dry_run") and cp_wall \
                    else ("1.00x" if key == "cp" else "")
                excess = f"{(rss - base) / MiB:+,.0f}" if key in ("convert", "verify", "dry_run") else ""
                rel = f"{rss / base:.2f}" if key in ("convert", "verify", "dry_run") else ""
                split = f"{_mib(sampled['anon_at_peak_bytes'])} / {_mib(sampled['file_at_peak_bytes'])}"
                other = f"{row['other_cpu_s']:.1f}" if row.get("other_cpu_s") is not None else "–"
                lines.append(f"| {run} | {row['wall_s']:.2f} | {row.get('user_s', 0) + row.get('sys_s', 0):.1f} | "
                             f"{other} | {_mib(rss)} | {ratio} | {excess} | {rel} | {split} |")
        lines += [""]
        notes = observations(bench)
        if notes:
            lines += [f"- {n}" for n in notes] + [""]
        trace = bench.get("trace")
        if trace:
            pk = trace["peak"]
            lines += [f"Where the time and memory go: one more conversion, traced in-process by "
                      f"`benchmarks/trace_convert_memory.py` ({trace['cache']} cache; {trace['seconds']:.1f} s, "
                      f"VmHWM {_mib(trace['vmhwm_bytes'])} MiB). Each phase is the innermost wrapped call; RSS is "
                      f"sampled every 20 ms and shown at the phase's own maximum. The sampled peak, "
                      f"{_mib(pk['rss_bytes'])} MiB ({_mib(pk['anon_bytes'])} anonymous + {_mib(pk['file_bytes'])} "
                      f"file-backed), fell in phase \"{pk['phase']}\", {pk['at_s']:.0f} s in.", "",
                      "| phase | seconds | max RSS MiB | anon MiB | file-backed MiB |", "|---|---:|---:|---:|---:|"]
            for ph in sorted(trace["phases"], key=lambda p: -p["seconds"]):
                if ph["seconds"] < 0.05 and ph["max_rss_bytes"] < pk["rss_bytes"] * 0.9:
                    continue
                lines.append(f"| {ph['phase']} | {ph['seconds']:.1f} | {_mib(ph['max_rss_bytes'])} | "
                             f"{_mib(ph['anon_bytes'])} | {_mib(ph['file_bytes'])} |")
            lines += [""]
        history = results.get("history", {}).get(name, [])
        if len(history) > 1:
            lines += history_lines(history)
        out = next((r["rows"]["convert"].get("output_bytes") for r in bench["rounds"]
                    if r["rows"]["convert"].get("output_bytes")), None)
        lines += [f"Disk: source {_gib(s['disk_bytes'])}, `cp` copy {_gib(bench['rounds'][0]['rows']['cp']['output_bytes'])}"
                  + (f", converted folder {_gib(out)}" if out else "")
                  + "; the copy is deleted before the conversion runs, so the peak is source + the larger of the two.",
                  ""]
        lines += ["Reproduce (the script runs exactly these, each under `/usr/bin/time -v`):", "", "```",
                  f"python benchmarks/bench_convert.py --only {name}"]
        first = bench["rounds"][0]["rows"]
        for key in ("import", "cp", "dry_run", "convert", "verify"):
            if key in first:
                lines.append(" ".join(_quote(a) for a in _display(first[key]["cmd"])))
        lines += ["```", ""]
    return "\n".join(lines).rstrip() + "\n"


def compact(bench: dict) -> dict:
    """One invocation's headline numbers, kept across runs in the results file to show run-to-run spread."""
    rounds = []
    for rnd in bench["rounds"]:
        rows = rnd["rows"]
        rounds.append({"cache": rnd["cache"], **{f"{k}_wall_s": rows[k].get("wall_s") for k in ("cp", "convert", "verify")
                                                 if k in rows},
                       "convert_peak_bytes": rows["convert"].get("maxrss_bytes"),
                       "other_cpu_s": sum(rows[k].get("other_cpu_s") or 0 for k in ("cp", "convert", "verify")
                                          if k in rows) if "other_cpu_s" in rows["convert"] else None,
                       "import_peak_bytes": rows["import"].get("maxrss_bytes")})
    trace = bench.get("trace") or {}
    return {"date": bench["date"], "code": bench.get("code"), "rounds": rounds, "trace_vmhwm_bytes": trace.get("vmhwm_bytes"),
            "trace_seconds": trace.get("seconds")}


def history_lines(history: list[dict]) -> list[str]:
    lines = ["Every recorded invocation (convert wall s / peak RSS MiB per round; the traced run's peak, which is "
             "in-process and so comparable):", "",
             "| date | converter | cp s | convert s | convert peak RSS MiB | verify s | other CPU s "
             "(cp+convert+verify) | traced run peak MiB |",
             "|---|---|---|---|---|---|---|---:|"]
    for h in history:
        def col(key, fmt):
            return " / ".join(fmt(r[key]) if r.get(key) is not None else "–" for r in h["rounds"])
        lines.append(f"| {h['date']} | {h.get('code') or '?'} | {col('cp_wall_s', '{:.1f}'.format)} | {col('convert_wall_s', '{:.1f}'.format)} "
                     f"| {col('convert_peak_bytes', _mib)} | {col('verify_wall_s', '{:.1f}'.format)} | "
                     f"{col('other_cpu_s', '{:.0f}'.format)} | "
                     f"{_mib(h['trace_vmhwm_bytes']) if h.get('trace_vmhwm_bytes') else '–'} |")
    current = [h for h in history if h.get("code") == history[-1].get("code")]
    peaks = [r["convert_peak_bytes"] for h in current for r in h["rounds"] if r.get("convert_peak_bytes")]
    peaks += [h["trace_vmhwm_bytes"] for h in current if h.get("trace_vmhwm_bytes")]
    walls = [r["convert_wall_s"] for h in current for r in h["rounds"] if r.get("convert_wall_s")]
    lines += ["", f"With the converter at {history[-1].get('code')}: over {len(peaks)} conversions peak RSS "
                  f"{_mib(min(peaks))}–{_mib(max(peaks))} MiB; over {len(walls)} timed ones "
                  f"{min(walls):.1f}–{max(walls):.1f} s wall.", ""]
    return lines


def observations(bench: dict) -> list[str]:
    big = bench["source_info"]["largest"]["bytes"]
    notes = []
    for rnd in bench["rounds"]:
        rows = rnd["rows"]
        conv, imp, dry = rows.get("convert"), rows.get("import"), rows.get("dry_run")
        if not conv or conv["exit"] != 0 or not imp:
            continue
        s = conv["sampled"]
        plan_const = (dry["maxrss_bytes"] - imp["maxrss_bytes"]) / MiB if dry and dry["exit"] == 0 else None
        stream = (conv["maxrss_bytes"] - dry["maxrss_bytes"]) / MiB if dry and dry["exit"] == 0 else None
        text = (f"Round {rnd['round']} ({rnd['cache']}): convert peaked at {_mib(conv['maxrss_bytes'])} MiB, "
                f"{(conv['maxrss_bytes'] - imp['maxrss_bytes'] - big) / MiB:+,.0f} MiB over import baseline + largest "
                f"tensor")
        if plan_const is not None:
            text += (f"; planning alone (dry run) costs {plan_const:+,.0f} MiB over the import baseline, streaming "
                     f"adds {stream:+,.0f} MiB over the dry run ({stream * MiB / big:.2f}x the largest tensor)")
        libs = imp["sampled"]["file_at_peak_bytes"]
        text += (f"; at the sampled peak ({s['peak_at_s']:.0f} s in) {_mib(s['anon_at_peak_bytes'])} MiB were anonymous "
                 f"and {_mib(s['file_at_peak_bytes'])} MiB file-backed ({_mib(s['file_at_peak_bytes'] - libs)} MiB "
                 f"above the import baseline's {_mib(libs)} MiB of mapped libraries: mapped checkpoint pages); "
                 f"max anonymous {_mib(s['max_anon_bytes'])} MiB; {s['max_processes']} process(es).")
        notes.append(text)
        if "summary" in conv and conv["summary"].get("seconds") is not None:
            notes.append(f"Round {rnd['round']}: the converter's own clock says {conv['summary']['seconds']:.1f} s of "
                         f"{conv['wall_s']:.1f} s wall; the rest is interpreter start-up and imports.")
    return notes


def _display(cmd: list[str]) -> list[str]:
    out = []
    for a in cmd:
        if a == sys.executable:
            a = "python"
        elif a == shutil.which("pixart-ms"):
            a = "pixart-ms"
        out.append(a)
    return out


def _quote(a: str) -> str:
    return f'"{a}"' if " " in a or "," in a else a


def write_section(section: str, heading: str) -> None:
    """Replace (or append) the ``heading`` section of BENCHMARKS.md; every benchmark script writes its own."""
    text = REPORT.read_text() if REPORT.is_file() else (
        "# Benchmarks\n\nFull-size runs of pixart-mindspore on one machine; each section is written by its "
        "script in `benchmarks/`.\n")
    pattern = re.compile(rf"^{re.escape(heading)}\s*$.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip() + "\n\n" + section
    REPORT.write_text(text.rstrip() + "\n")


def write_report(results: dict) -> None:
    write_section(render(results), SECTION)


# ----------------------------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/pixart-ms-bench"))
    parser.add_argument("--only", choices=sorted(BENCHMARKS))
    parser.add_argument("--keep", action="store_true", help="Keep the converted folder of the last round.")
    parser.add_argument("--runs", type=int, default=2, help="Rounds per benchmark (the first cold if possible).")
    parser.add_argument("--no-drop-caches", action="store_true", help="Never drop the page cache.")
    parser.add_argument("--no-wait-quiet", action="store_true",
                        help="Do not wait (up to 120 s) for the rest of the machine to go quiet before each command.")
    parser.add_argument("--no-trace", action="store_true",
                        help="Skip the extra traced conversion (benchmarks/trace_convert_memory.py).")
    parser.add_argument("--report-only", action="store_true",
                        help="Re-write the BENCHMARKS.md section from benchmarks/results/conversion.json; run nothing.")
    parser.add_argument("--generate", nargs=2, metavar=("NAME", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--inspect", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.generate:
        kind, folder = args.generate
        {"pixart": generate_pixart, "t5": generate_t5}[kind](Path(folder))
        return
    if args.inspect:
        print(json.dumps(inspect_source(args.inspect)))
        return

    if args.report_only:
        write_report(json.loads(RESULTS.read_text()))
        print(f"wrote {REPORT}")
        return
    if not Path(TIME).is_file():
        sys.exit(f"{TIME} not found (GNU time); install it (apt-get install time)")
    global WAIT_QUIET
    WAIT_QUIET = not args.no_wait_quiet
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    drop_ok = not args.no_drop_caches and can_drop_caches()
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"benchmarks": {}}
    results["machine"] = machine(workdir, drop_ok)
    for name in [args.only] if args.only else list(BENCHMARKS):
        bench = results["benchmarks"][name] = run_benchmark(name, workdir, args.runs, drop_ok, args.keep,
                                                            not args.no_trace)
        results.setdefault("history", {}).setdefault(name, []).append(compact(bench))
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
        write_report(results)
    print(f"wrote {REPORT} and {RESULTS}")


if __name__ == "__main__":
    main()
