"""The MindIR exporter: the view's MindSpore Cell traced without its weights, the weights streamed from the converted
folder into MindSpore's own file layout, then validated in phases that each hold one heavy thing at a time.

Phases (``results``), each timed with its own peak RSS in the manifest and one progress line per graph on stderr:

1. **trace / write** (``streaming``): the Cell is built with uninitialised parameters and traced; the graph file
   and its variables are written tensor by tensor from the converted weights file. The graph's declared inputs and
   parameter dtypes are checked against the spec and the registry's keep_fp32. Each graph's validation is
   planned: ``full`` (the artifact reloaded and run at its real shapes) when the estimate of that run fits the
   memory budget (``budget``), else ``proxy``: the same Cell written at a 16x16 latent (VAE 4x4) and/or cut to its first
   ``PROXY_LAYERS`` blocks, run at the cost it fits in. ``--validation full|proxy`` forces either.
2. **torch reference** (fp32): from the source through the key map when three fp32 copies fit the budget, else
   the torch class holding the converted weights assigned one tensor at a time, else skipped (said in the
   manifest); its outputs are kept, the model dropped.
3. **eager MindSpore** (``lean``: one tensor at a time, attention in query blocks): the golden output at the real
   shape (PYNATIVE), every stored weight compared byte for byte, the reference of every validation case; dropped.
4. **reload / run** (``reload``: weights + largest parameter): each graph or proxy run alone and judged.
"""
from __future__ import annotations

import contextlib
import gc
import shutil
import sys
from pathlib import Path

from pixart_core import dtypes, registry
from pixart_core.inputs import sample_inputs

from . import blockwise, budget, golden, lean, reload, streaming
from .results import CaseRun, GraphResult, Stopwatch, phase
from .specs import Case

REFERENCE_KIND = {"fp32": "eager network (PyNative)", "fp16": "network compiled in-process (GRAPH mode)"}
PROXY_LAYERS = 2  # a depth proxy keeps this many blocks
QUERY_ROWS = 256  # attention query rows per slice in the eager runs (1024 rows at 1024^2: ~1.5 GiB of scores)


def progress(line: str) -> None:
    print(f"export: {line}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def execution_mode(graph: bool):
    """MindSpore's GRAPH (``graph=True``) or PYNATIVE mode for the block, restored afterwards."""
    import mindspore as ms

    previous = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE if graph else ms.PYNATIVE_MODE)
    if not graph:
        from mindspore_nets.layers import synchronous_launch

        synchronous_launch()  # the asynchronous PYNATIVE pipeline spins on this CPU's cores
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
def dynamic_position_embedding(net, on: bool = True):
    """Swap the transformer's patch embedding for the in-graph one while a gears graph is traced or run."""
    if not on:
        yield
        return
    from .specs import DynamicPatchEmbed

    static = net.pos_embed
    net.pos_embed = DynamicPatchEmbed(static)
    try:
        yield
    finally:
        net.pos_embed = static


def written_path(folder: Path, stem: str) -> Path:
    for name in (f"{stem}_graph.mindir", f"{stem}.mindir"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder}: no graph {stem}")


def fp16_finite(component: str, folder: Path, spec, mode: str = "auto") -> tuple[bool, str]:
    """Run the fp16 eager network on every graph's real-shape inputs: the VAE is exported in fp16 only if all of
    its outputs are finite. Where that eager run exceeds the component's budget (the VAE at 1024^2: GiBs of feature
    maps, and MindSpore's CPU Conv2D at about 100x torch's time) and ``mode`` is not ``full``, the graph's proxy
    inputs (a 4x4 latent) are checked instead, and the reason says so."""
    import numpy as np

    from mindspore_nets.loading import run_cell

    from .plan import component_weight_bytes

    weights = component_weight_bytes(folder, component, "fp16")
    limit = budget.budget(weights)
    net, cell = lean.load_network(component, folder, "fp16")
    smaller = []
    with execution_mode(graph=False), query_blocks(QUERY_ROWS):
        for graph in spec.graphs:
            case = graph.validation_cases("full", spec.vae_scale)[0]
            need = budget.eager_bytes(component, spec.config, case.inputs, weights, "float16")
            if mode != "full" and not budget.fits(budget.rss(), need, limit):
                case = graph.validation_cases("proxy", spec.vae_scale)[0]
                smaller.append(f"{graph.stem} ({case.label}: the real shape needs about {budget.gib(need)} > the "
                               f"budget {budget.gib(limit)})")
            watch = Stopwatch()
            out = run_cell(cell, sample_inputs(case.inputs, spec.config))
            progress(f"{component}/{graph.stem}: fp16 NaN check {watch.seconds():.1f} s ({case.label})")
            bad = int((~np.isfinite(out.astype(np.float64))).sum())
            if bad:
                return False, f"{graph.stem} ({case.label}): {bad} non-finite values in fp16"
    if smaller:
        return True, "finite in fp16; checked on smaller inputs: " + "; ".join(smaller)
    return True, "finite in fp16 on the real-shape inputs"


def fast_golden_outputs(component: str, folder: Path, dtype: str, inputs: list[list], stems: list[str]) -> list:
    """[(output, seconds)] of the eager network built with the fast CPU kernels (``layers.fast_kernels``: im2col
    convolutions), PYNATIVE, attention in query blocks, for each input set."""
    from mindspore_nets.layers import fast_kernels

    with fast_kernels():
        net, cell = lean.load_network(component, folder, dtype)
    outputs = []
    with query_blocks(QUERY_ROWS), execution_mode(graph=False):
        for arrays, stem in zip(inputs, stems):
            watch = Stopwatch()
            outputs.append((run_cell(cell, arrays), watch.seconds()))
            progress(f"{component}/{stem}: golden pair, eager MindSpore with the fast CPU kernels "
                     f"{watch.seconds():.1f} s (in a child process)")
    return outputs


def all_runs(result: GraphResult) -> list[CaseRun]:
    """The validation runs and, when it is not one of them, the golden run."""
    runs = list(result.runs)
    if result.golden is not None and all(run is not result.golden for run in runs):
        runs.append(result.golden)
    return runs


def query_blocks(rows):
    """Fixed-size query slices for the export's eager runs (``layers.query_blocks``: one block size in the pool)."""
    from mindspore_nets.layers import query_blocks as blocks

    return blocks(rows, fixed=True)


def run_cell(cell, arrays):
    from mindspore_nets.loading import run_cell as forward

    return forward(cell, arrays)


class MindIRExporter:
    name = "mindir"

    def __init__(self):
        self.phases: dict = {}

    def export_component(self, spec, folder: Path, target: Path, opts, log, tolerance_dtype: str,
                         twins=None) -> tuple[list[GraphResult], str | None]:
        """Every graph of one component written into ``target`` and judged; returns (results, why the torch
        reference was unavailable or None)."""
        from .plan import component_weight_bytes

        limit = opts.budget_bytes or budget.budget(component_weight_bytes(folder, spec.name, spec.dtype))
        results = [GraphResult(self.name, graph, []) for graph in spec.graphs]
        with phase("trace_write", self.phases):
            self.trace_write(spec, folder, target, opts, results, limit)
        note = "not asked (--no-torch-reference)"
        if opts.torch_reference:
            with phase("torch_reference", self.phases):
                note = self.torch_phase(spec, folder, results, limit)
        with phase("eager", self.phases):
            self.eager_phase(spec, folder, target, results, limit)
        with phase("reload_run", self.phases):
            self.run(spec, target, results, tolerance_dtype, note)
        for result in results:
            log(summary_line(spec, result))
        return results, note

    # -- phase 1
    def trace_write(self, spec, folder: Path, target: Path, opts, results: list[GraphResult], limit: int) -> None:
        from . import validate

        net, cell = lean.skeleton(spec.name, folder, spec.dtype)
        names = lean.parameter_names(net)
        reader = streaming.WeightReader(lean.weights_file(spec.name, folder))
        try:
            for result in results:
                graph = result.graph
                watch = Stopwatch()
                with dynamic_position_embedding(net, bool(graph.gears)):
                    model = streaming.trace(cell, graph.inputs)
                progress(f"{spec.name}/{graph.stem}: trace {watch.seconds():.1f} s")
                for problem in [*validate.interface_problems(graph.stem, graph.inputs,
                                                             validate.proto_interface(model)),
                                *streaming.dtype_problems(spec.name, model, spec.dtype)]:
                    result.problem(problem)
                watch = Stopwatch()
                written = streaming.write_graph(model, target, graph.stem, reader, names, opts.split_threshold)
                result.export_seconds = watch.seconds()
                result.graph_file, result.files, result.split = written.graph_file, written.files, written.split
                result.details = {"proto_bytes": written.proto_bytes, "weight_bytes": written.weight_bytes}
                progress(f"{spec.name}/{graph.stem}: write {result.export_seconds:.1f} s "
                         f"({budget.gib(written.weight_bytes)}{', split' if written.split else ''})")
                self.plan(spec, folder, target, opts, result, model, limit, reader)
                del model
        finally:
            reader.close()
        del cell, net
        gc.collect()

    def plan(self, spec, folder: Path, target: Path, opts, result: GraphResult, model, limit: int, reader) -> None:
        """Choose the graph's validation (full or proxy) and write any proxy graph."""
        graph = result.graph
        full_cases = graph.validation_cases("full", spec.vae_scale)
        weights, largest = streaming.stored_bytes(model), reload.largest_parameter(model)
        here = budget.rss()
        estimate = budget.graph_run_bytes(spec.name, spec.config, full_cases[0].inputs, weights, largest,
                                          spec.out_dtype)
        result.memory = {"budget_bytes": limit, "weights_bytes": weights, "run_estimate_bytes": estimate,
                         "resident_bytes": here}
        golden_run = CaseRun(full_cases[0], sample_inputs(full_cases[0].inputs, spec.config))
        result.golden = golden_run
        if opts.validation == "full" or (opts.validation == "auto" and budget.fits(here, estimate, limit)):
            result.mode = "full"
            result.why = ("asked (--validation full)" if opts.validation == "full" else
                          f"reloading and running it needs about {budget.gib(estimate)}, within the budget "
                          f"{budget.gib(limit)}")
            result.runs = [golden_run] + [CaseRun(c, sample_inputs(c.inputs, spec.config)) for c in full_cases[1:]]
            return
        result.mode = "proxy"
        result.why = ("asked (--validation proxy)" if opts.validation == "proxy" else
                      f"reloading and running it at its real shape needs about {budget.gib(estimate)} "
                      f"(weights, fp32 copies, GRAPH-mode activations) > the budget {budget.gib(limit)}")
        cases = graph.validation_cases("proxy", spec.vae_scale) if graph.latent_hw or graph.gears else full_cases[:1]
        case = cases[0]
        small = budget.graph_run_bytes(spec.name, spec.config, case.inputs, weights, largest, spec.out_dtype)
        deep = "num_layers" in spec.config  # a depth proxy needs blocks to cut (the VAE keeps its small latent)
        if deep and (not budget.fits(here, small, limit) or (case.runs_artifact and not graph.gears)):
            layers = min(PROXY_LAYERS, spec.config["num_layers"])
            case = Case(f"proxy: first {layers} blocks" + ("" if case.runs_artifact else f", {case.label[6:]}"),
                        case.inputs, case.outputs, False, num_layers=layers)
        result.runs = [CaseRun(case, sample_inputs(case.inputs, spec.config))]
        self.plan_golden(spec, opts, result, weights, here, limit)
        if not case.runs_artifact:
            where = target.parent / f".proxy-{graph.stem}"  # removed once it has run
            shutil.rmtree(where, ignore_errors=True)
            where.mkdir()
            net, cell = lean.skeleton(spec.name, folder, spec.dtype, case.num_layers)
            with dynamic_position_embedding(net, bool(graph.gears)):
                proxy = streaming.trace(cell, case.inputs)
            streaming.write_graph(proxy, where, graph.stem, reader, lean.parameter_names(net), opts.split_threshold)
            result.proxies[0] = where
            result.memory["proxy_weights_bytes"] = streaming.stored_bytes(proxy)
            progress(f"{spec.name}/{graph.stem}: proxy written ({case.label})")

    @staticmethod
    def plan_golden(spec, opts, result: GraphResult, weights: int, here: int, limit: int) -> None:
        """A proxy-validated graph whose eager network has no block-by-block runner (the VAE) keeps its real-shape
        golden pair only when that eager run fits the budget: with the plain ops the graph has, or else (fp32) with
        the fast CPU kernels (``golden_kernels``: the same function within the fp32 tolerance, im2col convolutions
        at a fraction of the memory and time); otherwise neither it nor the real-shape torch run is computed, and the
        manifest says why (``golden_skipped``)."""
        if opts.validation == "full" or blockwise.supported(spec.name):
            return
        inputs = result.golden.case.inputs
        need = budget.eager_bytes(spec.name, spec.config, inputs, weights, spec.out_dtype)
        if budget.fits(here, need, limit):
            return
        fast = budget.fast_eager_bytes(spec.name, spec.config, inputs, weights) if spec.dtype == "fp32" else None
        if fast is not None and budget.fits(here, fast, limit):
            result.details["golden_kernels"] = (f"fast CPU kernels: the plain ops' eager run needs about "
                                                f"{budget.gib(need)} > the budget {budget.gib(limit)}, these about "
                                                f"{budget.gib(fast)}")
            progress(f"{spec.name}/{result.stem}: golden pair with the fast CPU kernels (about {budget.gib(fast)})")
            return
        result.golden = None
        how = "" if fast is None else " with the fast CPU kernels"
        result.details["golden_skipped"] = (f"the eager network at the real shape needs about "
                                            f"{budget.gib(need if fast is None else fast)}{how} > "
                                            f"the budget {budget.gib(limit)} (--validation full runs it anyway and "
                                            "stores the pair, on a host with that memory)")
        progress(f"{spec.name}/{result.stem}: no golden pair ({result.details['golden_skipped']})")

    # -- phase 2
    def torch_phase(self, spec, folder: Path, results: list[GraphResult], limit: int) -> str | None:
        """The fp32 torch reference's output for every full-depth run, computed in a child process (this one never
        imports torch); returns why it was unavailable or None."""
        from .torch_worker import run_reference

        reader = streaming.WeightReader(lean.weights_file(spec.name, folder))
        every = {name: 4 * dtypes.numel(info.shape) for name, info in reader.source.infos.items()}
        reader.close()
        reader_sizes = {name: size for name, size in every.items() if registry.view(spec.name).uses(name)}
        fp32, largest = sum(reader_sizes.values()), max(reader_sizes.values(), default=0)
        # the child's forward holds one block's activations too (XL/2 at 1024^2: the lean child at 2.28 GiB of
        # weights took the export to 4.07 GiB against its 3.96 GiB rule); the streamed child runs a sample at a time
        base = budget.rss() + budget.TORCH_BASE
        here = base + self.block_activations(spec, folder, results)
        here_streamed = base + self.block_activations(spec, folder, results, sample=True)
        if budget.fits(here, budget.torch_source_bytes(sum(every.values())), limit):  # rebuilds the whole source
            how, text = "source", "rebuilt from the source through the key map"
        elif budget.fits(here, budget.torch_lean_bytes(fp32, largest), limit):
            how, text = "lean", ("the torch class holding the converted weights (the source-rebuilt reference does "
                                 "not fit the budget)")
        elif lean.block_prefix(spec.name) and budget.fits(here_streamed, budget.torch_streamed_bytes(
                fp32, lean.block_prefix(spec.name), reader_sizes), limit):
            how, text = "streamed", ("the torch class holding the converted weights, each block's only while it "
                                     "runs, one sample at a time (the whole fp32 model does not fit the budget)")
        else:
            note = (f"the fp32 torch reference needs about {budget.gib(fp32)} on top of {budget.gib(here)} resident "
                    f"> the budget {budget.gib(limit)}")
            progress(f"{spec.name}: torch reference unavailable ({note})")
            return note
        runs = {f"{i}-{j}": run for i, result in enumerate(results) for j, run in enumerate(all_runs(result))
                if run.case.num_layers is None}
        watch = Stopwatch()
        outputs, seconds, note = run_reference(folder, spec.name, how, {k: r.arrays for k, r in runs.items()},
                                               list(registry.view(spec.name).inputs))
        if note is not None:
            if how == "streamed":
                note = (f"the whole fp32 torch model ({budget.gib(fp32)}) exceeds the budget {budget.gib(limit)}, "
                        f"and {note}")
            progress(f"{spec.name}: torch reference unavailable ({note})")
            return note
        for key, run in runs.items():
            run.torch, run.torch_seconds = outputs[key], round(seconds[key], 2)
        for result in results:
            result.details["torch_reference"] = text
        progress(f"{spec.name}: torch reference {watch.seconds():.1f} s ({how}, in a child process)")
        return None

    # -- phase 3
    def eager_phase(self, spec, folder: Path, target: Path, results: list[GraphResult], limit: int) -> None:
        """The eager network: golden outputs (PYNATIVE), the stored weights byte for byte, every reference. When
        the whole network does not fit the budget it runs block by block (``blockwise``)."""
        weights = max(r.memory.get("weights_bytes", 0) for r in results)
        need = int(budget.EAGER_EXTRA.get(spec.out_dtype, 1.2) * weights) + self.block_activations(spec, folder,
                                                                                                   results)
        gears = any(r.graph.gears for r in results)  # the block runners compute the static position table only
        if blockwise.supported(spec.name) and not gears and not budget.fits(budget.rss(), need, limit):
            self.eager_blockwise(spec, folder, target, results, need, limit)
        else:
            self.eager_whole(spec, folder, target, results)
        for result in [r for r in results if r.golden is not None]:
            out = result.graph.concrete_outputs(result.graph.gears[0] if result.graph.gears else None)[0]
            golden.save(target / f"{result.stem}{golden.SUFFIX}", result.golden.case.inputs, result.golden.arrays,
                        result.golden.pynative)
            result.files.append(target / f"{result.stem}{golden.SUFFIX}")
            result.details["golden"] = golden.entry(spec.name, result.stem, result.golden.case.inputs, out,
                                                    f"eager MindSpore network, PYNATIVE, {spec.dtype}"
                                                    + (", block by block" if result.details.get("eager") else "")
                                                    + (", fast CPU kernels (layers.fast_kernels)"
                                                       if "golden_kernels" in result.details else ""),
                                                    spec.dtype, "golden_kernels" in result.details)
        for result in results:
            for run in result.runs:
                if run.case.num_layers is not None:  # the depth proxy's own network
                    small, small_cell = lean.load_network(spec.name, folder, spec.dtype, run.case.num_layers)
                    with query_blocks(QUERY_ROWS), reference_mode(spec.dtype):
                        run.reference = run_cell(small_cell, run.arrays)
                    del small, small_cell
                    gc.collect()

    @staticmethod
    def block_activations(spec, folder: Path, results: list[GraphResult], sample: bool = False) -> int:
        """One block's PYNATIVE activations at the largest real shape, query-sliced (parity's per-block estimate):
        the XL/2 at 1024^2 holds 1.44 GiB over its weights while a block runs, which the weight ratio alone missed
        (the whole network then fit the estimate and peaked at 4.94 GiB against the 3.96 GiB rule). ``sample``:
        for a run that takes the batch one sample at a time."""
        from parity.stages import stages_of

        stages = stages_of(spec.name)
        if stages is None:
            return 0
        config = lean.config_object(spec.name, folder)
        return max(stages.activation_bytes(config, {t.name: (1,) * sample + tuple(t.shape)[sample:]
                                                    for t in r.golden.case.inputs}, QUERY_ROWS) for r in results)

    def eager_whole(self, spec, folder: Path, target: Path, results: list[GraphResult]) -> None:
        from . import validate

        fast = [r for r in results if r.golden is not None and "golden_kernels" in r.details]
        if fast:
            self.fast_goldens(spec, folder, fast)
        net, cell = lean.load_network(spec.name, folder, spec.dtype)
        with query_blocks(QUERY_ROWS):
            for result in results:
                watch = Stopwatch()
                with dynamic_position_embedding(net, bool(result.graph.gears)):
                    if result.golden is not None and "golden_kernels" not in result.details:
                        with execution_mode(graph=False):
                            result.golden.pynative = run_cell(cell, result.golden.arrays)
                        result.details["eager_forward_seconds"] = watch.seconds()
                    for run in result.runs:
                        if run.case.num_layers is None:
                            with reference_mode(spec.dtype):
                                run.reference = (result.golden.pynative if run is result.golden and
                                                 spec.dtype == "fp32" else run_cell(cell, run.arrays))
                count, problems = validate.weight_problems(target / result.graph_file, cell)
                for problem in problems:
                    result.problem(problem)
                result.weights = {"stored": count, "identical_to_network": not problems}
                progress(f"{spec.name}/{result.stem}: eager MindSpore {watch.seconds():.1f} s")
        del cell, net
        gc.collect()

    @staticmethod
    def fast_goldens(spec, folder: Path, results: list[GraphResult]) -> None:
        """Golden outputs from the eager network built with the fast CPU kernels, in a child process
        (``eager_worker``: MindSpore's pool would keep the decode's GiBs here), before the plain network is built."""
        from .eager_worker import in_child

        outputs = in_child("fast_golden", spec.name, folder, spec.dtype, [r.golden.arrays for r in results],
                           [r.stem for r in results])
        for result, (output, seconds) in zip(results, outputs):
            result.golden.pynative = output
            result.details["eager_forward_seconds"] = seconds

    def eager_blockwise(self, spec, folder: Path, target: Path, results: list[GraphResult], need: int,
                        limit: int) -> None:
        names = lean.parameter_names(lean.skeleton(spec.name, folder, spec.dtype)[0])
        for result in results:
            watch = Stopwatch()
            # query slices here too: one fp32 score tensor of the XL/2 at 1024^2 is 2 GiB (5.07 GiB phase peak
            # without them, 2.4 GiB with 256-row slices)
            with execution_mode(graph=False), query_blocks(QUERY_ROWS):
                result.golden.pynative = blockwise.forward(spec.name, folder, spec.dtype, result.golden.arrays)
                result.details["eager_forward_seconds"] = watch.seconds()
                result.details["eager"] = (f"block by block: the whole eager network needs about "
                                           f"{budget.gib(need)} > the budget {budget.gib(limit)}")
                for run in result.runs:
                    if run.case.num_layers is None:
                        run.reference = result.golden.pynative if run.arrays is result.golden.arrays else \
                            blockwise.forward(spec.name, folder, spec.dtype, run.arrays)
            progress(f"{spec.name}/{result.stem}: eager MindSpore block by block {watch.seconds():.1f} s")
            watch = Stopwatch()
            count, problems = blockwise.stored_weight_problems(target / result.graph_file, folder, spec.name, names)
            for problem in problems:
                result.problem(problem)
            result.weights = {"stored": count, "identical_to_network": not problems,
                              "compared_with": "the source tensors cast by MindSpore"}
            progress(f"{spec.name}/{result.stem}: stored weights checked {watch.seconds():.1f} s")

    # -- phase 4
    def run(self, spec, target: Path, results: list[GraphResult], tolerance_dtype: str, note: str | None) -> None:
        """Each graph (or its proxy) reloaded alone, run on its cases, judged."""
        from mindspore_nets.loading import run_cell

        from . import validate

        for result in results:
            watch = Stopwatch()
            for i, run in enumerate(result.runs):
                where = result.proxies.get(i)
                path = target / result.graph_file if where is None else written_path(where, result.stem)
                started = Stopwatch()
                with execution_mode(graph=True):
                    run.output = run_cell(reload.open_graph_cell(path), run.arrays)
                seconds = started.seconds()
                gc.collect()
                if where is not None:
                    shutil.rmtree(where, ignore_errors=True)
                record, found = validate.check_output(run.output, run.case.outputs[0], run.reference, run.torch,
                                                      tolerance_dtype or spec.dtype)
                record["vs_eager"]["reference"] = REFERENCE_KIND[spec.dtype]
                record["case"] = run.case.label
                record["ran"] = "the exported graph" if where is None else f"{run.case.label}: the same Cell " \
                    "exported at this size and depth"
                record["inputs"] = [t.to_dict() for t in run.case.inputs]
                record["forward_seconds"] = {"graph": seconds, "torch_reference": run.torch_seconds}
                if run.torch is None:
                    record["vs_torch"] = f"unavailable ({note or 'depth proxy: no torch model of that depth'})"
                if run is result.golden:
                    vs_golden = validate.against(run.output, result.golden.pynative,
                                                 result.details["golden"]["tolerance"])
                    record["vs_golden"] = vs_golden
                    if not vs_golden["ok"]:
                        found.append(f"GraphCell vs the golden output rel_l2 {vs_golden['rel_l2']:.3g}")
                run.record = record
                for problem in found:
                    result.problem(problem, run.case)
                progress(f"{spec.name}/{result.stem}: reload and run {seconds:.1f} s ({run.case.label})")
            result.validate_seconds = watch.seconds()
            if result.golden is not None and result.golden.torch is not None:
                result.details["golden"]["eager_vs_torch"] = validate.against(
                    result.golden.pynative, result.golden.torch, validate.TOLERANCES[tolerance_dtype or spec.dtype])
            progress(f"{spec.name}/{result.stem}: validate {result.mode} ({result.why})")

    @staticmethod
    def graph_entry(spec, result: GraphResult, target: Path) -> tuple[dict, dict]:
        """(fields before the common ones, fields after) of the graph's manifest entry."""
        graph_files = [p for p in result.files if not p.name.endswith(golden.SUFFIX)]
        head = {"file": f"{spec.name}/{result.graph_file}", "split": result.split,
                "files": [f"{spec.name}/{p.relative_to(target)}" for p in graph_files]}
        details = dict(result.details)
        tail = {"export_seconds": result.export_seconds, "validate_seconds": result.validate_seconds,
                "weights": result.weights, "validation_mode": result.mode, "validation_why": result.why,
                "golden": details.pop("golden", None), "memory": result.memory, **details,
                "validation": [run.record for run in result.runs]}
        return head, tail


def summary_line(spec, result: GraphResult) -> str:
    eager = max(run.record["vs_eager"]["rel_l2"] for run in result.runs)
    torch_values = [run.record["vs_torch"]["rel_l2"] for run in result.runs if isinstance(run.record["vs_torch"], dict)]
    torch_text = f"{max(torch_values):.2e}" if torch_values else "unavailable"
    return (f"{result.stem}: {spec.dtype}, {result.nbytes() / 2**20:.1f} MiB{' (split)' if result.split else ''}, "
            f"exported in {result.export_seconds:.1f} s; validation {result.mode}; GraphCell vs MindSpore rel_l2 "
            f"{eager:.2e}, vs torch {torch_text}")
