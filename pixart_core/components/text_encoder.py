"""The T5 v1.1 encoder (PixArt-Sigma's text encoder, T5-v1.1-XXL at full size): everything the toolkit knows about it.

Source: transformers ``T5EncoderModel`` / ``T5ForConditionalGeneration`` folders (often sharded); MindSpore network
``mindspore_nets.t5.T5Encoder`` with transformers' names; ``encoder.embed_tokens.weight`` is ``shared.weight`` tied.
fp16 overflows in the feed-forward output projection ``wo``: it stays fp32 (as transformers keeps it), and Lite gets
``preferred_fp32``.
"""
from __future__ import annotations

from ..registry import Component, Layout, TensorSpec, View, register
from ._shared import TRANSFORMERS_WEIGHTS, Table, numpy_call

INPUTS = ("input_ids", "attention_mask")


def _is_t5(config: dict) -> bool:
    return config.get("model_type") == "t5" or any(a.startswith("T5") for a in config.get("architectures") or [])


def parameter_shapes(cfg) -> dict:
    """Name -> shape of every parameter of ``mindspore_nets.t5.T5Encoder(cfg)``, without MindSpore."""
    d, inner, t = cfg.d_model, cfg.num_heads * cfg.d_kv, Table()
    t["shared.weight"] = (cfg.vocab_size, d)
    for i in range(cfg.num_layers):
        b = f"encoder.block.{i}.layer"
        for proj in ("q", "k", "v"):
            t.linear(f"{b}.0.SelfAttention.{proj}", inner, d, bias=False)
        t.linear(f"{b}.0.SelfAttention.o", d, inner, bias=False)
        if i == 0:
            t[f"{b}.0.SelfAttention.relative_attention_bias.weight"] = (cfg.relative_attention_num_buckets, cfg.num_heads)
        t.norm(f"{b}.0.layer_norm", d, bias=False)
        for wi in (("wi_0", "wi_1") if cfg.gated else ("wi",)):
            t.linear(f"{b}.1.DenseReluDense.{wi}", cfg.d_ff, d, bias=False)
        t.linear(f"{b}.1.DenseReluDense.wo", d, cfg.d_ff, bias=False).norm(f"{b}.1.layer_norm", d, bias=False)
    return t.norm("encoder.final_layer_norm", d, bias=False)


def torch_model(config: dict):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(**{k: v for k, v in config.items() if not k.startswith("_")}))


def torch_forward(model, input_ids, attention_mask):
    return model(input_ids=input_ids.long(), attention_mask=attention_mask.long()).last_hidden_state


torch_call = numpy_call(torch_forward, INPUTS)


def cell(net):
    from mindspore import nn

    class TextEncoderGraph(nn.Cell):
        def __init__(self, net):
            super().__init__(auto_prefix=False)
            self.net = net

        def construct(self, input_ids, attention_mask):
            return self.net(input_ids, attention_mask)

    return TextEncoderGraph(net)


def interface(config: dict, batch: int, length: int, latent_hw, out_dtype: str):
    b = 2 * batch
    return ([TensorSpec("input_ids", (b, length), "int32"), TensorSpec("attention_mask", (b, length), "int32")],
            [TensorSpec("last_hidden_state", (b, length, config["d_model"]), out_dtype)])


COMPONENT = register(
    Component(
        name="text_encoder",
        network="mindspore_nets.t5:T5Encoder",
        config_class="mindspore_nets.config:T5Config",
        weights_stem="model",
        class_name="T5EncoderModel",
        layouts=(
            Layout("t5_mindspore", "converters.keymaps.t5:t5_mindspore", native=True),
            Layout("t5_transformers", "converters.keymaps.t5:t5_transformers",
                   sentinels=("encoder.block.0.layer.0.SelfAttention.q.weight",), config_match=_is_t5,
                   folder_weights=TRANSFORMERS_WEIGHTS, writes="diffusers", output_file=TRANSFORMERS_WEIGHTS[1]),
        ),
        views=("text_encoder",),
        parameter_shapes=parameter_shapes,
        torch_model=torch_model,
        tied_in_torch=("encoder.embed_tokens.weight",),
        # transformers keeps the feed-forward output projection in fp32 when loading T5 in fp16 (it overflows)
        keep_fp32=("encoder.block.{n}.layer.1.DenseReluDense.wo.weight",),
        needs_config="a bare text_encoder weights file needs --config CONFIG.json",
        writes_class_name=False,
    ),
    View("text_encoder", "text_encoder", INPUTS, "last_hidden_state", interface, cell, torch_call,
         taps=("shared", "encoder.block.{n}", "encoder.final_layer_norm"), spatial=False,
         lite_precision={"fp32": "preferred_fp32", "fp16": "preferred_fp32"}, torch_forward=torch_forward),
)
