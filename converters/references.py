"""The torch reference of a converted folder, built from the *source* weights through the same key map.

Our target names are the torch reference classes' names (diffusers ``PixArtTransformer2DModel`` and
``AutoencoderKL``, transformers ``T5EncoderModel``), so the forward spec applied to the source tensors is a state
dict those classes load strictly. An original ``.pth`` therefore loads into the diffusers class through exactly
the map that produced the MindSpore checkpoint; a key-map mistake cannot hide on both sides at once because the
diffusers class computes the function independently.
"""
from __future__ import annotations

import json
from pathlib import Path

from .detect import detect
from .engine import run_in_memory
from .errors import SourceError
from .keymaps import spec_for
from .manifest import MANIFEST

# torch-side names our network has no parameter for: the tied embedding copy that T5EncoderModel also exposes
TIED_IN_TORCH = {"text_encoder": {"encoder.embed_tokens.weight"}}


class ReferenceUnavailable(SourceError):
    """The torch reference cannot be built (source gone, or a variant the torch classes cannot express)."""


def read_manifest(folder) -> dict:
    path = Path(folder) / MANIFEST
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SourceError(f"{path}: unreadable manifest ({exc})") from exc


def torch_model(component: str, config: dict):
    """An fp32 torch reference module with random weights, built from a (converted) config dict."""
    if component == "transformer":
        from diffusers import PixArtTransformer2DModel

        if config.get("kv_compress_layers") or config.get("qk_norm"):
            raise ReferenceUnavailable("diffusers' PixArtTransformer2DModel has no KV compression or full-width "
                                       "qk norm; no torch reference for this variant")
        return PixArtTransformer2DModel.from_config(_known(PixArtTransformer2DModel, config))
    if component == "vae":
        from diffusers import AutoencoderKL

        return AutoencoderKL.from_config(_known(AutoencoderKL, config))
    if component == "text_encoder":
        from transformers import T5Config, T5EncoderModel

        return T5EncoderModel(T5Config(**{k: v for k, v in config.items() if not k.startswith("_")}))
    raise ValueError(component)


def _known(cls, config: dict) -> dict:
    import inspect

    params = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in config.items() if k in params}


def load_reference(folder, source=None):
    """(torch module in eval mode, fp32) for a converted component folder, from ``source`` or the source path its
    manifest records. Raises ReferenceUnavailable when that cannot be done."""
    manifest = read_manifest(folder)
    component = manifest["component"]
    src = Path(source) if source is not None else Path(manifest["source"]["path"])
    if not src.exists():
        raise ReferenceUnavailable(f"{src}: the source of {folder} is not at hand")
    job = detect(src, component)
    spec = spec_for(job.layout, keep_y_embedding=False)
    tensors = {k: job.source.read(k) for k in job.source.infos}
    job.source.close()
    state = run_in_memory(spec, tensors, dtype="fp32")
    del tensors
    model = torch_model(component, manifest["config"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = set(missing) - TIED_IN_TORCH.get(component, set())
    if missing or unexpected:
        raise ReferenceUnavailable(f"{src}: torch reference does not load: missing {sorted(missing)[:5]}, "
                                   f"unexpected {sorted(unexpected)[:5]}")
    if component == "text_encoder":
        model.tie_weights()
    return model.float().eval()


# the inputs of each component's forward, in the order of the exported graphs' signatures
FORWARD_INPUTS = {"transformer": ("hidden_states", "timestep", "encoder_hidden_states", "encoder_attention_mask"),
                  "text_encoder": ("input_ids", "attention_mask"), "vae_encoder": ("image",),
                  "vae_decoder": ("latent",)}


def torch_forward(component: str, model, a: dict):
    """One forward of a torch reference on numpy inputs named as in ``FORWARD_INPUTS`` -> fp32 numpy output.
    Shared by the parity harness and export validation."""
    import torch

    t = {k: None if v is None else torch.from_numpy(v) for k, v in a.items()}
    with torch.no_grad():
        if component == "transformer":
            return model(t["hidden_states"], encoder_hidden_states=t["encoder_hidden_states"], timestep=t["timestep"],
                         encoder_attention_mask=t["encoder_attention_mask"]).sample.numpy()
        if component == "text_encoder":
            return model(input_ids=t["input_ids"].long(),
                         attention_mask=t["attention_mask"].long()).last_hidden_state.float().numpy()
        if component == "vae_encoder":
            return model.encode(t["image"]).latent_dist.parameters.numpy()
        return model.decode(t["latent"]).sample.numpy()
