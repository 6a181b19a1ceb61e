#!/usr/bin/env python
"""Where does a conversion's time and memory go? Runs ``converters.convert.convert`` in this process with its
phases wrapped (nothing in the converter changes): wall time per phase of the main thread (exclusive of the
phases nested in it), CPU time per thread (the main thread reads, checks and casts, and hashes the
framing bytes; ``stage-write`` writes the file; ``stage-hash`` hashes each tensor; ``source-hash`` hashes the source files), and the RSS,
sampled every ``--interval`` seconds, at each phase's maximum.

    python benchmarks/trace_convert_memory.py SRC OUT [--interval 0.02] [--json trace.json] [convert options]

A diagnostic for the numbers in BENCHMARKS.md ("## Conversion"), not a benchmark: the wrappers and the sampling
thread cost a little time. OUT must not exist; it is left in place.
"""
from __future__ import annotations

import argparse
import functools
import json
import threading
import time
from pathlib import Path

MiB = 2**20
T0 = time.perf_counter()


def status() -> dict:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


class Tracer:
    def __init__(self, interval: float):
        self.interval = interval
        self.stack = ["start"]
        self.wall: dict[str, float] = {}  # phase -> exclusive seconds (main thread)
        self.calls: dict[str, int] = {}
        self.rss: dict[str, tuple[int, int, int]] = {}  # phase -> (max rss, anon, file) at that max
        self.thread_cpu: dict[str, float] = {}
        self.peak = (0, 0, 0, "", 0.0)
        self._mark = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._main = threading.get_ident()

    def _switch(self, phase: str | None) -> None:
        now = time.perf_counter()
        top = self.stack[-1]
        self.wall[top] = self.wall.get(top, 0.0) + now - self._mark
        self._mark = now
        if phase is None:
            self.stack.pop()
        else:
            self.stack.append(phase)
            self.calls[phase] = self.calls.get(phase, 0) + 1

    def _run(self):
        while not self._stop.is_set():
            s = status()
            phase = self.stack[-1]
            if s["VmRSS"] > self.rss.get(phase, (0,))[0]:
                self.rss[phase] = (s["VmRSS"], s["RssAnon"], s["RssFile"])
            if s["VmRSS"] > self.peak[0]:
                self.peak = (s["VmRSS"], s["RssAnon"], s["RssFile"], phase, time.perf_counter() - T0)
            time.sleep(self.interval)

    def start(self):
        self._thread.start()

    def stop(self):
        self._switch("done")
        self._stop.set()
        self._thread.join()

    def wrap(self, owner, name: str, phase: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            if threading.get_ident() != self._main:
                return original(*args, **kwargs)
            self._switch(phase)
            try:
                return original(*args, **kwargs)
            finally:
                self._switch(None)

        setattr(owner, name, wrapper)

    def wrap_thread(self, owner, name: str, label: str) -> None:
        """A worker thread's loop: its CPU time is recorded when the loop ends."""
        original = getattr(owner, name)

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            try:
                return original(*args, **kwargs)
            finally:
                self.thread_cpu[label] = self.thread_cpu.get(label, 0.0) + time.thread_time()

        setattr(owner, name, wrapper)


PHASES = [  # (module, owner attribute or None, function, phase)
    ("converters.convert", None, "detect", "detect (headers; the .pth zip + restricted unpickler)"),
    ("converters.convert", None, "plan_job", "plan (key map + parameter table)"),
    ("converters.convert", None, "stream_plan", "stream: other (loop, hand-offs)"),
    ("converters.ranges", "RangeProducer", "fill", "read + check + cast (preadv into the buffers)"),
    ("converters.staging", "StagedFile", "_take", "waiting for a free staging buffer"),
    ("converters.staging", "StagedFile", "finish", "waiting for the hash/write threads to finish"),
    ("converters.staging", "StagedFile", "close", "close (truncate the O_DIRECT padding)"),
    ("converters.staging", "FileHasher", "result", "waiting for the source-file hash thread"),
    ("converters.engine", None, "produce_group", "rule.apply path (whole arrays)"),
    ("converters.engine", None, "check_aliases", "tied-copy check"),
    ("converters.convert", None, "component_manifest", "manifest (rows, config.json hash)"),
    ("pixart_core.outputs", None, "fsync_tree", "fsync (every file and folder)"),
]
THREADS = [("converters.staging", "StagedFile", "_write_loop", "stage-write: os.writev"),
           ("converters.staging", "StagedFile", "_hash_loop", "stage-hash: per-tensor sha256"),
           ("converters.staging", "FileHasher", "_run", "source-hash: source files' sha256")]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--interval", type=float, default=0.02)
    parser.add_argument("--json", type=Path, help="Write the phase table and the peak as JSON.")
    parser.add_argument("--dtype", default="keep")
    parser.add_argument("--format", default="safetensors")
    args = parser.parse_args()

    tracer = Tracer(args.interval)
    tracer.start()
    tracer._switch("import (CLI modules)")
    import importlib

    from converters import convert as convert_mod

    tracer._switch(None)
    for module, owner, name, phase in PHASES:
        target = importlib.import_module(module)
        tracer.wrap(getattr(target, owner) if owner else target, name, phase)
    for module, owner, name, label in THREADS:
        tracer.wrap_thread(getattr(importlib.import_module(module), owner), name, label)

    cpu0 = time.process_time()
    started = time.perf_counter()
    result = convert_mod.convert(args.src, args.out, opts=convert_mod.Options(dtype=args.dtype, fmt=args.format),
                                 progress=False)
    seconds = time.perf_counter() - started
    tracer.stop()
    cpu = time.process_time() - cpu0
    main_cpu = time.thread_time()
    hwm = status()["VmHWM"]
    phases = [{"phase": p, "seconds": round(s, 3), "calls": tracer.calls.get(p, 1),
               "max_rss_bytes": tracer.rss.get(p, (0, 0, 0))[0]}
              for p, s in sorted(tracer.wall.items(), key=lambda kv: -kv[1]) if p != "done"]
    threads = {"main: read, check, cast, stage": round(main_cpu, 2),
               **{k: round(v, 2) for k, v in tracer.thread_cpu.items()}}
    rss, anon, file, phase, at = tracer.peak
    print(f"converted {args.src} -> {result['output']} in {seconds:.1f} s wall, {cpu:.1f} s CPU; "
          f"VmHWM {hwm / MiB:,.0f} MiB; peak sampled in '{phase}'")
    for row in phases:
        print(f"  {row['phase']:50s} {row['seconds']:8.2f} s  {row['calls']:6d} calls  "
              f"{row['max_rss_bytes'] / MiB:7,.0f} MiB")
    for name, value in threads.items():
        print(f"  CPU {name:46s} {value:8.2f} s")
    if args.json:
        args.json.write_text(json.dumps({
            "src": str(args.src), "seconds": round(seconds, 2), "cpu_s": round(cpu, 2), "vmhwm_bytes": hwm,
            "peak": {"rss_bytes": rss, "anon_bytes": anon, "file_bytes": file, "phase": phase, "at_s": round(at, 2)},
            "phases": phases, "thread_cpu_s": threads}, indent=1) + "\n")


if __name__ == "__main__":
    main()
