"""The MindIR exporter: the view's MindSpore Cell traced with ``mindspore.export``, reloaded with ``GraphCell``.

Phases (``results``): the eager network computes the in-process reference of every case, each graph is traced and
written, its declared inputs and stored weights are read back (byte for byte against the network); the network is
dropped; the torch reference rebuilt from the converted folder's *source* computes its outputs and is dropped;
each graph is reloaded alone and judged against both.

Validation of each graph: its declared inputs equal the spec; every weight it stores equals the network's; and it
runs against the in-process MindSpore network (<= 1e-6) and the torch reference (parity tolerance), at every
exported shape (``--validation full``) or, on hosts that cannot run it at its size, through a proxy at a 16x16
latent (``--validation proxy``, see ``GraphSpec.validation_cases``).
"""
from __future__ import annotations

import contextlib
import gc
import shutil
from pathlib import Path

import numpy as np

from pixart_core import dtypes, registry
from pixart_core.errors import CheckFailed, OutputError, SourceError
from pixart_core.inputs import sample_inputs
from pixart_core.outputs import human_bytes

from .results import GraphResult, Stopwatch, new_results

DISK_NEARLY_FULL = 64 * 2**20  # a MindSpore write error with less free than this is taken for a full disk
REFERENCE_KIND = {"fp32": "eager network (PyNative)", "fp16": "network compiled in-process (GRAPH mode)"}


@contextlib.contextmanager
def execution_mode(graph: bool):
    """MindSpore's GRAPH (``graph=True``) or PYNATIVE mode for the block, restored afterwards."""
    import mindspore as ms

    previous = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE if graph else ms.PYNATIVE_MODE)
    try:
        yield
    finally:
        ms.set_context(mode=previous)


def reference_mode(dtype: str):
    """Where the in-process MindSpore reference runs: PyNative (eager) for fp32; for fp16 the same Cell compiled
    in GRAPH mode in this process. MindSpore's CPU fp16 kernels round differently in PyNative and graph mode
    (about 5e-4 relative on the tiny transformer, with or without export); the graph-mode run isolates what
    the export itself changes, which must be nothing (<= 1e-6)."""
    return execution_mode(graph=dtype != "fp32")


@contextlib.contextmanager
def split_threshold(nbytes: int | None):
    """Lower MindSpore's 1 GiB split-save threshold (``serialization.TOTAL_SAVE``, in KiB) for one export."""
    import mindspore.train.serialization as serialization

    if nbytes is None:
        yield
        return
    saved = serialization.TOTAL_SAVE
    serialization.TOTAL_SAVE = max(nbytes, 0) / 1024
    try:
        yield
    finally:
        serialization.TOTAL_SAVE = saved


@contextlib.contextmanager
def dynamic_position_embedding(net):
    """Swap the transformer's patch embedding for the in-graph one while a gears graph is traced."""
    from .specs import DynamicPatchEmbed

    static = net.pos_embed
    net.pos_embed = DynamicPatchEmbed(static)
    try:
        yield
    finally:
        net.pos_embed = static


def written_files(folder: Path, stem: str) -> tuple[str, list[Path], bool]:
    """(graph file to load, every file of the graph, split) after ``mindspore.export`` wrote ``stem``."""
    single, graph, variables = folder / f"{stem}.mindir", folder / f"{stem}_graph.mindir", folder / f"{stem}_variables"
    if graph.is_file() and variables.is_dir():
        return graph.name, [graph, *sorted(p for p in variables.rglob("*") if p.is_file())], True
    if single.is_file():
        return single.name, [single], False
    raise CheckFailed(f"{folder}: mindspore.export wrote neither {single.name} nor {graph.name} + {variables.name}/")


def written_path(folder: Path, stem: str) -> Path:
    return folder / written_files(folder, stem)[0]


def export_graph(cell, inputs, file_stem: Path, threshold: int | None) -> None:
    """``mindspore.export`` in GRAPH mode; -1 dims become ``None`` (a dynamic-shape input for Lite gears)."""
    import mindspore as ms

    with execution_mode(graph=True), split_threshold(threshold):
        dummies = [ms.Tensor(shape=[None if d == -1 else d for d in t.shape], dtype=dtypes.ms_dtype(t.dtype))
                   if -1 in t.shape else ms.Tensor(np.zeros(t.shape, dtypes.numpy_dtype(t.dtype))) for t in inputs]
        try:
            ms.export(cell, *dummies, file_name=str(file_stem), file_format="MINDIR")
        except RuntimeError as exc:  # MindSpore reports a full disk as a RuntimeError of its own
            free = shutil.disk_usage(file_stem.parent).free
            if free < DISK_NEARLY_FULL:
                raise OutputError(f"{file_stem.parent}: no space left while MindSpore wrote {file_stem.name} "
                                  f"({human_bytes(free)} free); nothing was kept") from exc
            raise


def graph_cell(path: Path):
    import mindspore as ms
    from mindspore import nn

    return nn.GraphCell(ms.load(str(path)))


def fp16_finite(component: str, folder: Path, spec, mode: str) -> tuple[bool, str]:
    """Run the fp16 eager network on every graph's validation inputs: the VAE is exported in fp16 only if all of
    its outputs are finite."""
    from mindspore_nets.loading import load_network, run_cell

    net = load_network(component, folder, "fp16")
    cell = registry.view(component).cell(net)
    with execution_mode(graph=False):
        for graph in spec.graphs:
            for case in graph.validation_cases(mode, spec.vae_scale):
                out = run_cell(cell, sample_inputs(case.inputs, spec.config))
                bad = int((~np.isfinite(out.astype(np.float64))).sum())
                if bad:
                    return False, f"{graph.stem} ({case.label}): {bad} non-finite values in fp16"
    return True, "finite in fp16 on the validation inputs"


def torch_reference(folder: Path):
    """(the fp32 torch reference rebuilt from the converted folder's source, None) or (None, why not)."""
    try:
        from converters.references import load_reference
    except ImportError as exc:  # torch or diffusers not installed
        return None, f"torch reference needs torch and diffusers/transformers: {exc}"
    try:
        return load_reference(folder), None
    except SourceError as exc:  # ReferenceUnavailable, or a source that no longer reads
        return None, str(exc)
    except ImportError as exc:
        return None, f"torch reference needs torch and diffusers/transformers: {exc}"


def torch_outputs(view: str, model, results: list[GraphResult]) -> None:
    """The torch reference's output for every case of every graph (its own phase: the model is dropped after)."""
    from .validate import torch_output

    for result in results:
        for run in result.runs:
            run.torch = torch_output(view, model, run.arrays)


class MindIRExporter:
    name = "mindir"

    def export_component(self, spec, folder: Path, target: Path, opts, log, tolerance_dtype: str,
                         twins=None) -> tuple[list[GraphResult], str | None]:
        """Every graph of one component written into ``target`` and judged; returns (results, why the torch
        reference was unavailable or None)."""
        results = new_results(self.name, spec.graphs, lambda g: g.validation_cases(opts.validation, spec.vae_scale),
                              lambda case: sample_inputs(case.inputs, spec.config))
        self.trace_write(spec, folder, target, opts, results)
        note = None
        if opts.torch_reference:
            reference, note = torch_reference(folder)
            if reference is not None:
                torch_outputs(spec.name, reference, results)
            del reference
            gc.collect()
        self.run(spec, target, results, tolerance_dtype, note)
        for result in results:
            log(summary_line(spec, result))
        return results, note

    def trace_write(self, spec, folder: Path, target: Path, opts, results: list[GraphResult]) -> None:
        """Phase 1: the eager network's reference outputs, the traced graphs, their interfaces and weights."""
        from mindspore_nets.loading import load_network, run_cell

        from . import validate

        net = load_network(spec.name, folder, spec.dtype)
        cell = registry.view(spec.name).cell(net)
        for result in results:
            graph = result.graph
            with dynamic_position_embedding(net) if graph.gears else contextlib.nullcontext():
                with reference_mode(spec.dtype):  # the in-process MindSpore reference of every case
                    for run in result.runs:
                        run.reference = run_cell(cell, run.arrays)
                watch = Stopwatch()
                export_graph(cell, graph.inputs, target / graph.stem, opts.split_threshold)
                result.export_seconds = watch.seconds()
                result.graph_file, result.files, result.split = written_files(target, graph.stem)
                for problem in validate.interface_problems(target / result.graph_file, graph.inputs):
                    result.problem(problem)
                n_weights, weight_problems = validate.weight_problems(target / result.graph_file, cell)
                for problem in weight_problems:
                    result.problem(problem)
                result.weights = {"stored": n_weights, "identical_to_network": not weight_problems}
                for i, run in enumerate(result.runs):
                    if not run.case.runs_artifact:  # the same Cell at the proxy size, outside the export folder
                        where = target.parent / f".proxy-{graph.stem}-{i}"  # removed once it has run
                        shutil.rmtree(where, ignore_errors=True)
                        where.mkdir()
                        export_graph(cell, run.case.inputs, where / graph.stem, opts.split_threshold)
                        result.proxies[i] = where
        del cell, net
        gc.collect()

    def run(self, spec, target: Path, results: list[GraphResult], tolerance_dtype: str, note: str | None) -> None:
        """Phase 3: each graph (or its proxy) reloaded alone, run on its cases, judged."""
        from mindspore_nets.loading import run_cell

        from . import validate

        for result in results:
            watch = Stopwatch()
            for i, run in enumerate(result.runs):
                where = result.proxies.get(i)
                path = target / result.graph_file if where is None else written_path(where, result.stem)
                with execution_mode(graph=True):
                    run.output = run_cell(graph_cell(path), run.arrays)
                gc.collect()
                if where is not None:
                    shutil.rmtree(where, ignore_errors=True)
                record, found = validate.check_output(run.output, run.case.outputs[0], run.reference, run.torch,
                                                      tolerance_dtype or spec.dtype)
                record["vs_eager"]["reference"] = REFERENCE_KIND[spec.dtype]
                record["case"] = run.case.label
                record["ran"] = "the exported graph" if where is None else "proxy: the same Cell exported at this size"
                record["inputs"] = [t.to_dict() for t in run.case.inputs]
                if run.torch is None:
                    record["vs_torch"] = f"unavailable ({note})"
                run.record = record
                for problem in found:
                    result.problem(problem, run.case)
            result.validate_seconds = watch.seconds()

    @staticmethod
    def graph_entry(spec, result: GraphResult, target: Path) -> tuple[dict, dict]:
        """(fields before the common ones, fields after) of the graph's manifest entry."""
        head = {"file": f"{spec.name}/{result.graph_file}", "split": result.split,
                "files": [f"{spec.name}/{p.relative_to(target)}" for p in result.files]}
        tail = {"export_seconds": result.export_seconds, "validate_seconds": result.validate_seconds,
                "weights": result.weights, "validation": [run.record for run in result.runs]}
        return head, tail


def summary_line(spec, result: GraphResult) -> str:
    eager = max(run.record["vs_eager"]["rel_l2"] for run in result.runs)
    torch_values = [run.record["vs_torch"]["rel_l2"] for run in result.runs if isinstance(run.record["vs_torch"], dict)]
    torch_text = f"{max(torch_values):.2e}" if torch_values else "unavailable"
    return (f"{result.stem}: {spec.dtype}, {result.nbytes() / 2**20:.1f} MiB{' (split)' if result.split else ''}, "
            f"exported in {result.export_seconds:.1f} s; GraphCell vs MindSpore rel_l2 {eager:.2e}, "
            f"vs torch {torch_text}")
