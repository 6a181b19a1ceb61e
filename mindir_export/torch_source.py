"""The torch graph of a converted folder: the component's torch reference class (diffusers / transformers) holding
the folder's own weights, in the export dtype. The ONNX exporter traces it.

Why the torch class and not our MindSpore network is the ONNX route's source graph: MindSpore's own ONNX export
fails on our DiT (``mindspore.export(..., file_format="ONNX")``: ``RuntimeError: Cast value from type Int64Imm to
ValueTuple failed``, ``onnx_exporter.cc``), and torch's TorchScript exporter was killed at 24 GiB on the XL/2;
torch.onnx's dynamo exporter gives a correct graph of the torch class (onnxruntime within 2e-6 of torch on the
XL/2 at 1024x1024) in about 1.2 x the weights.

The weights are the converted folder's, not the original source's: our MindSpore names go to the torch names
through the torch layout's key map run backwards (``converters.backward``, the plan ``convert --to diffusers``
checks against the torch class), one tensor group at a time into a model whose parameters were created on the
meta device (no random init of billions of values, no second copy).
"""
from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path

from pixart_core import registry
from pixart_core.errors import DataError, SourceError
from pixart_core.manifests import read_manifest

TORCH_LAYOUT = "diffusers"  # the torch layout whose class is the reference (diffusers' / transformers')


@contextlib.contextmanager
def parameters_on_meta():
    """Modules built inside get their parameters on the meta device; buffers stay real (diffusers computes the
    transformer's sin-cos position table at init, and a graph may bake it in)."""
    import torch

    register = torch.nn.Module.register_parameter

    def on_meta(module, name, param):
        if param is not None and param.device.type != "meta":
            param = torch.nn.Parameter(param.to("meta"), requires_grad=False)
        register(module, name, param)

    torch.nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


def skeleton(folder: Path):
    """(torch class instance with meta parameters, its component) for a converted folder."""
    manifest = read_manifest(folder, "converted")
    component = registry.component(manifest["component"])
    with parameters_on_meta():
        model = component.torch_model(manifest["config"])  # SourceError for a variant the class cannot express
    return model.eval(), component


def back_plan(folder: Path, dtype: str):
    """The checked plan from the folder's MindSpore names to the torch class's names, in ``dtype`` (the
    component's ``keep_fp32`` parameters stay fp32 in fp16, as in conversion)."""
    from converters.backward import plan_back
    from converters.convert import Options
    from converters.detect import detect

    manifest = read_manifest(folder, "converted")
    job = detect(folder, manifest["component"])
    try:
        return plan_back(job, TORCH_LAYOUT, replace(Options(), dtype=dtype, to=TORCH_LAYOUT))
    except BaseException:
        job.source.close()
        raise


def _owner(model, name: str):
    module_path, _, leaf = name.rpartition(".")
    return (model.get_submodule(module_path) if module_path else model), leaf


def _place(model, name: str, value) -> None:
    import torch

    module, leaf = _owner(model, name)
    if leaf in module._parameters:
        module._parameters[leaf] = torch.nn.Parameter(value, requires_grad=False)
    elif leaf in module._buffers:
        module._buffers[leaf] = value
    else:
        raise KeyError(f"{name}: not a parameter or buffer of {type(model).__name__}")


class ModuleWriter:
    """A weights writer (``engine.stream_plan``'s interface) that puts each tensor into the model instead of a
    file. Tied copies are skipped and tied again at the end (``tie_weights``), so they share one tensor."""

    def __init__(self, model, tied=()):
        self.model, self.tied = model, set(tied)

    def write(self, name, array) -> str:
        from converters.sources import numpy_to_torch

        if name not in self.tied:
            _place(self.model, name, numpy_to_torch(array))
        return ""


def torch_module(folder, dtype: str = "fp32"):
    """The component's torch class with the converted folder's weights in ``dtype`` ("fp32" | "fp16"), eval mode."""
    from converters.engine import check_aliases, stream_plan

    folder = Path(folder)
    model, component = skeleton(folder)
    bp = back_plan(folder, dtype)
    try:
        stream_plan(bp.plan, bp.source, ModuleWriter(model, component.tied_in_torch))
    finally:
        bp.source.close()
    bad = bp.source.bad + check_aliases(bp.forward, bp.job.source)
    if bad:
        raise DataError(f"{folder}: {len(bad)} tensor(s) cannot be read: " + "; ".join(bad))
    if component.tied_in_torch:
        model.tie_weights()
    left = [n for n, p in [*model.named_parameters(), *model.named_buffers()] if p.is_meta]
    if left:
        raise SourceError(f"{folder}: the torch class has {len(left)} tensor(s) the folder does not fill: "
                          f"{', '.join(left[:5])}")
    return model


class LazyWeights:
    """The fp32 reference of a model too large to hold in fp32 (T5-XXL: 19 GB): the parameters stay on the meta
    device and each module's own parameters are read from the converted folder just before it runs and dropped
    just after, so the peak is one module's weights plus the activations. A parameter used outside its module's
    forward would be a meta tensor there, which torch refuses loudly: never a silent wrong number."""

    def __init__(self, folder):
        from converters.engine import PlanSource

        folder = Path(folder)
        self.model, _ = skeleton(folder)
        self.bp = back_plan(folder, "fp32")
        self.source = PlanSource(self.bp.plan, self.bp.source)
        aliases = dict(self.bp.plan.aliases) if self.bp.plan.aliases else {}
        self.names = {t.name for t in self.bp.plan.targets} | set(aliases)
        self.handles = []
        for path, module in self.model.named_modules():
            own = [n for n, p in module.named_parameters(recurse=False)]
            if own:
                self.handles.append(module.register_forward_pre_hook(self._loader(path, own)))
                self.handles.append(module.register_forward_hook(self._dropper(own)))

    def _name(self, path: str, leaf: str) -> str:
        name = f"{path}.{leaf}" if path else leaf
        if name not in self.names:
            raise SourceError(f"{name}: not in the converted folder's plan")
        return name

    def _loader(self, path, own):
        def load(module, args):
            from converters.sources import numpy_to_torch

            for leaf in own:
                # a fused group's siblings are produced together; a tensor is read again each time it is needed
                array = self.source.read(self._name(path, leaf))
                _place(module, leaf, numpy_to_torch(array))
        return load

    def _dropper(self, own):
        def drop(module, args, output):
            for leaf in own:
                _place(module, leaf, module._parameters[leaf].to("meta"))
        return drop

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.source.close()
