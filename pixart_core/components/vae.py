"""The SDXL VAE (diffusers ``AutoencoderKL``): everything the toolkit knows about it.

Source: diffusers folders, both attention naming generations; MindSpore network ``mindspore_nets.vae.AutoencoderKL``
with diffusers' names. Two views: the encoder (image -> moments, ``latent_dist.parameters`` after ``quant_conv``)
and the decoder (latents / scaling_factor -> image); each is exported per latent size, in fp16 only when its fp16
outputs stay finite (the SDXL VAE in plain fp16 can produce NaN).
"""
from __future__ import annotations

from ..registry import Component, Layout, TensorSpec, View, register
from ._shared import DIFFUSERS_WEIGHTS, class_name_is, init_kwargs, to_torch


def scale_factor(config: dict | None) -> int:
    """diffusers' ``2 ** (len(block_out_channels) - 1)`` (8 for the SDXL VAE; 8 when no config is at hand)."""
    if not config:
        return 8
    return 2 ** (len(config["block_out_channels"]) - 1)


def torch_model(config: dict):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_config(init_kwargs(AutoencoderKL, config))


def encode_torch(model, arrays: dict):
    import torch

    with torch.no_grad():
        return model.encode(to_torch(arrays, ("image",))["image"]).latent_dist.parameters.numpy()


def decode_torch(model, arrays: dict):
    import torch

    with torch.no_grad():
        return model.decode(to_torch(arrays, ("latent",))["latent"]).sample.numpy()


def encoder_cell(vae):
    from mindspore import nn

    class VAEEncoderGraph(nn.Cell):
        def __init__(self, vae):
            super().__init__(auto_prefix=False)
            self.cell = vae.encoder_cell()

        def construct(self, image):
            return self.cell(image)

    return VAEEncoderGraph(vae)


def decoder_cell(vae):
    from mindspore import nn

    class VAEDecoderGraph(nn.Cell):
        def __init__(self, vae):
            super().__init__(auto_prefix=False)
            self.cell = vae.decoder_cell()

        def construct(self, latent):
            return self.cell(latent)

    return VAEDecoderGraph(vae)


def encoder_interface(config: dict, batch: int, length: int, latent_hw, out_dtype: str):
    (h, w), s, lc = latent_hw, scale_factor(config), config["latent_channels"]
    return ([TensorSpec("image", (batch, config["in_channels"], h * s, w * s), "float32")],
            [TensorSpec("moments", (batch, 2 * lc, h, w), out_dtype)])


def decoder_interface(config: dict, batch: int, length: int, latent_hw, out_dtype: str):
    (h, w), s = latent_hw, scale_factor(config)
    return ([TensorSpec("latent", (batch, config["latent_channels"], h, w), "float32")],
            [TensorSpec("sample", (batch, config["out_channels"], h * s, w * s), out_dtype)])


COMPONENT = register(
    Component(
        name="vae",
        network="mindspore_nets.vae:AutoencoderKL",
        config_class="mindspore_nets.config:VAEConfig",
        weights_stem="diffusion_pytorch_model",
        class_name="AutoencoderKL",
        layouts=(
            Layout("vae_mindspore", "converters.keymaps.vae:vae_mindspore", native=True),
            Layout("vae_diffusers", "converters.keymaps.vae:vae_diffusers",
                   sentinels=("encoder.conv_in.weight", "decoder.conv_in.weight"),
                   config_match=class_name_is("AutoencoderKL"), folder_weights=DIFFUSERS_WEIGHTS,
                   writes="diffusers", output_file=DIFFUSERS_WEIGHTS[1]),
        ),
        views=("vae_decoder", "vae_encoder"),
        torch_model=torch_model,
        needs_config="a bare vae weights file needs --config CONFIG.json",
    ),
    View("vae_decoder", "vae", ("latent",), "sample", decoder_interface, decoder_cell, decode_torch,
         taps=("post_quant_conv", "decoder.conv_in", "decoder.mid_block", "decoder.up_blocks.{n}",
               "decoder.conv_out"),
         spatial=True, fp16_needs_check=True),
    View("vae_encoder", "vae", ("image",), "moments", encoder_interface, encoder_cell, encode_torch,
         taps=("encoder.conv_in", "encoder.down_blocks.{n}", "encoder.mid_block", "encoder.conv_out",
               "quant_conv"),
         spatial=True, fp16_needs_check=True),
)
