#!/usr/bin/env python
"""Where a MindSpore SDXL-VAE decode at 1024x1024 must spend its convolution time on this CPU, against torch.

Every 3x3 convolution of the decoder (latent 128), by shape, timed four ways on random data:

- ``MatMul``: MindSpore's CPU MatMul alone on conv_unfold's im2col products (the band's columns built beforehand;
  its band sizes), the floor of any im2col + MatMul convolution;
- ``unfold``: ``ops.unfold`` alone on the same bands' input rows (the im2col it needs);
- ``conv_unfold``: the whole convolution as the eager decode runs it (``layers.conv_unfold`` with host buffers:
  unfold, MatMul, bias and the copy of each band into the output);
- ``torch``: ``F.conv2d`` on the whole map (oneDNN, no im2col), every core.

MindSpore's own CPU convolutions (Conv2D, Conv2DTranspose, Conv3D) ran at about 1 GFLOPS here
(research/s23/ms_conv_forms.py, ms_conv_alt.py) and are shown at one small band.

Then the whole eager decode (fast kernels, host buffers, random weights) under cProfile: its time by op, the
legacy ops' launches (``run_op_async``) split by the Python function that launched them.

    python benchmarks/vae_conv_floor.py [--latent 128]   (about 11 min, 5.5 GiB; writes benchmarks/results/vae_conv_floor.md)
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("GLOG_v", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

OUT_MD = REPO / "benchmarks" / "results" / "vae_conv_floor.md"


def decoder_convs(latent: int) -> list[tuple[int, int, int, int]]:
    """(cin, cout, side, count) of the SDXL decoder's 3x3 convolutions (block_out_channels 128/256/512/512, three
    resnets an up block, upsamplers on the first three)."""
    s = latent
    return [(4, 512, s, 1), (512, 512, s, 4 + 6), (512, 512, 2 * s, 1 + 6), (512, 512, 4 * s, 1),
            (512, 256, 4 * s, 1), (256, 256, 4 * s, 5), (256, 256, 8 * s, 1), (256, 128, 8 * s, 1),
            (128, 128, 8 * s, 5), (128, 3, 8 * s, 1)]


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(latent: int) -> list[dict]:
    import mindspore as ms
    import torch
    from mindspore import ops

    from mindspore_nets import layers

    ms.set_context(mode=ms.PYNATIVE_MODE)
    layers.synchronous_launch()  # as parity runs the eager decode
    rng = np.random.default_rng(0)
    matmul = ops.MatMul()
    rows_out = []
    for cin, cout, side, count in decoder_convs(latent):
        rows = max(1, min(side, layers.CONV_BAND_BYTES // (4 * cin * 9 * side)))
        weight = rng.standard_normal((cout, cin, 3, 3), dtype=np.float32) * 0.05
        wmat = ms.Tensor(weight.reshape(cout, cin * 9))
        band_in = ms.Tensor(rng.standard_normal((1, cin, rows + 2, side), dtype=np.float32))
        cols = ops.unfold(band_in, 3, padding=(0, 1)).reshape(cin * 9, rows * side)
        matmul(wmat, cols).asnumpy()
        per_band = best(lambda: matmul(wmat, cols).asnumpy(), 3)
        # not asnumpy: it copies an unfold output (a MatMul's it shares); the op is done when it returns
        unfold_band = best(lambda: ops.unfold(band_in, 3, padding=(0, 1))[0, 0, :1].asnumpy(), 3)
        del cols, band_in
        x = rng.standard_normal((1, cin, side, side), dtype=np.float32)
        xm, wm, bias = ms.from_numpy(x), ms.Tensor(weight), ms.Tensor(np.zeros(cout, np.float32))
        ours = best(lambda: layers.conv_unfold(xm, wm, bias, 1, (1, 1, 1, 1), host_output=True).asnumpy(), 2)
        tx, tw = torch.from_numpy(x), torch.from_numpy(weight)
        with torch.no_grad():
            torch.nn.functional.conv2d(tx[:, :, :8], tw, padding=1)
            theirs = best(lambda: torch.nn.functional.conv2d(tx, tw, padding=1), 2)
        del xm, tx, x
        entry = {"cin": cin, "cout": cout, "side": side, "count": count, "band_rows": rows,
                 "gflop": 2 * cout * cin * 9 * side * side / 1e9, "matmul_s": per_band * side / rows,
                 "unfold_s": unfold_band * side / rows, "conv_unfold_s": ours, "torch_s": theirs}
        rows_out.append(entry)
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in entry.items()}, flush=True)
    return rows_out


def plain_conv_gflops() -> tuple[float, float]:
    """MindSpore's CPU Conv2D and torch's on one 128-channel band (34 x 128): GFLOPS."""
    import mindspore as ms
    import torch
    from mindspore import ops

    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 128, 34, 128), dtype=np.float32)
    w = rng.standard_normal((128, 128, 3, 3), dtype=np.float32)
    gflop = 2 * 128 * 128 * 9 * 32 * 128 / 1e9
    conv = ops.Conv2D(128, 3, pad_mode="pad", pad=(0, 0, 1, 1))
    xm, wm = ms.Tensor(x), ms.Tensor(w)
    conv(xm, wm).asnumpy()
    ms_s = best(lambda: conv(xm, wm).asnumpy(), 2)
    tx, tw = torch.from_numpy(x), torch.from_numpy(w)
    with torch.no_grad():
        torch_s = best(lambda: torch.nn.functional.conv2d(tx, tw, padding=(0, 1)), 3)
    return gflop / ms_s, gflop / torch_s


def profile_decode(latent: int) -> tuple[float, list[tuple[str, float]]]:
    """The eager fast decode of one latent under cProfile: wall seconds and (entry, exclusive seconds), the
    MindSpore kernel calls by op and the legacy launches by the function that made them."""
    import cProfile
    import pstats

    import mindspore as ms

    from bench_vae_speed import SDXL
    from mindspore_nets import layers
    from mindspore_nets.config import VAEConfig
    from mindspore_nets.vae import AutoencoderKL
    from parity.harness import QUERY_ROWS

    with layers.fast_kernels():
        net = AutoencoderKL(VAEConfig.from_dict(SDXL))
    rng = np.random.default_rng(2)
    for p in net.decoder.get_parameters():
        p.set_data(ms.Tensor((rng.standard_normal(p.shape) * 0.02).astype(np.float32)))
    z = ms.Tensor(rng.standard_normal((1, 4, latent, latent)).astype(np.float32))
    with layers.query_blocks(QUERY_ROWS):
        net.decoder(ms.Tensor(np.zeros((1, 4, 8, 8), np.float32)))  # kernels set up
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        net.decoder(z).asnumpy()
        prof.disable()
        wall = time.perf_counter() - t0
    stats = pstats.Stats(prof).stats
    entries = [(_label(path, name), own) for (path, _, name), (_, _, own, _, _) in stats.items()
               if name != "run_op_async" and own > 0.01 * wall]
    # legacy ops launch through run_op_async, called from MindSpore's own wrappers: their kernels' time goes up the
    # callers, shared in proportion to each call's cumulative time, to the first function outside MindSpore
    launched: dict = {}

    def up(func, seconds: float, depth: int = 0) -> None:
        callers = stats[func][4]
        total = sum(v[3] for v in callers.values()) or 1.0
        for caller, v in callers.items():
            share = seconds * v[3] / total
            if "/mindspore/" in caller[0] and depth < 8:
                up(caller, share, depth + 1)
            else:  # by the user-side function and the MindSpore function it called (unfold, bias_add, ...)
                key = (caller, func[2])
                launched[key] = launched.get(key, 0.0) + share

    for func, value in stats.items():
        if func[2] == "run_op_async":
            up(func, value[2])
    entries += [(f"legacy {via.replace('__call__', 'Primitive call')} from {c[2]} ({Path(c[0]).name})", t) for (c, via), t in launched.items()]
    entries.sort(key=lambda e: -e[1])
    return wall, entries


def _label(path: str, name: str) -> str:
    """A profile entry's name: ``pyboost_matmul``, ``Tensor.asnumpy``, ``_bands_to_host (layers.py)``."""
    if path != "~":
        return f"{name} ({Path(path).name}, own time)"
    method = re.fullmatch(r"<method '(\w+)' of '(\w+)' objects>", name)
    if method:
        return f"{method[2]}.{method[1]}"
    for prefix in ("<built-in method mindspore._c_expression.", "<built-in method ", "<function "):
        if name.startswith(prefix):
            return name[len(prefix):].split(" at 0x")[0].rstrip(">").strip("'").replace("' of '", " of ")
    return name


def render(latent: int, rows: list[dict], plain: tuple[float, float], machine: str, when: str,
           profile: tuple[float, list[tuple[str, float]]]) -> str:
    lines = [f"# The SDXL decoder's 3x3 convolutions at {8 * latent}x{8 * latent}: MindSpore's CPU floor against torch",
             "", f"Generated by `python benchmarks/vae_conv_floor.py --latent {latent}` ({when}).", "",
             f"Machine: {machine}. Random data; per shape, seconds for all of that shape's convolutions in one decode "
             "(count x one); MatMul and unfold timed on one band (best of 3) and scaled to the map, the whole "
             "convolutions best of 2.", "",
             "| shape (count) | GFLOP each | band rows | MatMul s | unfold s | conv_unfold s | torch s | "
             "MatMul GFLOPS | torch GFLOPS | MatMul / torch | conv_unfold / torch |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    total = dict.fromkeys(("matmul_s", "unfold_s", "conv_unfold_s", "torch_s"), 0.0)
    for r in rows:
        n = r["count"]
        for key in total:
            total[key] += n * r[key]
        lines.append(
            f"| {r['cin']}->{r['cout']} @ {r['side']}² ({n}) | {r['gflop']:.1f} | {r['band_rows']} | "
            f"{n * r['matmul_s']:.2f} | {n * r['unfold_s']:.2f} | {n * r['conv_unfold_s']:.2f} | "
            f"{n * r['torch_s']:.2f} | {r['gflop'] / r['matmul_s']:.0f} | {r['gflop'] / r['torch_s']:.0f} | "
            f"{r['matmul_s'] / r['torch_s']:.2f} | {r['conv_unfold_s'] / r['torch_s']:.2f} |")
    lines.append(f"| **all** | | | **{total['matmul_s']:.1f}** | **{total['unfold_s']:.1f}** | "
                 f"**{total['conv_unfold_s']:.1f}** | **{total['torch_s']:.1f}** | | | "
                 f"**{total['matmul_s'] / total['torch_s']:.2f}** | **{total['conv_unfold_s'] / total['torch_s']:.2f}** |")
    lines += ["", f"MindSpore's own CPU Conv2D on one 128-channel band (34 x 128): {plain[0]:.1f} GFLOPS; torch "
              f"{plain[1]:.0f} GFLOPS on the same band.", "",
              f"## The eager decode by op ({8 * latent}x{8 * latent}, cProfile)", "",
              f"One decode, {profile[0]:.1f} s under the profiler; exclusive seconds, entries over 1% of it. Legacy "
              "ops (unfold, bias_add, BatchNorm, slices, ...) launch through `run_op_async` and are split by the "
              "function that launched them; `pyboost_*` are MindSpore's newer kernel calls.", "",
              "| entry | s | share |", "|---|---|---|"]
    lines += [f"| {name} | {sec:.1f} | {100 * sec / profile[0]:.1f}% |" for name, sec in profile[1] if sec > 0.01 * profile[0]]
    lines += ["", "Reproduce: `python benchmarks/vae_conv_floor.py`", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latent", type=int, default=128)
    args = parser.parse_args()
    from support import machine, machine_summary

    rows = measure(args.latent)
    plain = plain_conv_gflops()
    profile = profile_decode(args.latent)
    text = render(args.latent, rows, plain, machine_summary(machine(REPO)), time.strftime("%Y-%m-%d %H:%M"),
                  profile)
    OUT_MD.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
