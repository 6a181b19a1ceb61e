"""``pixart-ms validate EXPORT_DIR``: each shipped graph re-run on its golden inputs and compared with its golden
output (the eager network's, stored by ``export``), wherever it fits the memory budget.

The budget is the export's memory rule (1.3 x the largest graph's weights + 1 GiB, in the manifest) unless given;
a graph whose estimated reload-and-run cost (``budget.graph_run_bytes``) exceeds it is skipped and named with the
reason. With MindSpore Lite (``--backend lite``, on the Ascend host) this checks the deployed artifact itself; with
``mindspore`` it reloads the graph as a ``GraphCell`` (``reload``: weights + largest parameter).

Exit codes: 0 every graph that ran matched; 1 a graph differs, or a file of the export is missing or damaged (the
manifest's size and sha256); 2 not an export folder, no golden pairs, a backend that is not available here.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pixart_core.errors import CheckFailed, SourceError, UsageError
from pixart_core.manifests import file_problems, read_manifest
from pixart_core.registry import TensorSpec

from . import budget, golden


@dataclass
class GraphCheck:
    name: str  # component/stem
    status: str  # "ok" | "failed" | "skipped"
    detail: str
    record: dict

    def line(self) -> str:
        return f"{self.status} {self.name}: {self.detail}"


def graphs_of(manifest: dict):
    for component, entry in manifest["components"].items():
        for graph in entry["graphs"]:
            if "file" in graph:  # a MindIR graph
                yield component, entry, graph


def validate_export(export_dir, backend: str = "auto", budget_bytes: int | None = None, log=None) -> list[GraphCheck]:
    """Every MindIR graph of an export on its golden pair; raises CheckFailed when one differs."""
    from .runtime import BackendError, resolve_backend

    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir, "export")
    graphs = list(graphs_of(manifest))
    if not graphs:
        raise SourceError(f"{export_dir}: the export has no MindIR graphs")
    if not any(g.get("golden") or g.get("golden_skipped") for _, _, g in graphs):
        raise SourceError(f"{export_dir}: no golden pairs (exported before pixart-ms stored them); re-export")
    try:
        backend = resolve_backend(backend)
    except BackendError as exc:
        raise UsageError(str(exc)) from None
    strict = budget_bytes is not None  # a budget given by the user binds even tiny graphs
    if budget_bytes is None:
        budget_bytes = manifest.get("memory", {}).get("budget_bytes") or budget.budget(
            max(g.get("memory", {}).get("weights_bytes", 0) for _, _, g in graphs))
    checks = []
    for component, entry, graph in graphs:
        check = check_graph(export_dir, manifest, component, entry, graph, backend, budget_bytes, strict)
        checks.append(check)
        if log is not None:
            log(check.line())
    failed = [c for c in checks if c.status == "failed"]
    if failed:
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise CheckFailed(f"{failed[0].name}: {failed[0].detail}{more}")
    return checks


def check_graph(export_dir: Path, manifest: dict, component: str, entry: dict, graph: dict, backend: str,
                budget_bytes: int, strict: bool = False) -> GraphCheck:
    name = f"{component}/{graph['stem']}"
    spec = graph.get("golden")
    if not spec:
        why = graph.get("golden_skipped")
        return GraphCheck(name, "skipped", f"no golden pair: {why}" if why else "no golden pair", {})
    files = [*graph.get("files", [graph["file"]]), spec["file"]]
    problems = file_problems(export_dir, manifest.get("files", {}),
                             [f for f in files if f in manifest.get("files", {})])
    missing = [f for f in files if not (export_dir / f).is_file()]
    if missing or problems:
        return GraphCheck(name, "failed", problems[0] if problems else f"{export_dir / missing[0]}: missing", {})
    inputs = [TensorSpec(t["name"], tuple(t["shape"]), t["dtype"]) for t in spec["inputs"]]
    config = json.loads((export_dir / component / "config.json").read_text())
    memory = graph.get("memory", {})
    weights = memory.get("weights_bytes") or sum((export_dir / f).stat().st_size for f in graph.get("files", []))
    estimate = budget.graph_run_bytes(component, config, inputs, weights, 0, entry["dtype"])
    here = budget.rss()
    if (here + estimate > budget_bytes) if strict else not budget.fits(here, estimate, budget_bytes):
        return GraphCheck(name, "skipped", f"reloading and running it needs about {budget.gib(estimate)} "
                          f"(+{budget.gib(here)} resident) > the budget {budget.gib(budget_bytes)}; validated by the "
                          f"export as: {graph.get('validation_mode', '?')}",
                          {"estimate_bytes": estimate, "budget_bytes": budget_bytes})
    try:
        arrays, expected = golden.load(export_dir / spec["file"], [t.name for t in inputs])
    except (KeyError, ValueError, OSError) as exc:
        return GraphCheck(name, "failed", f"{export_dir / spec['file']}: unreadable golden pair ({exc})", {})
    output = run_graph(export_dir / graph["file"], backend, arrays, entry["dtype"] == "fp16")
    from .validate import against

    metrics = against(output.astype("float32"), expected.astype("float32"), spec["tolerance"])
    record = {"rel_l2": metrics["rel_l2"], "tolerance": spec["tolerance"], "backend": backend,
              "shape": list(output.shape)}
    if tuple(output.shape) != tuple(expected.shape):
        return GraphCheck(name, "failed", f"output shape {list(output.shape)} != golden {list(expected.shape)}", record)
    status = "ok" if metrics["ok"] else "failed"
    relation = "<=" if metrics["ok"] else ">"
    return GraphCheck(name, status, f"rel_l2 {metrics['rel_l2']:.2e} {relation} {spec['tolerance']:g} vs the golden "
                      f"output ({backend}, {'x'.join(map(str, output.shape))})", record)


def run_graph(path: Path, backend: str, arrays, fp16: bool):
    if backend == "lite":
        from .runtime import LiteRunner

        return LiteRunner(path).run(*arrays)[0]
    from mindspore_nets.loading import run_cell

    from .mindir import execution_mode
    from .reload import open_graph_cell

    with execution_mode(graph=True):
        return run_cell(open_graph_cell(path), arrays)
