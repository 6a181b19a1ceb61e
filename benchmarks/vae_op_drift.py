"""Which op type drives the MindSpore SDXL-VAE decoder's extra drift from a float64 torch decode?

Full-size SDXL VAE (benchmarks/bench_vae_speed.py's SDXL config and latent, diffusers' random init, seed 0),
8x8 latent -> 64x64 pixels.

1. torch float64 decode with forward hooks on every Conv2d, GroupNorm, SiLU, Linear, the mid-block Attention and
   the Upsample2D modules of post_quant_conv + decoder: each call's input and output in float64.
2. Local (per-op) drift: each captured float64 input, cast to float32, goes through (a) the same torch module in
   fp32, (b) the MindSpore sub-Cell of the same dotted name built with the plain ops, (c) the one built under
   ``layers.fast_kernels()``; rel L2 against the float64 output. Also the floor: the float64 module on the
   fp32-rounded input (what an exact op would give from an fp32 input), and the fp32 rounding of the output itself.
3. Attribution (error injection): the float64 torch decode re-run with the outputs of ONE op type replaced by an
   fp32 implementation (torch fp32 / MS plain / MS fast) of that op on the fp32-cast input; the end-to-end rel L2
   vs the clean float64 decode is the drift that op type alone causes, with every other op exact.
4. End-to-end: torch fp32, MS plain, MS fast decodes of the same latent vs float64.

    python benchmarks/vae_op_drift.py   (writes benchmarks/results/vae_op_drift.md; about 6 min, 4 GiB)
"""
from __future__ import annotations

import copy
import gc
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("GLOG_v", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench_vae_speed import SDXL, latent_input, ms_vae  # noqa: E402  (the benchmark's config, latent, network)
from mindspore_nets.metrics import rel_l2  # noqa: E402

OUT_MD = REPO / "benchmarks" / "results" / "vae_op_drift.md"
LATENT = 8
T0 = time.perf_counter()


def log(*a):
    print(f"[{time.perf_counter() - T0:7.1f}s]", *a, flush=True)


# ---------------------------------------------------------------- torch side
from diffusers import AutoencoderKL as TorchVAE  # noqa: E402
from diffusers.models.attention_processor import Attention  # noqa: E402
from diffusers.models.upsampling import Upsample2D  # noqa: E402

torch.manual_seed(0)
t32 = TorchVAE(**SDXL).eval()
t64 = copy.deepcopy(t32).double()
state = {k: v.numpy().copy() for k, v in t32.state_dict().items()}
config = dict(t32.config)
z = latent_input(LATENT)


def op_type(mod) -> str | None:
    if isinstance(mod, torch.nn.Conv2d):
        return f"conv{mod.kernel_size[0]}x{mod.kernel_size[1]}"
    if isinstance(mod, torch.nn.GroupNorm):
        return "groupnorm"
    if isinstance(mod, torch.nn.SiLU):
        return "silu"
    if isinstance(mod, torch.nn.Linear):
        return "linear (attn q/k/v/out)"
    if isinstance(mod, Attention):
        return "attention (whole mid-block attn)"
    if isinstance(mod, Upsample2D):
        return "upsample (nearest x2 only)"
    return None


def modules_of_interest(model):
    return [(n, m, op_type(m)) for n, m in model.named_modules()
            if (n.startswith("decoder.") or n == "post_quant_conv") and op_type(m)]


def first_arg(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


# 1. capture pass (float64)
captured = []  # (key, name, type, x64, y64)
calls = defaultdict(int)


def capture_hook(name, kind):
    def hook(mod, args, kwargs, out):
        x = first_arg(args, kwargs).detach().numpy().copy()
        i = calls[name]
        calls[name] += 1
        if kind == "upsample (nearest x2 only)":  # the interpolation alone (the conv inside is hooked as a conv)
            y = F.interpolate(torch.from_numpy(x), scale_factor=2.0, mode="nearest").numpy()
        else:
            y = out.detach().numpy().copy()
        captured.append((f"{name}#{i}" if kind == "silu" else name, name, kind, x, y))
    return hook


handles = [m.register_forward_hook(capture_hook(n, k), with_kwargs=True) for n, m, k in modules_of_interest(t64)]
with torch.no_grad():
    t = time.perf_counter()
    ref64 = t64.decode(torch.from_numpy(z).double()).sample.numpy()
    log(f"torch fp64 decode + capture: {time.perf_counter() - t:.1f}s, {len(captured)} calls")
for h in handles:
    h.remove()
with torch.no_grad():
    t = time.perf_counter()
    ref32 = t32.decode(torch.from_numpy(z)).sample.numpy()
    torch32_s = time.perf_counter() - t
e2e = {"torch fp32": rel_l2(ref32, ref64)}
log("torch fp32 e2e", e2e)

# ---------------------------------------------------------------- MindSpore side
import mindspore as ms  # noqa: E402
from mindspore import ops  # noqa: E402

from mindspore_nets.layers import query_blocks  # noqa: E402
from mindspore_nets.vae import upsample_nearest2x  # noqa: E402
from parity.harness import QUERY_ROWS  # noqa: E402

ms.set_context(mode=ms.PYNATIVE_MODE)


nets = {"plain": ms_vae(config, state, False), "fast": ms_vae(config, state, True)}
cells = {k: dict(net.cells_and_names()) for k, net in nets.items()}
t32_mods = dict(t32.named_modules())
t64_mods = dict(t64.named_modules())


def impl(which: str, name: str, kind: str):
    """fp32 implementation of one op: numpy fp32 in -> numpy out."""
    if which == "torch":
        if kind == "upsample (nearest x2 only)":
            return lambda x: F.interpolate(torch.from_numpy(x), scale_factor=2.0, mode="nearest").numpy()
        mod = t32_mods[name]
        return lambda x: mod(torch.from_numpy(x)).numpy()
    if kind == "silu":
        return lambda x: ops.silu(ms.Tensor(x)).asnumpy()
    if kind == "upsample (nearest x2 only)":
        return lambda x: upsample_nearest2x(ms.Tensor(x)).asnumpy()
    cell = cells[which][name]
    return lambda x: cell(ms.Tensor(x)).asnumpy()


def fast_differs(kind: str) -> bool:
    # fast_kernels changes Conv2d (im2col), GroupNorm (two-level sums), Linear (MatMul transpose_b) and the
    # attention (through its GroupNorm and Linears); SiLU and the nearest upsample are the same ops in both
    return kind not in ("silu", "upsample (nearest x2 only)")


# 2. local per-op drift
rows = []
t = time.perf_counter()
timing = defaultdict(float)
with torch.no_grad():
    for key, name, kind, x64, y64 in captured:
        x32 = np.ascontiguousarray(x64, dtype=np.float32)
        r = {"key": key, "type": kind, "shape": tuple(x64.shape)}
        r["out_round"] = rel_l2(y64.astype(np.float32), y64)
        if kind == "upsample (nearest x2 only)":
            floor = F.interpolate(torch.from_numpy(x32.astype(np.float64)), scale_factor=2.0, mode="nearest")
        else:
            floor = t64_mods[name](torch.from_numpy(x32.astype(np.float64)))
        r["floor"] = rel_l2(floor.numpy(), y64)
        for which in ("torch", "plain", "fast"):
            if which == "fast" and not fast_differs(kind):
                r[which] = r["plain"]
                continue
            s = time.perf_counter()
            r[which] = rel_l2(impl(which, name, kind)(x32), y64)
            timing[(which, kind)] += time.perf_counter() - s
        rows.append(r)
log(f"per-op pass: {time.perf_counter() - t:.1f}s")

# 3. attribution by error injection into the float64 decode
INJECT = {  # group -> op types replaced
    "conv3x3": {"conv3x3"},
    "conv1x1": {"conv1x1"},
    "groupnorm": {"groupnorm"},
    "silu": {"silu"},
    "attention (whole, incl. its GroupNorm)": {"attention (whole mid-block attn)"},
    "upsample (nearest x2 only)": {"upsample (nearest x2 only)"},
    "all of the above": {"conv3x3", "conv1x1", "groupnorm", "silu", "attention (whole mid-block attn)"},
}


def as_c(x, dtype):
    """C-contiguous numpy copy. Not ``.astype``: its order "K" keeps the NHWC-like strides of the attention's
    output, and torch's fp32 GroupNorm/conv then switch to their channels-last kernels for the rest of the decode
    (a different, less accurate path than the fp32 network's own: 6.4e-6 instead of 1.5e-6 end to end)."""
    x = x.numpy() if isinstance(x, torch.Tensor) else x
    return np.ascontiguousarray(x, dtype=dtype)


def inject(which: str, kinds: set) -> float:
    def hook_for(name, kind):
        if kind == "upsample (nearest x2 only)":
            # replace the Upsample2D's input by a round trip through the fp32 interpolation (then un-repeat):
            # its output in fp64 is exactly the repeated input, so the injected error is the fp32 version's
            fn = impl(which, name, kind)

            def pre(mod, args, kwargs):
                x = first_arg(args, kwargs)
                y = fn(as_c(x, np.float32))[:, :, ::2, ::2]
                return (torch.from_numpy(as_c(y, np.float64)),) + tuple(args[1:]), kwargs
            return "pre", pre
        fn = impl(which, name, kind)

        def post(mod, args, kwargs, out):
            return torch.from_numpy(as_c(fn(as_c(first_arg(args, kwargs), np.float32)), np.float64))
        return "post", post

    hs = []
    for n, m, k in modules_of_interest(t64):
        if k in kinds:
            where, h = hook_for(n, k)
            hs.append(m.register_forward_pre_hook(h, with_kwargs=True) if where == "pre"
                      else m.register_forward_hook(h, with_kwargs=True))
    try:
        with torch.no_grad():
            y = t64.decode(torch.from_numpy(z).double()).sample.numpy()
    finally:
        for h in hs:
            h.remove()
    return rel_l2(y, ref64)


attrib = {}
for group, kinds in INJECT.items():
    for which in ("torch", "plain", "fast"):
        if which == "fast" and not any(fast_differs(k) for k in kinds):
            attrib[(group, which)] = attrib[(group, "plain")]
            continue
        s = time.perf_counter()
        attrib[(group, which)] = inject(which, kinds)
        log(f"inject {group:42s} {which:6s} {attrib[(group, which)]:.3e}  ({time.perf_counter() - s:.1f}s)")
        gc.collect()

# 4. end-to-end MindSpore decodes (as bench_vae_speed does)
e2e_s = {"torch fp32": torch32_s}
for which in ("plain", "fast"):
    cell = nets[which].decoder_cell()
    s = time.perf_counter()
    with query_blocks(QUERY_ROWS):
        y = cell(ms.Tensor(z)).asnumpy()
    e2e_s[f"MS {which}"] = time.perf_counter() - s
    e2e[f"MS {which}"] = rel_l2(y, ref64)
    log(f"MS {which} e2e {e2e[f'MS {which}']:.3e} ({e2e_s[f'MS {which}']:.1f}s)")
total_s = time.perf_counter() - T0


# ---------------------------------------------------------------- report
def med(v):
    return float(np.median(v))


ORDER = ["conv3x3", "conv1x1", "groupnorm", "silu", "attention (whole mid-block attn)", "linear (attn q/k/v/out)",
         "upsample (nearest x2 only)"]
by_type = defaultdict(list)
for r in rows:
    by_type[r["type"]].append(r)

L = ["# Which op type drives the MindSpore SDXL-VAE decoder's drift from float64?", "",
     f"Full-size SDXL VAE (`benchmarks/bench_vae_speed.py` SDXL config, diffusers' random init, seed 0), "
     f"latent 1x4x{LATENT}x{LATENT} (`latent_input({LATENT})`, the benchmark's) -> {LATENT * 8}x{LATENT * 8} pixels. "
     "MindSpore 2.10 CPU, PYNATIVE; `plain` = the ops exported graphs use, `fast` = built under "
     "`layers.fast_kernels()`. All rel L2 are against the float64 torch computation.", "",
     "## End-to-end decode (rel L2 vs float64 decode)", "",
     "| decode | rel L2 vs fp64 | time s |", "|---|---|---|"]
for k, v in e2e.items():
    L.append(f"| {k} | {v:.3e} | {e2e_s[k]:.1f} |")
L += ["", "## Local per-op drift (each op fed the float64 run's input, cast to fp32)", "",
      "`floor`: the float64 op on the fp32-rounded input (the error an exact op cannot avoid); `out rnd`: the fp32 "
      "rounding of the float64 output. Ratio = MS median / torch fp32 median. Fast = plain where "
      "`fast_kernels()` does not change the op (SiLU, nearest upsample).", "",
      "| op type | n | floor med | out rnd med | torch fp32 med / max | MS plain med / max | MS fast med / max | "
      "plain/torch | fast/torch |", "|---|---|---|---|---|---|---|---|---|"]
for kind in ORDER:
    rs = by_type.get(kind, [])
    if not rs:
        continue
    col = {w: [r[w] for r in rs] for w in ("torch", "plain", "fast", "floor", "out_round")}
    L.append(f"| {kind} | {len(rs)} | {med(col['floor']):.2e} | {med(col['out_round']):.2e} | "
             f"{med(col['torch']):.2e} / {max(col['torch']):.2e} | {med(col['plain']):.2e} / {max(col['plain']):.2e} | "
             f"{med(col['fast']):.2e} / {max(col['fast']):.2e} | {med(col['plain']) / med(col['torch']):.2f} | "
             f"{med(col['fast']) / med(col['torch']):.2f} |")
L += ["", "3x3 convolutions by input channels (reduction length Cin x 9): median local rel L2 vs fp64.", "",
      "| Cin | n | torch fp32 | MS plain | MS fast | plain/torch | fast/torch |", "|---|---|---|---|---|---|---|"]
by_cin = defaultdict(list)
for r in by_type["conv3x3"]:
    by_cin[r["shape"][1]].append(r)
for cin in sorted(by_cin):
    m = {w: med([r[w] for r in by_cin[cin]]) for w in ("torch", "plain", "fast")}
    L.append(f"| {cin} | {len(by_cin[cin])} | {m['torch']:.2e} | {m['plain']:.2e} | {m['fast']:.2e} | "
             f"{m['plain'] / m['torch']:.2f} | {m['fast'] / m['torch']:.2f} |")
L += ["", "## Attribution: float64 decode with ONE op type replaced by an fp32 implementation", "",
      "Every call of that op type computes in fp32 (its float64 input cast to fp32, output cast back), every other op "
      "stays float64; end-to-end rel L2 vs the clean float64 decode. Check of the method: 'all of the above' with "
      "torch fp32 should give about the torch fp32 decode's own drift, with MS about the MS decodes' drift.", "",
      "| op type(s) injected | torch fp32 | MS plain | MS fast | plain/torch | fast/torch |",
      "|---|---|---|---|---|---|"]
for group in INJECT:
    a, p, f = (attrib[(group, w)] for w in ("torch", "plain", "fast"))
    ratio = (lambda x: f"{x / a:.2f}") if a else (lambda x: "-")
    L.append(f"| {group} | {a:.3e} | {p:.3e} | {f:.3e} | {ratio(p)} | {ratio(f)} |")
L += ["", "## Per-op detail (local drift)", "",
      "| op | input shape | floor | torch fp32 | MS plain | MS fast |", "|---|---|---|---|---|---|"]
for r in rows:
    L.append(f"| `{r['key']}` | {'x'.join(map(str, r['shape']))} | {r['floor']:.2e} | {r['torch']:.2e} | "
             f"{r['plain']:.2e} | {r['fast']:.2e} |")
L += ["", "## Run time", "",
      f"Total {total_s:.0f} s (2-core host shared with other jobs). Per-op pass time by implementation and type: " +
      ", ".join(f"{w}/{k.split(' ')[0]} {v:.1f}s" for (w, k), v in sorted(timing.items()) if v > 0.5) + ".", "",
      "Reproduce: `python benchmarks/vae_op_drift.py`", ""]
# a hand-written "## Conclusion" section of an earlier run is kept (placed after the title)
kept = ""
if OUT_MD.is_file() and "## Conclusion" in OUT_MD.read_text():
    kept = OUT_MD.read_text().split("## Conclusion", 1)[1].split("\n## ", 1)[0]
    L[1:1] = ["", "## Conclusion" + kept.rstrip()]
OUT_MD.write_text("\n".join(L))
print("\n".join(L))
