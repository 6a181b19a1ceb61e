"""The torch reference of a converted folder, built from the *source* weights through the same key map.

Our target names are the torch reference classes' names (diffusers ``PixArtTransformer2DModel`` and
``AutoencoderKL``, transformers ``T5EncoderModel``), so the forward spec applied to the source tensors is a state
dict those classes load strictly. An original ``.pth`` therefore loads into the diffusers class through exactly
the map that produced the MindSpore checkpoint; a key-map mistake cannot hide on both sides at once because the
diffusers class computes the function independently. Each component's torch class and forward live in the
registry (``pixart_core.components``).
"""
from __future__ import annotations

from pathlib import Path

from pixart_core import registry
from pixart_core.errors import SourceError
from pixart_core.manifests import read_manifest

from .detect import detect
from .engine import run_in_memory
from .keymaps import spec_for


class ReferenceUnavailable(SourceError):
    """The torch reference cannot be built (source gone, or a variant the torch classes cannot express)."""


def torch_model(component: str, config: dict):
    """An fp32 torch reference module with random weights, built from a (converted) config dict."""
    try:
        return registry.component(component).torch_model(config)
    except SourceError as exc:
        raise ReferenceUnavailable(str(exc)) from None


def load_reference(folder, source=None):
    """(torch module in eval mode, fp32) for a converted component folder, from ``source`` or the source path its
    manifest records. Raises ReferenceUnavailable when that cannot be done."""
    manifest = read_manifest(folder, "converted")
    component = registry.component(manifest["component"])
    src = Path(source) if source is not None else Path(manifest["source"]["path"])
    if not src.exists():
        raise ReferenceUnavailable(f"{src}: the source of {folder} is not at hand")
    job = detect(src, component.name)
    spec = spec_for(job.layout, keep_y_embedding=False)
    tensors = {k: job.source.read(k) for k in job.source.infos}
    job.source.close()
    state = run_in_memory(spec, tensors, dtype="fp32")
    del tensors
    from .sources import numpy_to_torch

    state = {k: numpy_to_torch(v) for k, v in state.items()}
    model = torch_model(component.name, manifest["config"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = set(missing) - set(component.tied_in_torch)
    if missing or unexpected:
        raise ReferenceUnavailable(f"{src}: torch reference does not load: missing {sorted(missing)[:5]}, "
                                   f"unexpected {sorted(unexpected)[:5]}")
    if component.tied_in_torch:
        model.tie_weights()
    return model.float().eval()


def torch_forward(view: str, model, arrays: dict):
    """One forward of a torch reference on numpy inputs named as the view's graph inputs -> fp32 numpy output.
    Shared by the parity harness and export validation."""
    return registry.view(view).torch_call(model, arrays)
