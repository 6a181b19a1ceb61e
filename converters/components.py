"""The three convertible components: their MindSpore network, config class, and the weight-file stems their
folders use (diffusers' and transformers' own, so mindone-style loaders find the files)."""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from mindspore_nets.config import PixArtConfig, T5Config, VAEConfig


@dataclass(frozen=True)
class Component:
    name: str
    network: str  # "module:Class", imported on use (MindSpore is slow to import)
    config_class: type
    weights_stem: str
    class_name: str  # written as _class_name / architectures in config.json

    def network_class(self):
        module, cls = self.network.split(":")
        return getattr(importlib.import_module(module), cls)


COMPONENTS = {
    "transformer": Component("transformer", "mindspore_nets.pixart:PixArtTransformer2D", PixArtConfig,
                             "diffusion_pytorch_model", "PixArtTransformer2DModel"),
    "text_encoder": Component("text_encoder", "mindspore_nets.t5:T5Encoder", T5Config, "model", "T5EncoderModel"),
    "vae": Component("vae", "mindspore_nets.vae:AutoencoderKL", VAEConfig, "diffusion_pytorch_model",
                     "AutoencoderKL"),
}
