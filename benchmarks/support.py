"""Measuring helpers the benchmark scripts share (this module imports neither torch nor MindSpore).

- ``measure(cmd, logs, label)``: one command in a fresh process under ``/usr/bin/time -v`` (wall, user, sys, peak
  RSS = ``ru_maxrss`` of the largest process), inside ``/work/tools/memwatch.py`` when it exists (outside the
  timing: the watchdog's polling is not charged to the command), optionally holding the machine-wide big-memory
  lock for exactly that run; the RSS of the command's process tree is sampled too, and the load: ``/proc/loadavg``
  before and after, and the CPU time the rest of the machine used meanwhile (from /proc/stat).
- ``machine``: CPU, RAM, disk, versions; ``write_section``: one ``## ...`` section of BENCHMARKS.md.
"""
from __future__ import annotations

import fcntl
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pixart_core.children import child_environment  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
REPORT = REPO / "BENCHMARKS.md"
TIME = "/usr/bin/time"
MEMWATCH = Path("/work/tools/memwatch.py")
BIGMEM_LOCK = Path("/tmp/bigmem.lock")
MiB = 2**20
SAMPLE_SECONDS = 0.05
IDLE_CORES = 0.25  # --wait-quiet: "quiet" = the rest of the machine uses less than a quarter of a core
WAIT_QUIET = False


def _gib(n) -> str:
    return f"{n / 2**30:.1f} GiB"


def _mib(n) -> str:
    return f"{n / MiB:,.0f}"


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def _busy_seconds() -> float:
    """CPU seconds all processes of the machine have used since boot (not idle, not iowait), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def wait_quiet(max_wait: float = 120.0) -> float:
    """Wait (up to ``max_wait`` s) until the machine has been quiet for 2 s; returns the seconds waited."""
    started = time.perf_counter()
    while True:
        busy0 = _busy_seconds()
        time.sleep(2.0)
        if (_busy_seconds() - busy0) / 2.0 < IDLE_CORES or time.perf_counter() - started > max_wait:
            return round(time.perf_counter() - started - 2.0, 1)


@contextmanager
def bigmem_lock(enabled: bool = True):
    """The machine-wide lock every process over ~3 GiB takes (RULES.md), held for one run only."""
    if not enabled:
        yield 0.0
        return
    started = time.perf_counter()
    with open(BIGMEM_LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield time.perf_counter() - started
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _status(pid: int) -> dict | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


_TIME_FIELDS = {"User time (seconds)": ("user_s", float), "System time (seconds)": ("sys_s", float),
                "Maximum resident set size (kbytes)": ("maxrss_bytes", lambda v: int(v) * 1024),
                "Major (requiring I/O) page faults": ("major_faults", int),
                "File system inputs": ("fs_in_blocks", int), "File system outputs": ("fs_out_blocks", int),
                "Exit status": ("exit", int)}


def _parse_time(path: Path) -> dict:
    out = {}
    for line in path.read_text().splitlines():
        key, _, value = line.strip().rpartition(": ")
        if key.startswith("Elapsed (wall clock) time"):
            seconds = 0.0
            for part in value.split(":"):
                seconds = seconds * 60 + float(part)
            out["wall_s"] = seconds
        elif key in _TIME_FIELDS:
            name, conv = _TIME_FIELDS[key]
            out[name] = conv(value)
    if "user_s" in out:
        out["cpu_s"] = round(out["user_s"] + out.get("sys_s", 0.0), 2)
    return out


def measure(cmd: list[str], logs: Path, label: str, limit_gib: float | None = None, lock: bool = False) -> dict:
    """Run ``cmd`` under /usr/bin/time -v (inside memwatch with ``limit_gib``, when it exists; holding the
    big-memory lock with ``lock``); stdout/stderr go to ``logs``."""
    import psutil

    logs.mkdir(parents=True, exist_ok=True)
    stem = logs / label
    waited = wait_quiet() if WAIT_QUIET else None
    time_file = stem.with_suffix(".time")
    outer = [TIME, "-v", "-o", str(time_file), *cmd]
    if limit_gib is not None and MEMWATCH.is_file():
        outer = [sys.executable, str(MEMWATCH), "--limit-gib", str(limit_gib), "--", *outer]
    with bigmem_lock(lock) as lock_wait:
        load_before = loadavg()
        busy0, self0 = _busy_seconds(), sum(os.times()[:2])
        started = time.perf_counter()
        peak, samples = 0, 0
        with open(stem.with_suffix(".out"), "w") as out, open(stem.with_suffix(".err"), "w") as err:
            proc = subprocess.Popen(outer, stdout=out, stderr=err, env=child_environment())
            parent = psutil.Process(proc.pid)
            while proc.poll() is None:
                try:
                    pids = [c.pid for c in parent.children(recursive=True) if c.name() != "time"]
                except psutil.Error:
                    pids = []
                total = sum(s.get("VmRSS", 0) for s in map(_status, pids) if s)
                peak, samples = max(peak, total), samples + 1
                time.sleep(SAMPLE_SECONDS)
        elapsed = time.perf_counter() - started
        busy = _busy_seconds() - busy0
        mine = sum(os.times()[:2]) - self0
        load_after = loadavg()
    result = {"label": label, "cmd": cmd, **(_parse_time(time_file) if time_file.is_file() else {}),
              "outer_wall_s": round(elapsed, 3), "waited_for_quiet_s": waited, "lock_wait_s": round(lock_wait, 1),
              "loadavg_before": load_before, "loadavg_after": load_after,
              "sampled": {"peak_tree_rss_bytes": peak, "samples": samples}}
    result.setdefault("exit", proc.returncode)
    if proc.returncode and result["exit"] == 0:
        result["exit"] = proc.returncode  # memwatch killed it
    # CPU the rest of the machine used meanwhile (minus the command, this sampler and the watchdog's share)
    result["other_cpu_s"] = round(max(0.0, busy - mine - result.get("cpu_s", 0)), 1)
    if result["exit"] != 0:
        lines = stem.with_suffix(".err").read_text().strip().splitlines()
        result["error"] = lines[-1] if lines else f"exit {result['exit']}"
    return result


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def settle(cold: bool = False) -> None:
    """Flush dirty pages (untimed) so one run's writeback does not land in the next; drop caches for cold runs."""
    subprocess.run(["sync"], check=True)
    if cold:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")


def machine(workdir: Path, drop_ok: bool = False) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    mem = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("MemTotal", "SwapTotal", "MemAvailable"):
            mem[key] = int(value.split()[0]) * 1024
    df = subprocess.run(["df", "-PT", str(workdir)], capture_output=True, text=True).stdout.splitlines()[-1].split()
    block = Path(f"/sys/block/{Path(df[0]).name}/queue/rotational")
    versions = {}
    for pkg in ("mindspore", "torch", "safetensors", "numpy", "ml_dtypes", "transformers", "pixart-mindspore"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    return {"cpu": cpu, "sha_ni": " sha_ni" in flags, "cores": os.cpu_count(), "ram_bytes": mem.get("MemTotal"),
            "available_bytes": mem.get("MemAvailable"), "swap_bytes": mem.get("SwapTotal"),
            "disk": {"device": df[0], "fs": df[1], "size_bytes": int(df[2]) * 1024, "mount": df[6],
                     "free_bytes": int(df[4]) * 1024,
                     "rotational": block.read_text().strip() == "1" if block.is_file() else None},
            "kernel": os.uname().release, "python": sys.version.split()[0], "versions": versions,
            "drop_caches": drop_ok, "loadavg": loadavg(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def machine_lines(m: dict) -> list[str]:
    d, v = m["disk"], m["versions"]
    kind = {True: "rotational", False: "SSD", None: "?"}[d.get("rotational")]
    return [f"- CPU: {m['cpu']}, {m['cores']} cores{' (SHA-NI)' if m.get('sha_ni') else ''}",
            f"- RAM: {_gib(m['ram_bytes'])} ({_gib(m.get('available_bytes') or 0)} available at the start), swap "
            f"{_gib(m['swap_bytes'] or 0) if m['swap_bytes'] else 'none'}",
            f"- Disk: {d['device']} ({d['fs']}, {kind}, {_gib(d['size_bytes'])}, {_gib(d['free_bytes'])} free), "
            f"work dir on {d['mount']}",
            f"- Linux {m['kernel']}, Python {m['python']}, "
            + ", ".join(f"{k} {val}" for k, val in v.items() if val and k != "pixart-mindspore"),
            f"- Load average at the start: {' / '.join(f'{x:.1f}' for x in m['loadavg'])} (1 / 5 / 15 min); "
            f"date {m['date']}"]


def machine_summary(m: dict) -> str:
    """One line for a section's header: CPU, cores, RAM, Python, MindSpore and torch."""
    v = m["versions"]
    return (f"{m['cpu']}, {m['cores']} cores, {m['ram_bytes'] / 2**30:.1f} GiB RAM; Python {m['python']}, MindSpore "
            f"{v['mindspore']}, torch {v['torch']}")


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
