"""Small pieces the component modules share."""
from __future__ import annotations

import inspect

# weights files of a diffusers / transformers model folder, in order of preference
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.safetensors",
                     "diffusion_pytorch_model.bin.index.json", "diffusion_pytorch_model.bin")
TRANSFORMERS_WEIGHTS = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
                        "pytorch_model.bin")


def class_name_is(*names):
    """A config matcher: diffusers' ``_class_name`` is one of ``names``."""
    return lambda config: config.get("_class_name", "") in names


def init_kwargs(cls, config: dict) -> dict:
    """The config keys ``cls.__init__`` accepts (diffusers' from_config warns about the rest)."""
    params = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in config.items() if k in params}


def to_torch(arrays: dict, names) -> dict:
    import torch

    return {k: None if arrays.get(k) is None else torch.from_numpy(arrays[k]) for k in names}


def numpy_call(forward, names):
    """A view's ``torch_call`` from its ``torch_forward``: numpy inputs by name in, fp32 numpy out, no autograd."""

    def call(model, arrays: dict):
        import torch

        tensors = to_torch(arrays, names)
        with torch.no_grad():
            return forward(model, *[tensors[n] for n in names]).float().numpy()

    return call


class Table(dict):
    """A parameter table (name -> shape) built the way the networks declare their parameters."""

    def linear(self, name: str, out: int, inp: int, bias: bool = True) -> "Table":
        self[f"{name}.weight"] = (out, inp)
        if bias:
            self[f"{name}.bias"] = (out,)
        return self

    def conv(self, name: str, out: int, inp: int, kernel: int, groups: int = 1) -> "Table":
        self[f"{name}.weight"] = (out, inp // groups, kernel, kernel)
        self[f"{name}.bias"] = (out,)
        return self

    def norm(self, name: str, dim: int, bias: bool = True) -> "Table":
        self[f"{name}.weight"] = (dim,)
        if bias:
            self[f"{name}.bias"] = (dim,)
        return self
