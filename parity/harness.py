"""Layer-by-layer parity of converted components against their torch references.

For each component: the torch reference is rebuilt from the source weights (``converters.references``), the
MindSpore network is loaded from the converted folder, both run the same seeded cases with every tap recorded,
and each tap gets the metrics of ``mindspore_nets.metrics.compare``. The first tap (in depth order) whose worst
relative L2 over the cases exceeds the tolerance is named as the first divergence.
"""
from __future__ import annotations

import time
from pathlib import Path

from mindspore_nets.metrics import TOLERANCES, compare
from pixart_core import registry
from pixart_core.errors import UsageError
from pixart_core.heap import map_large_buffers, release_freed_memory
from pixart_core.manifests import MANIFEST, read_manifest, stored_dtype

QUERY_ROWS = 512  # attention query rows per step: the XL/2 4096-token score tensor (2 GiB fp32) in 8 slices

# torch, MindSpore and the networks are imported by the functions that run them: the CLI checks its arguments
# with ``components_of`` and ``tolerance_dtypes`` first


def components_of(out: Path, requested=None) -> dict[str, Path]:
    """View -> converted folder, for a pipeline folder or a single component folder."""
    out = Path(out)
    if (out / "model_index.json").is_file():
        found = {v.name: out / v.component for v in registry.VIEWS.values()
                 if (out / v.component / MANIFEST).is_file()}
    else:
        kind = read_manifest(out, "converted")["component"]
        found = {v.name: out for v in registry.VIEWS.values() if v.component == kind}
    if requested:
        unknown = [c for c in requested if c not in found]
        if unknown:
            raise UsageError(f"{out}: no {', '.join(unknown)} here (available: {', '.join(found)})")
        found = {c: found[c] for c in requested}
    return found


def source_of(src: Path, view: str) -> Path:
    src = Path(src)
    return src / registry.view(view).component if (src / "model_index.json").is_file() else src


def summarize(taps: list[dict], tolerance: float) -> list[dict]:
    """One row per tap over all cases: the worst case's metrics; taps keep their depth order."""
    rows: dict[str, dict] = {}
    for rec in taps:
        row = rows.get(rec["tap"])
        if row is None or rec["rel_l2"] > row["rel_l2"]:
            rows[rec["tap"]] = {**rec, "worst_case": rec["case"]}
    out = []
    for row in rows.values():
        row = dict(row)
        row.pop("case", None)
        row["ok"] = row["rel_l2"] <= tolerance and not row.get("error") and not row["nan"] and not row["inf"]
        out.append(row)
    return out


def tolerance_dtypes(found: dict[str, Path], dtype: str) -> tuple[dict[str, str], list[str]]:
    """(view -> the dtype whose default tolerance applies, notes) when the user gave no tolerance: the compute
    dtype, or the stored weights' dtype when it is coarser (fp16 weights computed in fp32 carry fp16 rounding)."""
    chosen_by_view, notes = {}, []
    for view, folder in found.items():
        stored = stored_dtype(read_manifest(folder, "converted"))
        chosen = chosen_by_view[view] = max((dtype, stored), key=TOLERANCES.get)
        if chosen != dtype:
            line = (f"{folder} stores {stored} weights (manifest): {registry.view(view).component} compared at the "
                    f"{stored} tolerance {TOLERANCES[stored]:g}")
            if line not in notes:
                notes.append(line)
    return chosen_by_view, notes


def run_component(component: str, folder: Path, source: Path, dtype: str, tolerance: float, reference=None,
                  network=None, **case_options) -> dict:
    from converters.keymaps import spec_for
    from converters.references import load_reference, torch_forward
    from mindspore_nets.loading import load_network

    from .cases import build_cases, ms_forward
    from .taps import SpilledTaps, mindspore_taps, tap_paths, tied_modules, torch_taps

    started = time.time()
    manifest = read_manifest(folder, "converted")
    config = manifest["config"]
    model = reference if reference is not None else load_reference(folder, source)
    net = network if network is not None else load_network(component, folder, dtype)
    loaded = time.time()
    paths = tap_paths(component, [p for p, _ in net.cells_and_names()])
    tied = tied_modules(spec_for(manifest["layout"]))
    taps, seconds = [], {"torch": 0.0, "mindspore": 0.0}
    cases = build_cases(component, config, **case_options)
    for case in cases:
        with SpilledTaps() as reference:
            t0 = time.time()
            with torch_taps(model, paths, tied, consume=reference.add) as t_rec:
                t_rec.add("output", torch_forward(component, model, case.arrays))
            del t_rec
            release_freed_memory()  # torch's activations go back to the OS before MindSpore's pool grows
            order = list(reference.files)
            found: dict[str, dict] = {}

            def measure(key, ours):
                ref = reference.pop(key)
                found[key] = (compare(ours, ref) if ref is not None else
                              {"error": "only on the MindSpore side", "shape": list(ours.shape),
                               "rel_l2": float("inf"), "nan": 0, "inf": 0})

            t1 = time.time()
            with mindspore_taps(net, paths, consume=measure) as m_rec:
                m_rec.add("output", ms_forward(component, net, case.arrays))
            t2 = time.time()
            seconds["torch"] += t1 - t0
            seconds["mindspore"] += t2 - t1
            for key, (_, shape) in reference.files.items():  # taps the MindSpore side never produced
                found[key] = {"error": "only on the torch side", "shape": list(shape), "rel_l2": float("inf"),
                              "nan": 0, "inf": 0}
        for key in order + [k for k in found if k not in order]:
            taps.append({"tap": key, "case": case.name, **found[key]})
    summary = summarize(taps, tolerance)
    first = next((row["tap"] for row in summary if not row["ok"]), None)
    seconds["load"] = loaded - started
    seconds["total"] = time.time() - started
    return {"folder": str(folder), "source": str(source), "dtype": dtype, "tolerance": tolerance, "mode": "whole",
            "cases": [c.name for c in cases], "taps": taps, "summary": summary, "first_failure": first,
            "ok": first is None, "local": [],
            "seconds": {k: round(v, 3) for k, v in seconds.items()}}


def run_parity(src, out, components=None, dtype: str = "fp32", tolerance: float | None = None, whole: bool = False,
               query_rows: int | None = QUERY_ROWS, **case_options) -> dict:
    """Parity of every requested component of ``out`` (converted from ``src``). ``tolerance`` None: each
    component's default (``tolerance_dtypes``), listed in the report's ``notes``. Streamed block by block
    (``parity.streamed``) unless ``whole`` or the view has no stage description (the VAE); attention in slices of
    ``query_rows`` query rows (the same numbers, a smaller peak). The MindSpore networks are built with the fast CPU
    kernels (``layers.fast_kernels``: im2col convolutions, two-level group-norm sums, fused LayerNorm, sigmoid-form
    GELU), as close to float64 as the plain ones and several times faster (benchmarks/bench_vae_speed.py)."""
    import contextlib

    from mindspore_nets.layers import fast_kernels, query_blocks, synchronous_launch

    from .cases import build_cases
    from .stages import stages_of
    from .streamed import run_streamed

    import mindspore as ms

    from converters.references import load_reference
    from mindspore_nets.loading import load_network

    ms.set_context(mode=ms.PYNATIVE_MODE)  # hooks see every cell call only in PYNATIVE mode
    synchronous_launch()
    map_large_buffers()  # every large tensor back to the OS when freed: one side's forward, then the other's
    found = components_of(out, components)
    if tolerance is None:
        chosen, notes = tolerance_dtypes(found, dtype)
        tolerances = {view: TOLERANCES[d] for view, d in chosen.items()}
    else:
        tolerances, notes = {view: tolerance for view in found}, []
    results, shared = {}, {}
    rows = contextlib.nullcontext if query_rows is None else (lambda: query_blocks(query_rows))
    for component, folder in found.items():
        if not whole and stages_of(component) is not None:
            shared.clear()
            cases = build_cases(component, read_manifest(folder, "converted")["config"], **case_options)
            with fast_kernels():
                results[component] = run_streamed(component, folder, source_of(src, component), dtype,
                                                  tolerances[component], cases, query_rows=query_rows)
            continue
        # the VAE encoder and decoder share one reference and one network
        key = (str(folder), registry.view(component).component)
        if key not in shared:
            shared.clear()
            with fast_kernels():
                network = load_network(component, folder, dtype)
            shared[key] = (load_reference(folder, source_of(src, component)), network)
        reference, network = shared[key]
        with rows():
            results[component] = run_component(component, folder, source_of(src, component), dtype,
                                               tolerances[component], reference, network, **case_options)
    return {"source": str(src), "output": str(out), "dtype": dtype,
            "tolerance": max(tolerances.values(), default=TOLERANCES[dtype]), "notes": notes,
            "components": results, "ok": all(r["ok"] for r in results.values())}
