"""The ONNX exporter: the view's torch reference class, holding the converted folder's own weights
(``torch_source``), traced by torch.onnx's dynamo exporter; checked with ``onnx.checker`` (full, external data
included) and run in onnxruntime (CPU) at the real shapes.

Phases (``results``), each with its own seconds and peak RSS in the manifest: ``trace_write``, the torch module in
the export dtype is built and traces and writes every graph; ``torch_reference``, in fp32 that module computes the
reference outputs and is dropped, in fp16 it is dropped and the fp32 reference is the same class with the folder's
weights read in fp32 one module at a time (``LazyWeights``: T5-XXL does not fit in fp32); ``onnxruntime``, each
graph is loaded alone in onnxruntime, run on every case and compared with the fp32 torch reference (parity
tolerance) and, when MindIR was exported too, with its MindIR twin's output on the same inputs.

The graph's interface is the MindIR graph's: the same input and output names, shapes and dtypes (inputs fp32,
int32 for T5; outputs in the compute dtype), cast inside the graph. Weights over the split threshold (1 GiB, as
MindSpore's) go to ``<stem>.onnx.data`` beside ``<stem>.onnx`` (ONNX's protobuf stops at 2 GiB).
"""
from __future__ import annotations

import contextlib
import gc
import logging
import math
import sys
import warnings
from pathlib import Path

import numpy as np

from mindspore_nets.metrics import TOLERANCES
from pixart_core import dtypes, registry
from pixart_core.inputs import sample_inputs
from pixart_core.registry import TensorSpec

from .results import GraphResult, Stopwatch, new_results, phase

EXTERNAL_DATA_BYTES = 2**30  # weights above this are written as <stem>.onnx.data (MindSpore's split threshold)


def squeeze_dim(self, dim: int):
    """``aten::squeeze.dim`` with torch's meaning: a no-op on a dim whose size is not 1.

    onnxscript's torchlib (0.3 .. 0.7.2) emits ``Squeeze(axes=[dim])`` unconditionally, which ONNX forbids on a
    dim of size != 1; diffusers' ``PixArtTransformer2DModel.forward`` ends with ``hidden_states.squeeze(1)`` on
    (B, tokens, p*p*C), and onnxruntime refuses the graph (``Dimension of input 1 must be 1 instead of 4096``).
    A symbolic size (dynamic h, w, whose minimum is 2) counts as != 1."""
    from onnxscript import opset18 as op

    shape = self.shape
    if shape is None or len(shape) == 0:
        return op.Identity(self)
    size = shape[dim]
    if isinstance(size, int) and size == 1:
        return op.Squeeze(self, op.Constant(value_ints=[dim]))
    return op.Identity(self)


CHUNKED_NORM_ABOVE = 2**16  # values per group above which GroupNorm's statistics are traced as chunked means


def chunked_group_norm(self, x):
    """``nn.GroupNorm.forward`` with the group statistics as means of chunk means (chunks of about sqrt(K) of the
    K values of a group), in fp32. torchlib translates GroupNorm into InstanceNormalization, and onnxruntime's fp32
    reduction error grows with K: measured on (1, 128, H, W) with 32 groups against fp64, 1.2e-5 relative at
    K = 1M (512 px) where torch has 6e-8, which put the SDXL VAE decoder at 1024 px at 1.5e-4 from torch; a
    ReduceMean over the whole group is as bad (1.2e-5), two levels of means give 1.7e-7. The same numbers as
    torch's GroupNorm, so the graph is still compared with the unchanged torch class."""
    import torch

    n, c = x.shape[:2]
    size = x.numel() // (n * self.num_groups)
    if not isinstance(size, int) or size <= CHUNKED_NORM_ABOVE:  # small or symbolic: torch's own
        return torch.nn.functional.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
    chunk = max(d for d in range(1, math.isqrt(size) + 1) if size % d == 0)
    v = x.float().reshape(n, self.num_groups, size // chunk, chunk)
    deviation = v - v.mean(-1, keepdim=True).mean(-2, keepdim=True)
    variance = (deviation * deviation).mean(-1, keepdim=True).mean(-2, keepdim=True)
    y = (deviation * torch.rsqrt(variance + self.eps)).reshape(x.shape)
    if self.affine:
        y = y * self.weight.float().reshape(1, c, *[1] * (x.dim() - 2)) + \
            self.bias.float().reshape(1, c, *[1] * (x.dim() - 2))
    return y.to(x.dtype)


@contextlib.contextmanager
def accurate_group_norm():
    """Every ``nn.GroupNorm`` traced as ``chunked_group_norm`` while the block runs."""
    import torch

    forward = torch.nn.GroupNorm.forward
    torch.nn.GroupNorm.forward = chunked_group_norm
    try:
        yield
    finally:
        torch.nn.GroupNorm.forward = forward


def graph_module(view, model, out_dtype: str):
    """The torch module that is traced: the view's ``torch_forward`` with the graph's interface (float inputs cast
    to the model's compute dtype inside, the output in the spec's dtype)."""
    import torch

    compute = next(p.dtype for p in model.parameters() if p.is_floating_point())
    out = dtypes.torch_dtype(out_dtype)

    class OnnxGraph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *tensors):
            tensors = [t.to(compute) if t.is_floating_point() else t for t in tensors]
            return view.torch_forward(self.model, *tensors).to(out)

    return OnnxGraph().eval()


@contextlib.contextmanager
def quiet_exporter():
    """torch.onnx prints its progress on stdout (which may carry --json) and logs warnings about optional
    operator libraries; keep both off the command's output."""
    level = logging.getLogger("torch").level
    logging.getLogger("torch").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.getLogger("torch").setLevel(level)


def trace_write(module, view, graph, example: list[np.ndarray], path: Path, external: bool) -> None:
    """torch.onnx.export (dynamo) of ``module`` at ``example``'s shapes (h, w dynamic for a gears graph), saved
    with its weights inline or in ``<path>.data``."""
    import torch

    dynamic = None
    if graph.gears:
        max_hw = (max(g[0] for g in graph.gears), max(g[1] for g in graph.gears))
        dynamic = {"tensors": view.torch_dynamic_hw(module.model, max_hw)}
    with torch.no_grad(), quiet_exporter(), accurate_group_norm():
        program = torch.onnx.export(module, tuple(torch.from_numpy(a) for a in example),
                                    input_names=[t.name for t in graph.inputs],
                                    output_names=[t.name for t in graph.outputs], dynamo=True, verbose=False,
                                    custom_translation_table={torch.ops.aten.squeeze.dim: squeeze_dim},
                                    dynamic_shapes=dynamic)
        program.save(str(path), external_data=external)
    del program
    gc.collect()


def onnx_interface(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The inputs and outputs an ONNX file declares (a symbolic dim as -1), without reading its weights."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    model = onnx.load(str(path), load_external_data=False)

    def specs(values):
        out = []
        for v in values:
            t = v.type.tensor_type
            shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
            out.append(TensorSpec(v.name, shape, dtypes.name_of_numpy(tensor_dtype_to_np_dtype(t.elem_type))))
        return out

    return specs(model.graph.input), specs(model.graph.output)


def checker_problems(path: Path) -> list[str]:
    """``onnx.checker.check_model`` in full mode (shape inference included), given the path so that it reads
    the external data too."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        return [f"onnx.checker: {' '.join(str(exc).split())[:300]}"]
    return []


class OnnxExporter:
    name = "onnx"

    def export_component(self, spec, folder: Path, target: Path, opts, log, tolerance_dtype: str,
                         twins: dict[str, GraphResult] | None = None) -> tuple[list[GraphResult], str | None]:
        # onnxruntime runs every graph at its real shapes, so proxy validation is never needed here
        results = new_results(self.name, spec.graphs, lambda g: g.validation_cases("full", spec.vae_scale),
                              lambda case: sample_inputs(case.inputs, spec.config))
        self.phases = {}  # seconds and peak RSS of each phase, for the manifest
        with phase("trace_write", self.phases):
            module = self.trace_write(spec, folder, target, opts, results)
        with phase("torch_reference", self.phases):  # its own phase: the export's peak is the export's
            if module is not None:
                _forward_all(module, results)
            del module
            gc.collect()
            if spec.dtype != "fp32":
                self.fp32_reference(spec, folder, results)
        with phase("onnxruntime", self.phases):
            self.run(spec, target, results, tolerance_dtype, twins or {})
        for result in results:
            log(summary_line(spec, result))
        return results, None

    def trace_write(self, spec, folder: Path, target: Path, opts, results: list[GraphResult]):
        """Phase 1: the torch module in the export dtype writes every graph. Returns it in fp32, where it is also
        the reference (phase 2), else None."""
        from .torch_source import torch_module

        view = registry.view(spec.name)
        model = torch_module(folder, spec.dtype)
        module = graph_module(view, model, spec.out_dtype)
        weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        threshold = EXTERNAL_DATA_BYTES if opts.split_threshold is None else opts.split_threshold
        for result in results:
            graph = result.graph
            path = target / f"{graph.stem}.onnx"
            watch = Stopwatch()
            trace_write(module, view, graph, result.runs[0].arrays, path, external=weights > threshold)
            result.export_seconds = watch.seconds()
            data = path.with_name(path.name + ".data")
            result.graph_file, result.split = path.name, data.is_file()
            result.files = [path, data] if result.split else [path]
            for problem in checker_problems(path):
                result.problem(problem)
            inputs, outputs = onnx_interface(path)
            if inputs != list(graph.inputs) or outputs != list(graph.outputs):
                result.problem(f"{path.name}: declares {_describe(inputs)} -> {_describe(outputs)}, the spec "
                               f"{_describe(graph.inputs)} -> {_describe(graph.outputs)}")
            result.details = {"opset": _opset(path), "external_data": result.split, "weights_bytes": weights}
        return module if spec.dtype == "fp32" else None

    def fp32_reference(self, spec, folder: Path, results: list[GraphResult]) -> None:
        """The fp32 reference of fp16 graphs, one module's weights in memory at a time."""
        from .torch_source import LazyWeights

        lazy = LazyWeights(folder)
        try:
            _forward_all(graph_module(registry.view(spec.name), lazy.model, "float32"), results)
        finally:
            lazy.close()
        del lazy
        gc.collect()

    def run(self, spec, target: Path, results: list[GraphResult], tolerance_dtype: str,
            twins: dict[str, GraphResult]) -> None:
        """Phase 3: each graph alone in onnxruntime, on every case; judged against torch and its MindIR twin."""
        from .runtime import OrtRunner
        from .validate import against, output_facts

        tol = TOLERANCES[tolerance_dtype or spec.dtype]
        for result in results:
            watch = Stopwatch()
            runner = OrtRunner(target / result.graph_file, fp16=spec.dtype == "fp16")
            twin = twins.get(result.stem)
            for i, run in enumerate(result.runs):
                started = Stopwatch()
                run.output = runner.run(*run.arrays)[0]
                ort_seconds = started.seconds()
                record, found = output_facts(run.output, run.case.outputs[0])
                record["vs_torch"] = against(run.output, run.torch, tol)
                if not record["vs_torch"]["ok"]:
                    found.append(f"onnxruntime vs torch reference rel_l2 {record['vs_torch']['rel_l2']:.3g} > "
                                 f"{tol:g} ({tolerance_dtype})")
                record["vs_torch"]["reference"] = ("the traced module (fp32)" if spec.dtype == "fp32" else
                                                   "the same class in fp32, weights read module by module")
                record["vs_mindir"] = _twin_check(run, twin, i, tol, found)
                record.update(case=run.case.label, ran=runner.backend,
                              inputs=[t.to_dict() for t in run.case.inputs],
                              forward_seconds={"onnxruntime": ort_seconds, "torch_reference": run.torch_seconds})
                run.record = record
                for problem in found:
                    result.problem(problem, run.case)
            del runner
            gc.collect()
            result.validate_seconds = watch.seconds()

    @staticmethod
    def graph_entry(spec, result: GraphResult, target: Path) -> dict:
        return {"file": f"{spec.name}/{result.graph_file}",
                "files": [f"{spec.name}/{p.relative_to(target)}" for p in result.files],
                **result.details, "checker": "onnx.checker.check_model(full_check=True) passed",
                "export_seconds": result.export_seconds, "validate_seconds": result.validate_seconds,
                "validation": [run.record for run in result.runs]}


def _forward_all(module, results: list[GraphResult]) -> None:
    import torch

    with torch.no_grad():
        for result in results:
            for run in result.runs:
                watch = Stopwatch()
                run.torch = module(*[torch.from_numpy(a) for a in run.arrays]).float().numpy()
                run.torch_seconds = watch.seconds()


def _twin_check(run, twin: GraphResult | None, i: int, tol: float, found: list[str]):
    """The ONNX output against the MindIR graph's on the same inputs (both formats exported)."""
    from .validate import against

    if twin is None:
        return "MindIR not exported"
    other = twin.runs[i] if i < len(twin.runs) else None
    if other is None or other.output is None or other.case.inputs != run.case.inputs or twin.proxies.get(i):
        return "not compared: the MindIR graph was validated at another size (--validation proxy)"
    metrics = against(run.output.astype(np.float32), other.output.astype(np.float32), tol)
    if not metrics["ok"]:
        found.append(f"onnxruntime vs the MindIR graph rel_l2 {metrics['rel_l2']:.3g} > {tol:g}")
    return metrics


def _describe(specs) -> str:
    return "[" + ", ".join(f"{s.name}{list(s.shape)}:{s.dtype}" for s in specs) + "]"


def _opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def summary_line(spec, result: GraphResult) -> str:
    torch_max = max(run.record["vs_torch"]["rel_l2"] for run in result.runs)
    twins = [run.record["vs_mindir"]["rel_l2"] for run in result.runs if isinstance(run.record["vs_mindir"], dict)]
    twin_text = f", vs MindIR {max(twins):.2e}" if twins else ""
    return (f"{result.stem}.onnx: {spec.dtype}, {result.nbytes() / 2**20:.1f} MiB"
            f"{' (external data)' if result.split else ''}, exported in {result.export_seconds:.1f} s; "
            f"onnxruntime vs torch rel_l2 {torch_max:.2e}{twin_text}")


def require_onnx_stack() -> None:
    """The ONNX route's packages, imported before any work (a missing one is a usage error, exit 2)."""
    from pixart_core.errors import UsageError

    for name in ("torch", "onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError as exc:
            raise UsageError(f"--format onnx needs {name} ({exc}); pip install onnxruntime onnxscript") from None

