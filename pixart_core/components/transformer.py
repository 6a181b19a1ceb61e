"""The PixArt-Sigma diffusion transformer (DiT): everything the toolkit knows about it.

Sources: the original ``PixArtMS`` ``.pth`` (``{"state_dict": ...}``, fused ``qkv`` / ``kv_linear``), diffusers'
``PixArtTransformer2DModel`` folders, mindone's training checkpoints and our own MindSpore folders; written back
(``convert --to``) as diffusers folders and original ``.pth`` files. MindSpore network
``mindspore_nets.pixart.PixArtTransformer2D`` with diffusers' parameter names; torch reference diffusers' class.
Exported per latent size (aspect-ratio bucket).
"""
from __future__ import annotations

from ..registry import Component, Layout, TensorSpec, View, register
from ._shared import DIFFUSERS_WEIGHTS, Table, class_name_is, init_kwargs, numpy_call

INPUTS = ("hidden_states", "timestep", "encoder_hidden_states", "encoder_attention_mask")
ORIGINAL_SENTINELS = ("x_embedder.proj.weight", "t_block.1.weight")


def parameter_shapes(cfg) -> dict:
    """Name -> shape of every parameter of ``mindspore_nets.pixart.PixArtTransformer2D(cfg)``, without MindSpore."""
    d, t = cfg.hidden_size, Table()
    t["scale_shift_table"] = (2, d)
    t.conv("pos_embed.proj", d, cfg.in_channels, cfg.patch_size)
    t.linear("adaln_single.emb.timestep_embedder.linear_1", d, 256).linear("adaln_single.emb.timestep_embedder.linear_2", d, d)
    t.linear("adaln_single.linear", 6 * d, d)
    t.linear("caption_projection.linear_1", d, cfg.caption_channels).linear("caption_projection.linear_2", d, d)
    for i in range(cfg.num_layers):
        b = f"transformer_blocks.{i}"
        t[f"{b}.scale_shift_table"] = (6, d)
        for attn in ("attn1", "attn2"):
            for proj in ("to_q", "to_k", "to_v", "to_out.0"):
                t.linear(f"{b}.{attn}.{proj}", d, d)
            if attn == "attn1" and cfg.qk_norm:
                t.norm(f"{b}.attn1.q_norm", d).norm(f"{b}.attn1.k_norm", d)
            if attn == "attn1" and cfg.sr_ratio(i) > 1:
                t.conv(f"{b}.attn1.sr", d, d, cfg.sr_ratio(i), groups=d).norm(f"{b}.attn1.sr_norm", d)
        t.linear(f"{b}.ff.net.0.proj", 4 * d, d).linear(f"{b}.ff.net.2", d, 4 * d)
    return t.linear("proj_out", cfg.patch_size ** 2 * cfg.output_channels, d)


def torch_model(config: dict):
    from diffusers import PixArtTransformer2DModel

    from pixart_core.errors import SourceError

    if config.get("kv_compress_layers") or config.get("qk_norm"):
        raise SourceError("diffusers' PixArtTransformer2DModel has no KV compression or full-width qk norm; no "
                          "torch reference for this variant")
    return PixArtTransformer2DModel.from_config(init_kwargs(PixArtTransformer2DModel, config))


def torch_buffers(model) -> dict:
    """diffusers' sin-cos position table, a buffer computed at construction: recomputed for a model built on the meta
    device (a square grid: ``PixArtTransformer2DModel`` takes one ``sample_size``)."""
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    embed = model.pos_embed
    table = get_2d_sincos_pos_embed(embed.proj.out_channels, embed.height, base_size=embed.base_size,
                                    interpolation_scale=embed.interpolation_scale, output_type="pt")
    return {"pos_embed.pos_embed": table.float().unsqueeze(0)}


def torch_forward(model, hidden_states, timestep, encoder_hidden_states, encoder_attention_mask):
    return model(hidden_states, encoder_hidden_states=encoder_hidden_states, timestep=timestep,
                 encoder_attention_mask=encoder_attention_mask, return_dict=False)[0]


torch_call = numpy_call(torch_forward, INPUTS)


def torch_dynamic_hw(model, max_hw):
    """One ONNX graph for every latent size up to ``max_hw``: diffusers' PatchEmbed uses its stored sin-cos table
    whenever the traced grid is the sample size, which torch.export would bake in as a constant; height = width =
    -1 makes it recompute the table from the (symbolic) grid, as it does for any other size."""
    import torch

    model.pos_embed.height = model.pos_embed.width = -1
    p = model.config.patch_size
    h = torch.export.Dim("h", min=2, max=max(2, max_hw[0] // p))
    w = torch.export.Dim("w", min=2, max=max(2, max_hw[1] // p))
    return ({2: p * h, 3: p * w}, None, None, None)


def cell(net):
    from mindspore import nn

    class TransformerGraph(nn.Cell):
        def __init__(self, net):
            super().__init__(auto_prefix=False)
            self.net = net

        def construct(self, hidden_states, timestep, encoder_hidden_states, encoder_attention_mask):
            return self.net(hidden_states, timestep, encoder_hidden_states, encoder_attention_mask)

    return TransformerGraph(net)


def interface(config: dict, batch: int, length: int, latent_hw, out_dtype: str):
    b, (h, w) = 2 * batch, latent_hw
    cin, cout = config["in_channels"], config.get("out_channels") or config["in_channels"]
    return ([TensorSpec("hidden_states", (b, cin, h, w), "float32"),
             TensorSpec("timestep", (b,), "float32"),
             TensorSpec("encoder_hidden_states", (b, length, config["caption_channels"]), "float32"),
             TensorSpec("encoder_attention_mask", (b, length), "float32")],
            [TensorSpec("sample", (b, cout, h, w), out_dtype)])


COMPONENT = register(
    Component(
        name="transformer",
        network="mindspore_nets.pixart:PixArtTransformer2D",
        config_class="mindspore_nets.config:PixArtConfig",
        weights_stem="diffusion_pytorch_model",
        class_name="PixArtTransformer2DModel",
        layouts=(
            Layout("pixart_mindspore", "converters.keymaps.pixart:pixart_mindspore", native=True),
            Layout("pixart_original", "converters.keymaps.pixart:pixart_original",
                   sentinels=ORIGINAL_SENTINELS, options=("keep_y_embedding",),
                   kinds=("torch", "safetensors", "memory"), shapes_from_weights=True,
                   writes="original", output_file="PixArt-Sigma.pth",
                   complete="converters.keymaps.pixart:complete_original"),
            # the original names as mindone's examples/pixart_sigma training saves them (MindSpore .ckpt), with
            # optimizer / EMA / frozen VAE and T5 entries dropped by named rules
            Layout("pixart_mindone_train", "converters.keymaps.mindone:pixart_mindone_train",
                   sentinels=ORIGINAL_SENTINELS, options=("keep_y_embedding", "ema"), kinds=("mindspore",),
                   shapes_from_weights=True, ema_prefix="ema."),
            Layout("pixart_diffusers", "converters.keymaps.pixart:pixart_diffusers",
                   sentinels=("pos_embed.proj.weight", "adaln_single.linear.weight"),
                   config_match=class_name_is("PixArtTransformer2DModel", "Transformer2DModel"),
                   folder_weights=DIFFUSERS_WEIGHTS, writes="diffusers", output_file=DIFFUSERS_WEIGHTS[1]),
        ),
        views=("transformer",),
        parameter_shapes=parameter_shapes,
        torch_model=torch_model,
        torch_buffers=torch_buffers,
        # the original's caption-dropout embedding (T5 of "" at 300 tokens): training needs it, inference does not
        extras=("caption_projection.y_embedding",),
        config_from_source="converters.configs:pixart_config",
    ),
    View("transformer", "transformer", INPUTS, "sample", interface, cell, torch_call,
         taps=("pos_embed",                               # patch embedding + position embedding
               "adaln_single.emb.timestep_embedder",      # timestep embedding
               "adaln_single.linear",                     # adaLN-single modulation (6 x hidden)
               "caption_projection",
               "transformer_blocks.{n}.attn1",
               "transformer_blocks.{n}.attn2",
               "transformer_blocks.{n}.ff",
               "transformer_blocks.{n}",
               "proj_out"),                               # final layer (after the final modulation)
         spatial=True, torch_forward=torch_forward, torch_dynamic_hw=torch_dynamic_hw),
)
