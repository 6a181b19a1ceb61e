#!/usr/bin/env python
"""Where does a conversion's memory go? Runs ``converters.convert.convert`` in this process with the reader,
writer and hashing steps wrapped (nothing in the converter changes), samples ``/proc/self/status`` every
``--interval`` seconds in a thread, and prints the RSS (anonymous / file-backed) per phase and at the peak.

    python benchmarks/trace_convert_memory.py SRC OUT [--interval 0.02] [--log trace.tsv] [--json trace.json]

A diagnostic for the numbers in BENCHMARKS.md ("## Conversion"), not a benchmark: the wrappers and the sampling
thread cost a little time. OUT must not exist; it is left in place. Time per phase is attributed by the sampling
thread to the innermost wrapped call running at each sample (20 ms resolution).
"""
from __future__ import annotations

import argparse
import functools
import threading
import time
from pathlib import Path

MiB = 2**20


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
        self.phase = "start"
        self.events = []  # (t, event, key, anon, file) after each wrapped call
        self.by_phase: dict[str, list] = {}  # phase -> [max rss, anon at it, file at it, samples, seconds]
        self.peak = (0, 0, 0, "", 0.0)
        self.t0 = self._last = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        s = status()
        now = time.perf_counter()
        rss, anon, file = s["VmRSS"], s["RssAnon"], s["RssFile"]
        row = self.by_phase.setdefault(self.phase, [0, 0, 0, 0, 0.0])
        row[3] += 1
        row[4] += now - self._last
        self._last = now
        if rss > row[0]:
            row[:3] = [rss, anon, file]
        if rss > self.peak[0]:
            self.peak = (rss, anon, file, self.phase, time.perf_counter() - self.t0)

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.interval)

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join()
        self._sample()

    def wrap(self, owner, name, phase_of):
        original = getattr(owner, name)

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            phase, key = phase_of(*args, **kwargs)
            previous, self.phase = self.phase, phase
            try:
                return original(*args, **kwargs)
            finally:
                s = status()
                self.events.append((time.perf_counter() - self.t0, phase, key, s["RssAnon"], s["RssFile"]))
                self.phase = previous

        setattr(owner, name, wrapper)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--interval", type=float, default=0.02)
    parser.add_argument("--log", type=Path, help="Write one line per wrapped call (t, phase, key, anon, file).")
    parser.add_argument("--json", type=Path, help="Write the phase table and the peak as JSON.")
    args = parser.parse_args()

    tracer = Tracer(args.interval)
    tracer.start()
    tracer.phase = "import"
    from converters import convert as convert_mod, engine, sources, writers

    import torch

    tracer.phase = "other"
    for cls in (sources.SafetensorsSource, sources.TorchSource):
        tracer.wrap(cls, "read", lambda self, key: ("source.read", key))
        tracer.wrap(cls, "close", lambda self: ("source.close", ""))
    tracer.wrap(sources.SafetensorsSource, "read_rows",
                lambda self, key, start, stop: ("alias check (read_rows)", f"{key}[{start}:{stop}]"))
    tracer.wrap(writers._Writer, "write", lambda self, name, tensor: ("writer.write (+sha256)", name))
    tracer.wrap(engine, "_equal_in_chunks", lambda source, a, b, *r: ("alias check (read_rows)", f"{a} == {b}"))
    tracer.wrap(convert_mod, "file_entry", lambda path: ("manifest file sha256", str(path)))
    tracer.wrap(convert_mod, "plan_job", lambda job, opts: ("plan", ""))
    tracer.wrap(convert_mod, "detect", lambda src, component, ema=False: ("detect (headers)", str(src)))
    # stream_plan is looked up in convert's namespace; wrap it there so the phase covers isfinite/cast too
    tracer.wrap(convert_mod, "stream_plan", lambda plan, source, writer, progress=None: ("stream (other)", ""))
    # the NaN/Inf check is the first code to touch a memory-mapped tensor's pages: disk reads land here
    tracer.wrap(torch, "isfinite", lambda tensor: ("isfinite check (+page-in)", ""))
    tracer.wrap(engine, "_cast", lambda target, value, bad: ("dtype cast", target.name))

    started = time.perf_counter()
    result = convert_mod.convert(args.src, args.out, progress=False)
    seconds = time.perf_counter() - started
    tracer.stop()

    hwm = status()["VmHWM"]
    print(f"converted {args.src} -> {result['output']} in {seconds:.1f} s; VmHWM {hwm / MiB:,.0f} MiB")
    rss, anon, file, phase, at = tracer.peak
    print(f"sampled peak: {rss / MiB:,.0f} MiB (anon {anon / MiB:,.0f}, file {file / MiB:,.0f}) at {at:.1f} s "
          f"in phase '{phase}'")
    print(f"{'phase':32s} {'seconds':>8s} {'max RSS':>9s} {'anon':>7s} {'file':>7s}  (MiB, at that phase's max)")
    for name, (p_rss, p_anon, p_file, n, secs) in sorted(tracer.by_phase.items(), key=lambda kv: -kv[1][0]):
        print(f"{name:32s} {secs:8.1f} {p_rss / MiB:9,.0f} {p_anon / MiB:7,.0f} {p_file / MiB:7,.0f}")
    reads = [e for e in tracer.events if e[1] == "writer.write (+sha256)"]
    if reads:
        print("anon / file MiB after writing tensor k (every ~10%):")
        step = max(1, len(reads) // 10)
        for i in list(range(0, len(reads), step)) + [len(reads) - 1]:
            t, _, key, e_anon, e_file = reads[i]
            print(f"  {i + 1:4d}/{len(reads)} {t:7.1f} s  anon {e_anon / MiB:7,.0f}  file {e_file / MiB:7,.0f}  {key}")
    if args.json:
        import json

        args.json.write_text(json.dumps({
            "src": str(args.src), "seconds": round(seconds, 2), "vmhwm_bytes": hwm,
            "peak": {"rss_bytes": rss, "anon_bytes": anon, "file_bytes": file, "phase": phase, "at_s": round(at, 2)},
            "phases": [{"phase": name, "seconds": round(secs, 2), "samples": n, "max_rss_bytes": r,
                        "anon_bytes": a, "file_bytes": f}
                       for name, (r, a, f, n, secs) in sorted(tracer.by_phase.items(), key=lambda kv: -kv[1][0])],
        }, indent=1) + "\n")
        print(f"wrote {args.json}")
    if args.log:
        with open(args.log, "w") as f:
            f.write("t_s\tphase\tkey\tanon_bytes\tfile_bytes\n")
            for t, ph, key, anon, file in tracer.events:
                f.write(f"{t:.3f}\t{ph}\t{key}\t{anon}\t{file}\n")
        print(f"wrote {args.log}")


if __name__ == "__main__":
    main()
