#!/usr/bin/env python
"""PixArt-Sigma XL/2 at full width, 1024x1024 (4096 tokens, batch 2, 300 caption tokens): forward time and drift of
our MindSpore network against diffusers' in one process, PYNATIVE with the plain ops and with
``layers.fast_kernels``, and where the time goes: each op of a block timed on both sides at its real shape.

    python benchmarks/bench_dit_speed.py [--layers 1] [--rows 256]

``--layers`` blocks (random diffusers init, seed 0) around the full embedding and final layer; the op table is the
per-call time of each kind of op one block makes (its count per block beside it). Drift is against a float64 torch
forward of the same weights. MindSpore attention runs in query slices of ``--rows`` rows, as parity and export do;
torch runs diffusers' own ``scaled_dot_product_attention`` (a fused CPU kernel). Results:
``benchmarks/results/dit_speed.json`` and the ``## DiT forward speed at 1024x1024`` section of ``BENCHMARKS.md``.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("GLOG_v", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench_convert import machine, write_section  # noqa: E402
from mindspore_nets.metrics import rel_l2  # noqa: E402
from support import machine_summary  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "dit_speed.json"
SECTION = "## DiT forward speed at 1024x1024"
B, N, L, DIM, HEADS, HEAD_DIM, FF = 2, 4096, 300, 1152, 16, 72, 4608


def best_of(fn, n: int = 2) -> float:
    fn()
    best = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def op_table(rows: int) -> list[dict]:
    """Per op kind of one block: calls per block, and the seconds of one call in torch, MindSpore plain, fast."""
    import mindspore as ms
    import torch

    from mindspore_nets.layers import GELUTanh, LayerNorm, Linear, attention, fast_kernels, query_blocks

    rng = np.random.default_rng(0)

    def arr(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    x, hidden, q, ctx = arr(B, N, DIM), arr(B, N, FF), arr(B, HEADS, N, HEAD_DIM), arr(B, HEADS, L, HEAD_DIM)
    tx, th, tq, tc = (torch.from_numpy(a) for a in (x, hidden, q, ctx))
    mx, mh, mq, mc = (ms.Tensor(a) for a in (x, hidden, q, ctx))
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def linear(i, o, t_in, m_in):
        """(calls' torch function, Cell factory, input) of one Linear with the same weights on both sides."""
        weight = arr(o, i) * 0.02
        module = torch.nn.Linear(i, o)
        module.weight.data = torch.from_numpy(weight)

        def make():
            cell = Linear(i, o)
            cell.weight.set_data(ms.Tensor(weight))
            return cell

        return (lambda: module(t_in)), make, m_in

    same = {  # op: (calls per block, torch, MindSpore): no fast variant
        "self-attention core, 4096 x 4096 keys": (1, lambda: sdpa(tq, tq, tq),
                                                  lambda: attention(mq, mq, mq, None, HEAD_DIM ** -0.5).asnumpy()),
        "cross-attention core, 4096 x 300 keys": (1, lambda: sdpa(tq, tc, tc),
                                                  lambda: attention(mq, mc, mc, None, HEAD_DIM ** -0.5).asnumpy()),
        "elementwise a * s + b, 2 x 4096 x 1152 (modulate, gate, residual; about)": (
            8, lambda: tx * 1.5 + tx, lambda: (mx * 1.5 + mx).asnumpy()),
    }
    switched = {  # op: (calls per block, torch, Cell factory, input): the fast variant is built under fast_kernels
        "linear 1152->1152, 4096 tokens (q, k, v, out; cross q, out)": (6, *linear(DIM, DIM, tx, mx)),
        "linear 1152->4608 (feed-forward in)": (1, *linear(DIM, FF, tx, mx)),
        "linear 4608->1152 (feed-forward out)": (1, *linear(FF, DIM, th, mh)),
        "LayerNorm, no affine": (2, lambda: torch.nn.functional.layer_norm(tx, (DIM,), eps=1e-6),
                                 lambda: LayerNorm(DIM, 1e-6, affine=False), mx),
        "GELU tanh, 2 x 4096 x 4608": (1, lambda: torch.nn.functional.gelu(th, approximate="tanh"), GELUTanh, mh),
    }
    table = []
    with torch.no_grad(), query_blocks(rows):
        for name, (calls, t_fn, m_fn) in same.items():
            seconds = best_of(m_fn)
            table.append({"op": name, "calls": calls, "torch_s": best_of(t_fn), "plain_s": seconds,
                          "fast_s": seconds})
        for name, (calls, t_fn, make, arg) in switched.items():
            plain = make()
            with fast_kernels():
                fast = make()
            table.append({"op": name, "calls": calls, "torch_s": best_of(t_fn),
                          "plain_s": best_of(lambda: plain(arg).asnumpy()),
                          "fast_s": best_of(lambda: fast(arg).asnumpy())})
    return table


def forward_runs(layers: int, rows: int) -> dict:
    import mindspore as ms
    import torch
    from diffusers import PixArtTransformer2DModel

    from mindspore_nets.config import PixArtConfig
    from mindspore_nets.layers import fast_kernels, query_blocks
    from mindspore_nets.loading import load_into
    from mindspore_nets.pixart import PixArtTransformer2D

    torch.manual_seed(0)
    ref = PixArtTransformer2DModel(sample_size=128, interpolation_scale=2, caption_channels=4096,
                                   use_additional_conditions=False, num_layers=layers).eval()
    state = {k: v.numpy() for k, v in ref.state_dict().items()}
    rng = np.random.default_rng(1)
    latent = rng.standard_normal((B, 4, 128, 128)).astype(np.float32)
    caption = rng.standard_normal((B, L, 4096)).astype(np.float32)
    mask = np.ones((B, L), np.int64)
    mask[1, 120:] = 0
    t = np.array([999.0, 500.0], np.float32)

    def torch_run(dtype=torch.float32):
        with torch.no_grad():
            return ref.to(dtype)(torch.from_numpy(latent).to(dtype), encoder_hidden_states=torch.from_numpy(
                caption).to(dtype), timestep=torch.from_numpy(t), encoder_attention_mask=torch.from_numpy(mask),
                return_dict=False)[0].float().numpy()

    ref64 = torch_run(torch.float64)
    ref.float()
    t0 = time.perf_counter()
    ref32 = torch_run()
    torch_s = [time.perf_counter() - t0]
    out = {"layers": layers, "rows": rows, "torch_fp32_vs_fp64": rel_l2(ref32, ref64), "runs": {}}
    for kernels in ("plain", "fast"):
        with fast_kernels(kernels == "fast"):
            net = PixArtTransformer2D(PixArtConfig.from_dict(dict(ref.config)))
        load_into(net, state)
        net.set_train(False)
        ms.set_context(mode=ms.PYNATIVE_MODE)
        args = (ms.Tensor(latent), ms.Tensor(t), ms.Tensor(caption), ms.Tensor(mask.astype(np.float32)))
        with query_blocks(rows):
            t0 = time.perf_counter()
            y = net(*args).asnumpy()
            first = time.perf_counter() - t0  # PYNATIVE builds each op's kernel on its first call
            t0 = time.perf_counter()
            torch_run()  # torch timed between the MindSpore runs: both see the same machine load
            torch_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            net(*args).asnumpy()
            seconds = time.perf_counter() - t0
        out["runs"][kernels] = {"seconds": seconds, "first_s": first, "vs_torch_fp32": rel_l2(y, ref32),
                                "vs_fp64": rel_l2(y, ref64)}
        print(kernels, out["runs"][kernels], flush=True)
        del net
        gc.collect()
    out["torch_s"] = min(torch_s)
    for run in out["runs"].values():
        run["ratio"] = run["seconds"] / out["torch_s"]
    return out


GEMM_NOTE = ("MindSpore's CPU MatMul runs at torch's speed when PYNATIVE launches synchronously: on the feed-forward's"
             ' product (8192 x 1152 @ 1152 x 4608, 27 Nov 2026, quiet host) ops.MatMul took 0.49-0.51 s synchronous, '
             '0.77-0.84 s with the default asynchronous pipeline (its queue threads spin on the 2 cores), torch '
             '0.51-0.57 s. Parity, export and these benchmarks launch synchronously (`layers.synchronous_launch`). '
             'The op table times attention on contiguous heads; in a block the heads are strided views of the '
             'projections, and each query slice copied k and v again until attention made one copy up front '
             '(c965143, 28 Nov 2026): the fast one-block forward went from 1.99x to 1.49x torch.')


def render(results: dict) -> str:
    m, f = results["machine"], results["forward"]
    lines = [SECTION, "", f"Machine: {machine_summary(m)}; {results['date']}. PYNATIVE MindSpore, attention in {f['rows']}-row query "
             "slices; torch: diffusers' PixArtTransformer2DModel (fused CPU scaled_dot_product_attention).", "",
             f"Whole forward, {f['layers']} full-width block(s) with the embedding and final layer, 1024x1024, batch 2,"
             f" 300 caption tokens (torch fp32 vs float64: {f['torch_fp32_vs_fp64']:.2e}):", "",
             "| kernels | MindSpore s (first call) | torch s | MS / torch | rel L2 vs torch fp32 | vs float64 |",
             "|---|---|---|---|---|---|"]
    for name, r in f["runs"].items():
        lines.append(f"| {name} | {r['seconds']:.1f} ({r['first_s']:.1f}) | {f['torch_s']:.1f} | {r['ratio']:.2f} | "
                     f"{r['vs_torch_fp32']:.2e} | {r['vs_fp64']:.2e} |")
    lines += ["", "MS / torch uses the second MindSpore call (the first builds every op's kernel).", "",
              "Where one block's time goes (best of 2 per call; share = calls x time / the sum over ops):", "",
              "| op | calls / block | torch s | MS plain s | MS fast s | MS fast / torch | share of MS fast block |",
              "|---|---|---|---|---|---|---|"]
    total = sum(r["calls"] * r["fast_s"] for r in results["ops"])
    for r in results["ops"]:
        lines.append(f"| {r['op']} | {r['calls']} | {r['torch_s']:.3f} | {r['plain_s']:.3f} | {r['fast_s']:.3f} | "
                     f"{r['fast_s'] / r['torch_s']:.1f} | {100 * r['calls'] * r['fast_s'] / total:.0f}% |")
    lines += ["", GEMM_NOTE, "", "Reproduce: `python benchmarks/bench_dit_speed.py` (writes this section).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--rows", type=int, default=256)
    args = parser.parse_args()
    import mindspore as ms

    from mindspore_nets.layers import synchronous_launch

    ms.set_context(mode=ms.PYNATIVE_MODE)
    synchronous_launch()  # as parity and export run PYNATIVE
    results = {"date": time.strftime("%Y-%m-%d"), "machine": machine(REPO, False),
               "forward": forward_runs(args.layers, args.rows), "ops": op_table(args.rows)}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1, default=float) + "\n")
    write_section(render(results), SECTION)
    print(render(results))


if __name__ == "__main__":
    main()
