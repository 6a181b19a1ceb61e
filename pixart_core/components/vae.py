"""The SDXL VAE (diffusers ``AutoencoderKL``): everything the toolkit knows about it.

Source: diffusers folders, both attention naming generations; MindSpore network ``mindspore_nets.vae.AutoencoderKL``
with diffusers' names. Two views: the encoder (image -> moments, ``latent_dist.parameters`` after ``quant_conv``)
and the decoder (latents / scaling_factor -> image); each is exported per latent size, in fp16 only when its fp16
outputs stay finite (the SDXL VAE in plain fp16 can produce NaN).
"""
from __future__ import annotations

from ..registry import Component, Layout, TensorSpec, View, register
from ._shared import DIFFUSERS_WEIGHTS, Table, class_name_is, init_kwargs, numpy_call


def scale_factor(config: dict | None) -> int:
    """diffusers' ``2 ** (len(block_out_channels) - 1)`` (8 for the SDXL VAE; 8 when no config is at hand)."""
    if not config:
        return 8
    return 2 ** (len(config["block_out_channels"]) - 1)


def _resnet(t: Table, name: str, inp: int, out: int) -> None:
    t.norm(f"{name}.norm1", inp).conv(f"{name}.conv1", out, inp, 3).norm(f"{name}.norm2", out)
    t.conv(f"{name}.conv2", out, out, 3)
    if inp != out:
        t.conv(f"{name}.conv_shortcut", out, inp, 1)


def _mid_block(t: Table, name: str, c: int, attention: bool) -> None:
    _resnet(t, f"{name}.resnets.0", c, c)
    _resnet(t, f"{name}.resnets.1", c, c)
    if attention:
        t.norm(f"{name}.attentions.0.group_norm", c)
        for proj in ("to_q", "to_k", "to_v", "to_out.0"):
            t.linear(f"{name}.attentions.0.{proj}", c, c)


def parameter_shapes(cfg) -> dict:
    """Name -> shape of every parameter of ``mindspore_nets.vae.AutoencoderKL(cfg)``, without MindSpore."""
    chans, lc, t = list(cfg.block_out_channels), cfg.latent_channels, Table()
    t.conv("encoder.conv_in", chans[0], cfg.in_channels, 3)
    out = chans[0]
    for i in range(len(chans)):
        inp, out = out, chans[i]
        for j in range(cfg.layers_per_block):
            _resnet(t, f"encoder.down_blocks.{i}.resnets.{j}", inp if j == 0 else out, out)
        if i != len(chans) - 1:
            t.conv(f"encoder.down_blocks.{i}.downsamplers.0.conv", out, out, 3)
    _mid_block(t, "encoder.mid_block", chans[-1], cfg.mid_block_add_attention)
    t.norm("encoder.conv_norm_out", chans[-1]).conv("encoder.conv_out", 2 * lc, chans[-1], 3)
    t.conv("decoder.conv_in", chans[-1], lc, 3)
    _mid_block(t, "decoder.mid_block", chans[-1], cfg.mid_block_add_attention)
    rev = list(reversed(chans))
    out = rev[0]
    for i in range(len(rev)):
        inp, out = out, rev[i]
        for j in range(cfg.layers_per_block + 1):
            _resnet(t, f"decoder.up_blocks.{i}.resnets.{j}", inp if j == 0 else out, out)
        if i != len(rev) - 1:
            t.conv(f"decoder.up_blocks.{i}.upsamplers.0.conv", out, out, 3)
    t.norm("decoder.conv_norm_out", chans[0]).conv("decoder.conv_out", cfg.out_channels, chans[0], 3)
    if cfg.use_quant_conv:
        t.conv("quant_conv", 2 * lc, 2 * lc, 1)
    if cfg.use_post_quant_conv:
        t.conv("post_quant_conv", lc, lc, 1)
    return t


def torch_model(config: dict):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_config(init_kwargs(AutoencoderKL, config))


def encode_forward(model, image):
    return model.encode(image).latent_dist.parameters


def decode_forward(model, latent):
    return model.decode(latent).sample


encode_torch = numpy_call(encode_forward, ("image",))
decode_torch = numpy_call(decode_forward, ("latent",))


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
        parameter_shapes=parameter_shapes,
        torch_model=torch_model,
        needs_config="a bare vae weights file needs --config CONFIG.json",
    ),
    View("vae_decoder", "vae", ("latent",), "sample", decoder_interface, decoder_cell, decode_torch,
         taps=("post_quant_conv", "decoder.conv_in", "decoder.mid_block", "decoder.up_blocks.{n}",
               "decoder.conv_out"),
         spatial=True, fp16_needs_check=True, torch_forward=decode_forward,
         parameters=("post_quant_conv.", "decoder.")),
    View("vae_encoder", "vae", ("image",), "moments", encoder_interface, encoder_cell, encode_torch,
         taps=("encoder.conv_in", "encoder.down_blocks.{n}", "encoder.mid_block", "encoder.conv_out",
               "quant_conv"),
         spatial=True, fp16_needs_check=True, torch_forward=encode_forward,
         parameters=("encoder.", "quant_conv.")),
)
